"""Registry of visual-token pruning methods: one module (or function) per method, one line in `METHODS`.

A selector runs before the projector: selector(features (N, P, C), cls_attn (N, P), budget, seed) returns the kept
indices (N, k), ascending per row, or a `Selection` when it also rewrites the kept features (token merging).
An in-LLM method is registered as its `LLMPruner` subclass: the projector then gets every token (`keep_all`) and the
class is installed on the model's decoder layers (see `llm.py`).

[CLS]: a method reads the [CLS] attention (or the [CLS] token) unless it declares `needs_cls = False` next to its
definition (the function attribute, or the `LLMPruner` class attribute). The default is True so that a new method
is refused on a tower without [CLS] (`has_cls = False`) until it says it can run there, never fed an empty score.
"""

from __future__ import annotations

from llava.model.pruning.divprune import divprune
from llava.model.pruning.fastv import FastV
from llava.model.pruning.llm import LLMPruner, keep_all
from llava.model.pruning.received import attention_received
from llava.model.pruning.selectors import fastervlm, random, uniform
from llava.model.pruning.visionzip import visionzip
from llava.model.pruning.vispruner import vispruner

METHODS = {
    "fastervlm": fastervlm,  # [CLS] attention top-k (arXiv 2412.01818)
    "random": random,
    "uniform": uniform,
    "visionzip": visionzip,  # dominant + contextual tokens (arXiv 2412.04467)
    "vispruner": vispruner,  # important + diverse tokens (VisPruner, ICCV 2025)
    "fastv": FastV,  # inside the LLM after layer K (arXiv 2403.06764)
    "divprune": divprune,  # greedy max-min cosine diversity of the features, no attention (DivPrune, CVPR 2025)
    "attention_received": attention_received,  # mean attention each patch receives at a tower layer (issue #16)
}


def check_method(name: str) -> None:
    """ValueError naming the registered methods when `name` is not one of them."""
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; registered methods: {sorted(METHODS)}")


def needs_cls(name: str) -> bool:
    """Whether method `name` reads the tower's [CLS] attention or token (its `needs_cls` declaration, default True)."""
    check_method(name)
    return bool(getattr(METHODS[name], "needs_cls", True))


def methods_without_cls() -> list[str]:
    """The registered methods that run on a tower without [CLS], in registry order."""
    return [name for name in METHODS if not needs_cls(name)]


def get_llm_pruner(name: str) -> type[LLMPruner] | None:
    """The `LLMPruner` class of an in-LLM method, None for a pre-projector selector."""
    check_method(name)
    entry = METHODS[name]
    return entry if isinstance(entry, type) and issubclass(entry, LLMPruner) else None


def get_selector(name: str):
    """The pre-projector selector of a method (`keep_all` for in-LLM methods)."""
    return keep_all if get_llm_pruner(name) is not None else METHODS[name]


def method_parameters(pruning) -> dict[str, int]:
    """The settings besides the budget that change what `pruning.method` keeps: FastV's K (`llm_layer`) for in-LLM
    methods, the seed for selectors that draw at random (`uses_seed`). Answers files record exactly these.
    `pruning`: a `PruningConfig` or a `PruningRequest` (both have method, llm_layer and seed)."""
    params = {}
    if get_llm_pruner(pruning.method) is not None:
        params["llm_layer"] = pruning.llm_layer
    if getattr(get_selector(pruning.method), "uses_seed", False):
        params["seed"] = pruning.seed
    return params
