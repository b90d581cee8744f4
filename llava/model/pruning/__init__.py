"""Registry of visual-token pruning methods: one module (or function) per method, one line here.

A selector runs before the projector: selector(features (N, P, C), cls_attn (N, P), budget, seed) returns the kept
indices (N, k), ascending per row, or a `Selection` when it also rewrites the kept features (token merging).
"""

from llava.model.pruning import selectors
from llava.model.pruning.selection import Selection, as_selection  # noqa: F401

METHODS = {
    "fastervlm": selectors.fastervlm,
    "random": selectors.random,
    "uniform": selectors.uniform,
}

from llava.model.pruning.config import ANYRES_MODES, PruningConfig  # noqa: E402

__all__ = ["METHODS", "PruningConfig", "ANYRES_MODES", "Selection", "as_selection", "get_selector"]


def get_selector(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; registered methods: {sorted(METHODS)}")
    return METHODS[name]
