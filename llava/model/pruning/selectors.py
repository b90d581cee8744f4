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


fastervlm.needs_cls = True


def crop_shape(features: torch.Tensor | None, cls_attn: torch.Tensor) -> tuple[int, int]:
    """(N, P): from the features (N, P, C), which every tower gives; from cls_attn (N, P) when called without them."""
    return tuple(cls_attn.shape) if features is None else tuple(features.shape[:2])


def content_scores(features: torch.Tensor | None, cls_attn: torch.Tensor) -> torch.Tensor:
    """(N, P) per-crop values that identify a crop's content: its [CLS] attention, or on a tower without [CLS]
    (cls_attn (N, 0)) each patch's feature norm."""
    if features is None or cls_attn.shape[-1] == features.shape[1]:
        return cls_attn
    return features.float().norm(dim=-1)


def random(features: torch.Tensor, cls_attn: torch.Tensor, budget: int, seed: int = 0) -> torch.Tensor:
    """A uniformly random subset of each crop. The draw is seeded by `seed` and the crop's own content (a hash of
    its [CLS] attention, or of its patch feature norms without [CLS]), so every image gets its own subset, and the
    same one in any batch, run or resume."""
    n, p = crop_shape(features, cls_attn)
    rows = []
    for scores in content_scores(features, cls_attn).detach().float().cpu():
        content = int((scores * 1e6).round().long().sum().item()) % (2**31)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + content)
        rows.append(torch.randperm(p, generator=gen)[:budget])
    return torch.stack(rows).sort(dim=-1).values.to(cls_attn.device)


random.uses_seed = True  # the seed changes the kept set (recorded in answers files)
random.needs_cls = False


def uniform(features: torch.Tensor, cls_attn: torch.Tensor, budget: int, seed: int = 0) -> torch.Tensor:
    """Spatially uniform subsample: `budget` positions evenly spaced over the raster order of each crop."""
    n, p = crop_shape(features, cls_attn)
    # floor((i + 0.5) * p / k) spreads k picks evenly and is strictly increasing for k <= p.
    idx = ((torch.arange(budget, dtype=torch.float64) + 0.5) * p / budget).floor().long()
    return idx.unsqueeze(0).expand(n, -1).to(cls_attn.device)


uniform.needs_cls = False
