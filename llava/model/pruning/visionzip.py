"""VisionZip: dominant tokens by [CLS] attention plus contextual tokens merged from the rest, same total budget.

Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025 (arXiv 2412.04467);
code: github.com/dvlab-research/VisionZip (`visionzip/clip_encoder.py` `CLIPVisionTower_VisionZip.forward`,
`visionzip/utils.py` `CLIPAttention_forward`, `visionzip/llava_arch.py` `restore_image_features_sorted`,
`visionzip/main.py`). Everything below is what that code does, per crop, at the tower layer LLaVA selects (-2):

1. Split: `visionzip(model, dominant=D, contextual=C)` keeps D dominant tokens, of which one is the [CLS] token, and
   C contextual tokens. The published LLaVA-1.5 settings are 54 + 10 for 64 tokens, 108 + 20 for 128 and 162 + 30 for
   192, i.e. contextual = k * 10 / 64; for other budgets `contextual = round_half_up(k * 10 / 64)` and
   `dominant = k - contextual` (58 -> 49 + 9, 144 -> 121 + 23, 29 -> 24 + 5, 1 -> 1 + 0: the [CLS] token alone).
2. Dominant tokens: the [CLS] row of the layer's output, then the `dominant - 1` patches with the highest [CLS]
   attention (VisionZip sums the heads, we average them: the same ranking), in raster order.
3. Contextual tokens: the remaining R patches, in raster order, are split into targets (every `step = R // C`-th one
   from the first, C of them) and the others. Similarity is the cosine of the layer's head-mean key projections
   (`raw_key_states.mean(1)` in VisionZip); each other patch joins the target it is most similar to (argmax), and a
   contextual token is the target's own hidden state **plus** the mean of the hidden states that joined it (the target
   alone when none did).
4. Order: [CLS], dominant patches (raster), contextual tokens (target order). On LLaVA-1.6 VisionZip keeps the base
   crop in that order; for the grid crops it lays the dominant patches out on the stitched grid (raster order over
   the whole grid, no unpadding, no newline), then appends every grid crop's [CLS] token, then every grid crop's
   contextual tokens. Our `merge` does exactly that with `Selection.prefix` ([CLS]) and `Selection.suffix`
   (contextual) in `anyres_mode="paper"`; in "upstream" mode the dominant patches are unpadded with newlines instead.

Where this departs from the public code: VisionZip computes in the model's dtype (fp16 on GPU); here similarity,
averaging and the sum run in float32 and the result is cast back. With contextual = 0 (budgets below 4) the public
code divides by zero; here there are simply no contextual tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llava.model.pruning.selection import Selection

CONTEXTUAL_PER_64 = 10  # VisionZip: 10 of 64 tokens (20 of 128, 30 of 192) are contextual


def split_budget(budget: int) -> tuple[int, int]:
    """(dominant, contextual) for a budget, in VisionZip's proportion; `dominant` counts the [CLS] token."""
    contextual = (budget * CONTEXTUAL_PER_64 * 2 + 64) // 128  # round half up of budget * 10 / 64
    return budget - contextual, contextual


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (N, P, C), index (N, k) -> (N, k, C)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def contextual_tokens(hidden: torch.Tensor, keys: torch.Tensor, contextual: int) -> torch.Tensor:
    """VisionZip's contextual tokens from the patches left after the dominant ones.

    hidden (N, R, C) and keys (N, R, Ck) of the remaining patches in raster order -> (N, contextual, C).
    """
    n, remaining, c = hidden.shape
    step = max(1, remaining // contextual)
    is_target = torch.zeros(remaining, dtype=torch.bool, device=hidden.device)
    is_target[torch.arange(0, remaining, step, device=hidden.device)[:contextual]] = True
    normed = F.normalize(keys.float(), dim=-1)
    similarity = normed[:, ~is_target] @ normed[:, is_target].transpose(1, 2)  # (N, R - ctx, ctx)
    assign = similarity.argmax(dim=-1)  # (N, R - ctx): the target each other patch joins
    others = hidden[:, ~is_target].float()
    sums = others.new_zeros(n, contextual, c).scatter_add_(1, assign.unsqueeze(-1).expand(-1, -1, c), others)
    counts = torch.zeros(n, contextual, device=hidden.device).scatter_add_(1, assign, torch.ones_like(others[..., 0]))
    return hidden[:, is_target].float() + sums / counts.clamp(min=1).unsqueeze(-1)


def visionzip(features: torch.Tensor, cls_attn: torch.Tensor, budget: int, seed: int = 0, *,
              keys: torch.Tensor, cls_token: torch.Tensor) -> Selection:
    """features (N, P, C), cls_attn (N, P), keys (N, P, Ck), cls_token (N, C) -> Selection with keep (N, dominant - 1)
    ascending, prefix = the [CLS] token (N, 1, C) and suffix = the contextual tokens (N, contextual, C)."""
    n, p, c = features.shape
    dominant, contextual = split_budget(budget)
    dom = cls_attn.float().topk(dominant - 1, dim=-1).indices.sort(dim=-1).values  # (N, d - 1), raster order
    prefix = cls_token.unsqueeze(1)  # (N, 1, C)
    if contextual == 0:
        return Selection(keep=dom, prefix=prefix)
    rest_mask = torch.ones(n, p, dtype=torch.bool, device=features.device)
    rest_mask.scatter_(1, dom, False)
    rest = rest_mask.nonzero()[:, 1].view(n, p - dom.shape[1])  # (N, R) remaining patches, raster order
    merged = contextual_tokens(_gather(features, rest), _gather(keys, rest), contextual)
    return Selection(keep=dom, prefix=prefix, suffix=merged.to(features.dtype))


visionzip.needs = ("keys", "cls_token")  # tower outputs `LlavaMetaForCausalLM.select` passes besides the features
