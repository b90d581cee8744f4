"""VisPruner: important tokens by [CLS] attention plus diverse tokens left after removing near-duplicates.

Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in VLMs", ICCV 2025
(arXiv 2412.01818, the later version of the FasterVLM paper); code: github.com/Theia-4869/VisPruner
(`llava/model/llava_arch.py`, `encode_images`; default `--important_ratio 0.5` in `llava/eval/model_vqa_loader.py`).

Per crop, for a budget of k tokens:
1. important = int(k * IMPORTANT_RATIO), diverse = k - important (k = 58 -> 29 + 29, 1 -> 0 + 1);
2. important tokens: the top `important` patches by [CLS] attention (head mean);
3. the other patches, in descending attention order, lose near-duplicates until `diverse` remain: each round splits
   them alternately into A (even places) and B (odd places), scores every A token by its highest cosine similarity to
   any B token, and removes the r = min(8, remaining - diverse) A tokens that score highest (ToMe-style bipartite
   matching); the survivors of A (most redundant first, as the public code's descending sort leaves them), then B,
   form the next round's list.
Similarity is measured on the tower features that are projected (the selected layer's patch features), as VisPruner.
The kept tokens are returned in raster order, as every selector here.

Where this departs from the public code (tests/test_baseline_oracles.py pins each point against an oracle of it):
- exactly tied attention or similarity scores are ordered by index (stable sorts); the public `argsort` leaves
  their order open, so only the choice among exact ties can differ;
- the public round indexes the A survivors with a batch index sized for an even split, so it fails whenever the
  remaining count R is odd (for 576 patches: whenever int(k / 2) is odd, e.g. k = 58 with R = 547) or a round's
  r exceeds R / 2 (k <= 11). Here every budget runs: an odd list puts its extra token in A (even places), and a
  round drops at most all of A. Where the public code runs (k = 64, 128, 192, 144, 29, ...), the two agree;
- scores are computed in float32 (the public code scores in the model's dtype, fp16 in its scripts).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IMPORTANT_RATIO = 0.5  # VisPruner's default split between important and diverse tokens
DUPLICATES_PER_ROUND = 8  # VisPruner removes at most 8 tokens per matching round


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def remove_duplicates(normed: torch.Tensor, residual: torch.Tensor, diverse: int) -> torch.Tensor:
    """normed (N, P, C) unit features; residual (N, R) candidate indices in priority order -> (N, diverse)."""
    if diverse <= 0:  # budget 0: no diverse token (the public loop does not run either)
        return residual[:, :0]
    while residual.shape[1] > diverse:
        a, b = residual[:, ::2], residual[:, 1::2]  # A gets the extra token of an odd list
        r = min(DUPLICATES_PER_ROUND, residual.shape[1] - diverse, a.shape[1])
        redundancy = (_gather(normed, a) @ _gather(normed, b).transpose(1, 2)).max(dim=-1).values  # (N, |A|)
        distinct = redundancy.argsort(dim=-1, descending=True, stable=True)[:, r:]  # drop the r most redundant
        residual = torch.cat([a.gather(1, distinct), b], dim=1)
    return residual


def vispruner(features: torch.Tensor, cls_attn: torch.Tensor, budget: int, seed: int = 0) -> torch.Tensor:
    """features (N, P, C), cls_attn (N, P) -> kept indices (N, k), ascending."""
    important = int(budget * IMPORTANT_RATIO)
    diverse = budget - important
    order = cls_attn.float().argsort(dim=-1, descending=True, stable=True)  # (N, P)
    normed = F.normalize(features.float(), dim=-1)
    residual = remove_duplicates(normed, order[:, important:], diverse)
    return torch.cat([order[:, :important], residual], dim=1).sort(dim=-1).values
