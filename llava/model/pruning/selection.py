"""What a selector hands to the projector."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Selection:
    """keep: (N, k) kept patch indices, ascending per crop (their raster order is the token order).
    features: optional (N, k, C) features to project instead of the tower's features at `keep`, for methods that
    merge pruned tokens into the kept ones (e.g. VisionZip's contextual tokens); None means "gather at keep"."""

    keep: torch.Tensor
    features: torch.Tensor | None = None


def as_selection(result: torch.Tensor | Selection) -> Selection:
    return result if isinstance(result, Selection) else Selection(keep=result)
