"""The interface of pruning methods that act inside the language model (FastV), beside the pre-projector selectors.

Such a method is registered in `METHODS` as a subclass of `LLMPruner`. The pre-projector stage then keeps every
visual token (`keep_all`), and the model installs one instance of the class on its own decoder layers (forward
hooks on that instance's modules; transformers' classes are never patched). Before each multimodal prefill the
model `arm`s it with where the visual tokens sit and how many to keep; decode steps reuse what the prefill decided.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class PruneRequest:
    """What an armed in-LLM method is asked to do in the next prefill.

    visual_mask: (B, L) bool, True at the visual tokens of the (left-padded) prompt;
    keep:        visual tokens to keep per sample (already capped at the sample's visual-token count).
    """

    visual_mask: torch.Tensor
    keep: list[int]


class LLMPruner:
    """Base class of in-LLM pruning methods; one instance per model, built by `set_pruning`.

    llm: the decoder stack (transformers' `LlamaModel`: `.layers`, `.config`); pruning: the validated config.
    """

    def __init__(self, llm: nn.Module, pruning) -> None:
        self.llm = llm
        self.pruning = pruning
        self._handles: list = []  # anything with .remove(): hook handles, an attention_rows.QKCapture
        self._armed: PruneRequest | None = None

    # An in-LLM method ranks inside the language model, never by the tower's [CLS] (see registry.needs_cls).
    needs_cls = False

    def arm(self, visual_mask: torch.Tensor, budgets: list[int]) -> list[int]:
        """Prune the next prefill: keep `budgets[b]` of sample b's visual tokens (visual_mask (B, L) bool).
        Returns the visual tokens each sample keeps, which is what the model reports as `v_token_num`."""
        visual_mask = visual_mask.bool()
        available = visual_mask.sum(dim=1).tolist()
        keep = [min(int(b), n) for b, n in zip(budgets, available)]
        self._armed = PruneRequest(visual_mask, keep)
        return keep

    def disarm(self) -> None:
        """The next prefill is not pruned (a text-only prompt)."""
        self._armed = None

    def remove(self) -> None:
        """Take the hooks off the model (when the model switches to another method)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._armed = None


def keep_all(features: torch.Tensor, cls_attn: torch.Tensor, budget: int, seed: int = 0) -> torch.Tensor:
    """The pre-projector stage of an in-LLM method: every patch of every crop, (N, P) (features (N, P, C))."""
    n, p = cls_attn.shape if features is None else features.shape[:2]
    if budget != p:
        raise ValueError(f"keep_all keeps all {p} patches of a crop, but a budget of {budget} was asked for")
    return torch.arange(p, device=cls_attn.device).unsqueeze(0).expand(n, -1)
