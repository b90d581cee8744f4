"""Selection methods that run before the projector.

A selector maps (features [N, P, C], cls_attn [N, P], budget k) to kept patch indices [N, k], one row per crop,
each row sorted ascending so that kept tokens stay in their original raster order.
"""

from __future__ import annotations

import torch


def fastervlm(features: torch.Tensor, cls_attn: torch.Tensor, budget: int, seed: int = 0) -> torch.Tensor:
    """FasterVLM (arXiv 2412.01818): the `budget` patches with the highest [CLS] attention of each crop."""
    keep = cls_attn.float().topk(budget, dim=-1).indices  # (N, k), score order
    return keep.sort(dim=-1).values


def random(features: torch.Tensor, cls_attn: torch.Tensor, budget: int, seed: int = 0) -> torch.Tensor:
    """A uniformly random subset of each crop. The draw is seeded by `seed` and the crop's own content (a hash of
    its [CLS] attention), so every image gets its own subset, and the same one in any batch, run or resume."""
    n, p = cls_attn.shape
    rows = []
    for scores in cls_attn.detach().float().cpu():
        content = int((scores * 1e6).round().long().sum().item()) % (2**31)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + content)
        rows.append(torch.randperm(p, generator=gen)[:budget])
    return torch.stack(rows).sort(dim=-1).values.to(cls_attn.device)


random.uses_seed = True  # the seed changes the kept set (recorded in answers files)


def uniform(features: torch.Tensor, cls_attn: torch.Tensor, budget: int, seed: int = 0) -> torch.Tensor:
    """Spatially uniform subsample: `budget` positions evenly spaced over the raster order of each crop."""
    n, p = cls_attn.shape
    # floor((i + 0.5) * p / k) spreads k picks evenly and is strictly increasing for k <= p.
    idx = ((torch.arange(budget, dtype=torch.float64) + 0.5) * p / budget).floor().long()
    return idx.unsqueeze(0).expand(n, -1).to(cls_attn.device)
