"""LLaVA-OneVision videos: `VideoPoolPipeline`, the pipeline over a video's frames that prunes AFTER transformers'
2x2 pooling, and `video_pruning`, the per-frame budget in pooled-token units. The adapter that uses it is
llava/integrations/transformers/onevision.py.

What transformers does with `pixel_values_videos` (B, T, 3, S, S) (5.x `modeling_llava_onevision.py`,
`get_video_features` and `apply_pooling`; `processing_llava_onevision.py` `replace_video_token` counts the
placeholders): every frame goes through SigLIP (`vision_feature_layer`, all P = (S / patch)^2 tokens) and the
projector; each frame's (side x side) token map is then resized bilinearly (align_corners=False) to
(ceil(side / 2))^2 = Q tokens; a video's frames are concatenated and ONE `image_newline` is appended after the last
frame. At 384 px, patch 14: 729 patches -> 14 x 14 = 196 pooled tokens per frame, T x 196 + 1 placeholders.

Pruning: pooling mixes neighbouring tokens, so a kept patch has no token of its own after it. We prune after the
pooling instead: the units are pooled tokens, `visual_token_num` is per frame out of Q (capped at Q, so the default
"all P" keeps all Q; 49 of 196 is a 75 % reduction). Each frame keeps its tokens in raster order; the newline stays
at the end of the video. Scores are pooled with the features: the model's own `apply_pooling` (a linear map with
non-negative weights summing to 1 per output token) is applied to every per-patch score map of the tower (e.g.
`attention_received`: a pooled token's score is the same weighted mean of its source patches' received attention
as its feature is of their features). divprune measures diversity on the pooled projector outputs (the tokens the
LLM gets, as the public DivPrune code does); random / uniform read the pooled map's shape; fastv keeps every
pooled token and prunes inside the LLM.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from llava.model.image_checks import as_crop_list, check_finite
from llava.model.multimodal_encoder.siglip_encoder import NoClsPipeline
from llava.model.pipeline import VisualTokens
from llava.model.pruning import PruningConfig, as_selection

WHERE = "(llava/integrations/transformers/onevision_video.py)"


def pooled_per_frame(patches_per_side: int) -> int:
    """Tokens one frame gives after transformers' `apply_pooling`: (ceil(side / 2))^2, e.g. 27 -> 196."""
    return math.ceil(patches_per_side / 2) ** 2


def video_pruning(pruning: PruningConfig, patches_per_side: int) -> PruningConfig:
    """The image config with the budget in pooled tokens per frame: tokens_per_crop = Q, budget min(budget, Q)."""
    q = pooled_per_frame(patches_per_side)
    return pruning.replace(tokens_per_crop=q, visual_token_num=min(pruning.visual_token_num, q))


class VideoPoolPipeline(NoClsPipeline):
    """encode -> project every patch -> pool 2x2 (the model's `apply_pooling`) -> select per frame -> one newline
    per video. `pool`: (N, P, D) -> (N, Q, D); `image_newline` (D,); `pruning` in pooled units (`video_pruning`)."""

    def __init__(self, tower, projector, embed_tokens, pruning: PruningConfig, *,
                 pool: Callable[[torch.Tensor], torch.Tensor], image_newline: torch.Tensor) -> None:
        super().__init__(tower, projector, embed_tokens, pruning)
        self.pool, self.video_newline = pool, image_newline

    def __call__(self, videos, image_sizes=None) -> VisualTokens:
        """videos: (B, T, 3, S, S) or a list of (T_i, 3, S, S) -> per video T_i x k kept pooled tokens + newline."""
        per_video = as_crop_list(videos)
        check_finite(per_video)
        frames = [v.shape[0] for v in per_video]
        out = self.encode(torch.cat(per_video))
        # every patch is projected: the pooled token is a mix of projected neighbours (the projector is nonlinear)
        pooled = self.pool(self.projector(out.features.to(self.embed_tokens.weight.dtype)))  # (N, Q, D)
        selection = as_selection(self.select(pooled, out.cls_attn, **self.pooled_scores(out)))
        kept = selection.tokens(pooled)  # (N, k, D)
        newline = self.video_newline.to(kept.dtype)[None]
        embeds = [torch.cat([t.reshape(-1, t.shape[-1]), newline]) for t in kept.split(frames)]
        self.check_video_budget(embeds, frames)
        return VisualTokens(embeds=embeds, cls_attn=list(out.cls_attn.split(frames)),
                            keep=list(selection.keep.split(frames)))

    def pooled_scores(self, out) -> dict[str, torch.Tensor]:
        """Every per-patch score map (N, P) of the tower's output (`TowerOutput.score_maps`), pooled as the features
        are: (N, P) -> (N, Q), float32."""
        return {name: self.pool(m.unsqueeze(-1)).squeeze(-1) for name, m in out.score_maps().items()}

    def check_video_budget(self, embeds: list[torch.Tensor], frames: list[int]) -> None:
        per_frame = self.pruning.pre_projector_budget
        for i, (e, t) in enumerate(zip(embeds, frames)):
            if e.shape[0] != per_frame * t + 1:
                raise RuntimeError(f"video {i}: {e.shape[0]} tokens after pruning, expected {per_frame * t + 1} "
                                   f"({per_frame} per frame x {t} frames + 1 newline); method "
                                   f"{self.pruning.method!r} is broken {WHERE}")
