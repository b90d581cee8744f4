"""Registry of visual-token pruning methods: one module (or function) per method, one line here."""

from llava.model.pruning import selectors

# name -> selector(features [N, P, C], cls_attn [N, P], budget, seed) -> kept indices [N, k], sorted per row
METHODS = {
    "fastervlm": selectors.fastervlm,
    "random": selectors.random,
    "uniform": selectors.uniform,
}

from llava.model.pruning.config import ANYRES_MODES, PruningConfig  # noqa: E402

__all__ = ["METHODS", "PruningConfig", "ANYRES_MODES", "get_selector"]


def get_selector(name: str):
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; registered methods: {sorted(METHODS)}")
    return METHODS[name]
