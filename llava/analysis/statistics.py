"""What the analyses compute from captured attention rows: causally normalised attention per image token (shift),
and the share of attention held by the top / last fraction of image tokens (dispersion, tail)."""

from __future__ import annotations

import numpy as np
import torch


def shift_statistics(blocks: torch.Tensor, num_image: int) -> dict[str, torch.Tensor | None]:
    """Causally normalised attention each image token receives, from the FROM_IMAGE rows of a capture.

    blocks (..., R, P): rows = the P image tokens, then the T = R - P text tokens after the image (the last one is
    the prompt's last token). Image token j can only be seen by rows at or after it, so each column's sum is
    divided by the number of rows that see it:
      all   rows from the first image token on:  sum / ((P - j) + T)
      image image rows:                          sum / (P - j)
      text  text rows after the image, the last token excepted: sum / (T - 1); None when T == 1
      last  the last token's row
    Returns (..., P) tensors.
    """
    rows, p = blocks.shape[-2], num_image
    text_rows = rows - p
    if text_rows < 1:
        raise ValueError(f"{rows} query rows for {p} image tokens: no token after the image")
    seen_by_image = torch.arange(p, 0, -1, device=blocks.device, dtype=blocks.dtype)
    image = blocks[..., :p, :].sum(dim=-2)
    text = blocks[..., p:rows - 1, :].sum(dim=-2)
    return {
        "all": (image + text + blocks[..., -1, :]) / (seen_by_image + text_rows),
        "image": image / seen_by_image,
        "text": text / (text_rows - 1) if text_rows > 1 else None,
        "last": blocks[..., -1, :],
    }


def top_count(num_tokens: int, fraction: float) -> int:
    """How many of `num_tokens` make `fraction` of them (at least 1)."""
    return max(1, min(num_tokens, round(fraction * num_tokens)))


def tail_share(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Share of (..., P) attention held by the last `fraction` of positions (raster order: the bottom rows)."""
    k = top_count(scores.shape[-1], fraction)
    return scores[..., -k:].sum(dim=-1) / scores.sum(dim=-1)


def sorted_shares(scores: torch.Tensor) -> torch.Tensor:
    """(n, P) scores -> each row sorted in descending order and divided by its sum."""
    s = scores.double()
    return s.sort(dim=-1, descending=True).values / s.sum(dim=-1, keepdim=True)


def top_share(scores: torch.Tensor, fraction: float) -> float:
    """Mean over the rows of (n, P) `scores` of the share held by the top `fraction` of tokens."""
    k = top_count(scores.shape[-1], fraction)
    return float(sorted_shares(scores)[:, :k].sum(dim=-1).mean())


def cumulative_shares(scores: torch.Tensor) -> np.ndarray:
    """(n, P) -> (P + 1,): mean over samples of the share held by the top 0, 1, ..., P tokens."""
    cum = sorted_shares(scores).cumsum(dim=-1).mean(dim=0)
    return np.concatenate([[0.0], cum.numpy()])


def normalised_scores(scores: torch.Tensor) -> np.ndarray:
    """All scores of one kind divided by the largest of them."""
    flat = scores.double().flatten().numpy()
    return flat / flat.max()
