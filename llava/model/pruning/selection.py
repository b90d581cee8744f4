"""What a selector hands to the projector."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Selection:
    """The visual tokens of each crop, in the order [prefix, kept patches, suffix].

    keep:     (N, m) kept patch indices, ascending per crop (their raster order is the token order); LLaVA-1.6's merge
              places these tokens on the crop grid.
    features: optional (N, m, C) features to project instead of the tower's features at `keep`; None means "gather at
              keep".
    prefix:   optional (N, a, C) tokens without a patch position that come before the kept patches (VisionZip: the
              tower's [CLS] token).
    suffix:   optional (N, b, C) tokens without a patch position that come after them (VisionZip: its contextual
              tokens, merged from the pruned patches).
    A crop's token count is a + m + b; it must equal the budget.
    """

    keep: torch.Tensor
    features: torch.Tensor | None = None
    prefix: torch.Tensor | None = None
    suffix: torch.Tensor | None = None

    @property
    def n_prefix(self) -> int:
        return 0 if self.prefix is None else self.prefix.shape[1]

    @property
    def n_suffix(self) -> int:
        return 0 if self.suffix is None else self.suffix.shape[1]

    def tokens(self, features: torch.Tensor) -> torch.Tensor:
        """features (N, P, C) -> the tokens to project, (N, a + m + b, C)."""
        kept = self.features
        if kept is None:
            kept = features.gather(1, self.keep.unsqueeze(-1).expand(-1, -1, features.shape[-1]))  # (N, m, C)
        parts = [p.to(kept.dtype) for p in (self.prefix, kept, self.suffix) if p is not None]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def as_selection(result: torch.Tensor | Selection) -> Selection:
    return result if isinstance(result, Selection) else Selection(keep=result)
