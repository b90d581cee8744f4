"""Visual-token pruning: the method registry (`registry.py`), the settings (`config.py`: `PruningRequest` ->
`PruningConfig`, and the CLI flags), the selectors (`selectors.py`, `visionzip.py`, `vispruner.py`) and the in-LLM
methods (`llm.py`, `fastv.py`). Adding a method: one module (or function) and one line in `registry.METHODS`."""

from llava.model.pruning.config import ANYRES_MODES, PruningConfig, PruningRequest, resolve_pruning
from llava.model.pruning.llm import LLMPruner
from llava.model.pruning.registry import METHODS, get_llm_pruner, get_selector, method_parameters
from llava.model.pruning.selection import Selection, as_selection

__all__ = ["METHODS", "PruningConfig", "PruningRequest", "resolve_pruning", "ANYRES_MODES", "Selection",
           "as_selection", "get_selector", "get_llm_pruner", "LLMPruner", "method_parameters"]
