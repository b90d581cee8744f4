"""DivPrune: keep the most diverse visual tokens (greedy max-min diversity over the features), no attention needed.

Alvar, Singh, Akbari, Zhang, "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025
(arXiv 2503.02175); code: github.com/vbdi/divprune (`LLaVA/llava/model/llava_arch.py`: `DivPrune`,
`pairwise_cosine_similarity` and the `LAYER_INDEX == '0'` branch of `prepare_inputs_labels_for_multimodal`).

Pruning is posed as the max-min diversity problem (MMDP): keep the k tokens whose smallest pairwise distance is
largest, with the cosine distance d(i, j) = 1 - cos(x_i, x_j). It is solved greedily, per crop:
1. the first token is the most isolated one: the largest distance to its nearest other token;
2. each next token is the one farthest from the kept set: the largest min over kept s of d(s, j);
3. the kept tokens are returned in raster order (ascending), as the public code sorts them back into the prompt.
Only the features are read: `cls_attn` is ignored, so the method runs on towers without a [CLS] token.

Where this departs from the public code (tests/test_divprune.py checks us against an oracle of its algorithm):
- feature space: the public LLaVA code measures distances on the projector's output (the LLM input embeddings);
  our selectors run before the projector (only kept tokens are projected), so distances are measured on the tower
  features that get projected (the selected layer's patch features). The nonlinear `mlp2x_gelu` projector changes
  the distances, so the kept set can differ;
- unit of selection: the public code selects among all visual tokens of the first image of a batch-1 prompt (for
  LLaVA-1.6 the whole merged sequence: base crop, grid and newline tokens) and keeps round(ratio x count); here every
  crop keeps `budget` of its own patches, for every image of any batch, as every selector in this registry;
- dtype: distances are computed in float32 (the public code works in the model's dtype, fp16 in its scripts);
- the first pick: the public code takes each token's second-smallest distance, assuming the smallest is its own
  (zero) distance; here the self-distance is excluded exactly, so rounding on the diagonal cannot matter;
- repeats: the public argmax also ranges over kept tokens (score ~0), so once every remaining token is an exact
  duplicate of a kept one it may pick a kept token again; here kept tokens are excluded and each pick is new;
- ties: both take the lowest index among equal scores (torch.argmax returns the first maximum);
- a zero feature vector: the public division by its norm gives NaN distances; `F.normalize` makes it the zero
  vector here (distance 1 to every token).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_distances(features: torch.Tensor) -> torch.Tensor:
    """features (N, P, C) -> 1 - cosine similarity (N, P, P), float32."""
    unit = F.normalize(features.float(), dim=-1)
    return 1.0 - unit @ unit.transpose(1, 2)


def divprune(features: torch.Tensor, cls_attn: torch.Tensor | None, budget: int, seed: int = 0) -> torch.Tensor:
    """features (N, P, C), cls_attn (ignored) -> kept indices (N, k), ascending; greedy max-min cosine diversity."""
    n, p = features.shape[:2]
    if budget > p:
        raise ValueError(f"divprune (llava/model/pruning/divprune.py): budget {budget} exceeds the {p} patches "
                         f"of a crop")
    if budget <= 0:
        return torch.empty(n, 0, dtype=torch.long, device=features.device)
    dist = cosine_distances(features)  # (N, P, P); row s holds the distances from token s
    rows = torch.arange(n, device=features.device)
    self_pairs = torch.eye(p, dtype=torch.bool, device=features.device)
    # First pick: the token whose nearest other token is farthest (min over the column, self excluded).
    isolation = dist.masked_fill(self_pairs, float("inf")).amin(dim=1)  # (N, P)
    picked = isolation.argmax(dim=-1)  # (N,), first maximum = lowest index on ties
    kept = [picked]
    taken = torch.zeros(n, p, dtype=torch.bool, device=features.device)
    taken[rows, picked] = True
    to_kept = dist[rows, picked]  # (N, P): each token's distance to the nearest kept token
    for _ in range(1, budget):
        picked = to_kept.masked_fill(taken, float("-inf")).argmax(dim=-1)
        kept.append(picked)
        taken[rows, picked] = True
        to_kept = torch.minimum(to_kept, dist[rows, picked])
    return torch.stack(kept, dim=1).sort(dim=-1).values


divprune.needs_cls = False  # reads only the features (registry.needs_cls)
