"""VisionZip: dominant tokens by [CLS] attention plus contextual tokens merged from the rest, same total budget.

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025 (arXiv 2412.04467);
code: github.com/dvlab-research/VisionZip (`visionzip/clip_encoder.py`, `visionzip/utils.py`, `visionzip/main.py`).

Per crop, for a budget of k tokens:
1. Split: VisionZip's LLaVA-1.5 settings are 54 dominant + 10 contextual for 64 tokens, 108 + 20 for 128 and
   162 + 30 for 192, i.e. contextual = k * 10 / 64; here `contextual = round_half_up(k * 10 / 64)` and
   `dominant = k - contextual` (k = 58 -> 49 + 9, 144 -> 121 + 23, 29 -> 24 + 5, 1 -> 1 + 0).
2. Dominant tokens: the `dominant` patches with the highest [CLS] attention of the selected layer (VisionZip sums the
   heads, we average them: the same ranking).
3. Contextual tokens: the remaining R patches, in raster order, are split into targets (every
   `step = R // contextual`-th one from the first, `contextual` of them) and the others; each other token joins the
   target it is most similar to (cosine similarity, argmax), and a contextual token is the mean of its target and the
   tokens that joined it.

Where this differs from the public code, because this pipeline projects patch tokens only and every selector gets
(features, cls_attn, budget, seed):
- VisionZip keeps the tower's [CLS] token as one of its dominant tokens; here all dominant slots go to patches.
- VisionZip measures similarity on the head-mean keys of the selected layer; here on that layer's output features
  (the features that are projected), the only per-token descriptor the selector receives.
- Order: VisionZip appends the contextual tokens after the dominant ones. Here each contextual token takes the
  position of its target patch (`Selection.keep` holds dominant and target positions, ascending, and
  `Selection.features` the merged averages at the target positions), so all kept tokens are in raster order and
  LLaVA-1.6's grid merge places them like any kept patch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llava.model.pruning.selection import Selection

CONTEXTUAL_PER_64 = 10  # VisionZip: 10 of 64 tokens (20 of 128, 30 of 192) are contextual


def split_budget(budget: int) -> tuple[int, int]:
    """(dominant, contextual) for a budget, in VisionZip's proportion."""
    contextual = (budget * CONTEXTUAL_PER_64 * 2 + 64) // 128  # round half up of budget * 10 / 64
    return budget - contextual, contextual


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (N, P, C), index (N, k) -> (N, k, C)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def visionzip(features: torch.Tensor, cls_attn: torch.Tensor, budget: int, seed: int = 0) -> Selection:
    """features (N, P, C), cls_attn (N, P) -> Selection: keep (N, k) ascending, features (N, k, C) (merged at the
    contextual positions)."""
    n, p, c = features.shape
    dominant, contextual = split_budget(budget)
    dom = cls_attn.float().topk(dominant, dim=-1).indices  # (N, d)
    if contextual == 0:
        return Selection(keep=dom.sort(dim=-1).values)
    rest_mask = torch.ones(n, p, dtype=torch.bool, device=features.device)
    rest_mask.scatter_(1, dom, False)
    rest = rest_mask.nonzero()[:, 1].view(n, p - dominant)  # (N, R) remaining patches, raster order
    remaining = rest.shape[1]
    step = max(1, remaining // contextual)
    is_target = torch.zeros(remaining, dtype=torch.bool, device=features.device)
    is_target[torch.arange(0, remaining, step, device=features.device)[:contextual]] = True
    targets, others = rest[:, is_target], rest[:, ~is_target]  # (N, ctx), (N, R - ctx)

    feats = features.float()
    normed = F.normalize(feats, dim=-1)
    similarity = _gather(normed, others) @ _gather(normed, targets).transpose(1, 2)  # (N, R - ctx, ctx)
    assign = similarity.argmax(dim=-1)  # (N, R - ctx): the target each other token joins
    sums = _gather(feats, targets).scatter_add(1, assign.unsqueeze(-1).expand(-1, -1, c), _gather(feats, others))
    counts = torch.ones(n, contextual, device=features.device).scatter_add(1, assign, torch.ones_like(assign,
                                                                                                    dtype=feats.dtype))
    merged = sums / counts.unsqueeze(-1)  # (N, ctx, C)

    keep = torch.cat([dom, targets], dim=1)  # (N, k)
    kept_features = torch.cat([_gather(feats, dom), merged], dim=1)  # (N, k, C)
    order = keep.argsort(dim=-1)
    return Selection(keep=keep.gather(1, order), features=_gather(kept_features, order).to(features.dtype))
