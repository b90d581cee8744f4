"""LLaVA-OneVision images whose crop grid transformers interpolates down ("anyres_max_N"): `DownsampledGrid`, the
image path for them. The adapter that routes such images here is llava/integrations/transformers/onevision.py.

What transformers does (5.x `modeling_llava_onevision.py` `pack_image_features`; the public LLaVA-NeXt code,
LLaVA-VL/LLaVA-NeXt `llava/model/llava_arch.py`, `mm_patch_merge_type` "spatial_unpad" with `anyres_max_N`, does
the same): the grid crops are projected, stitched into one (rows x side, cols x side) token map and unpadded; when
that map holds more than N crops' tokens by a ratio r = sqrt(h w / (N side^2)) > 1.1, it is resized bilinearly
(align_corners=False) to h' x w' = int(h // r) x int(w // r) tokens; then one `image_newline` follows every row.
With anyres_max_9 at 384 px this happens for grids above 3x3 crops (images larger than about 1152 px).

A resized token mixes its neighbours, so no patch of a crop has a token of its own there. The rule here prunes after
the resize, as the video path prunes after transformers' 2x2 pooling (onevision_video.py):
1. base crop: as every crop elsewhere, `visual_token_num` = v of its P patches, chosen by the method;
2. grid: every grid token is projected, stitched, unpadded and resized exactly as `pack_image_features` does;
3. every per-patch score map of the tower (e.g. `received` (N, P) of attention_received) is stitched, unpadded and
   resized the same way (float32), so a resized token's score is the same weighted mean of its sources' scores as
   its feature is of their features; random / uniform read only the map's shape; divprune measures diversity on the
   resized projector outputs (the tokens the LLM gets, as the public DivPrune code and our video path do);
4. budget: the grid is ONE selection unit of h'w' tokens and keeps k' = floor(v h'w' / P + 1/2) of them (the same
   fraction v / P as every crop; at least 1, at most h'w'), in raster order. fastv keeps every token here and
   prunes inside the LLM to k + k' + h' tokens of the image (`llm_budget`: the selectors' count, not v x crops,
   which would count the crops that the resize merged);
5. layout: base crop's kept tokens, then the grid's kept tokens row by row with one `image_newline` after EVERY
   one of the h' rows, kept or not: the convention of `llava.model.merge.merge_grid_upstream`, whose newlines are
   never pruned. An image gives k + k' + h' tokens (full budget: P + h'(w' + 1), the processor's count).

`VisualTokens.keep` of such an image is one row (1, k + k'): the base crop's patch indices, then P + the raster index
of each kept token on the h' x w' grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from llava.model.image_checks import check_finite
from llava.model.merge import GridLayout, unpad_window
from llava.model.pipeline import VisualTokenPipeline

WHERE = "(llava/integrations/transformers/onevision_grid.py)"


def resized_shape(layout: GridLayout, image_size: tuple[int, int], max_crops: int) -> tuple[int, int] | None:
    """(h', w') that transformers resizes the unpadded grid of an image of (width, height) to, None if it keeps it
    (ratio <= 1.1). The float arithmetic is `pack_image_features`' own, so the counts match its processor's."""
    r0, r1, c0, c1 = unpad_window(image_size, layout.rows * layout.side, layout.cols * layout.side, "transformers")
    height, width = r1 - r0, c1 - c0
    ratio = math.sqrt(height * width / (max_crops * layout.side ** 2))
    if ratio <= 1.1:
        return None
    return int(height // ratio), int(width // ratio)


def resize_grid(grid: torch.Tensor, layout: GridLayout, image_size: tuple[int, int],
                shape: tuple[int, int]) -> torch.Tensor:
    """grid (rows x cols crops, P, C) in crop raster order -> (h' w', C): stitched, unpadded (transformers'
    rounding) and resized bilinearly to `shape` = (h', w'), as `pack_image_features`; raster order on the result."""
    channels = grid.shape[-1]
    stitched = grid.view(layout.rows, layout.cols, layout.side, layout.side, channels)
    stitched = stitched.permute(4, 0, 2, 1, 3).reshape(channels, layout.rows * layout.side, -1)  # (C, H, W)
    r0, r1, c0, c1 = unpad_window(image_size, stitched.shape[1], stitched.shape[2], "transformers")
    resized = F.interpolate(stitched[None, :, r0:r1, c0:c1], list(shape), mode="bilinear", align_corners=False)[0]
    return resized.flatten(1).T


def grid_budget(per_crop: int, patches: int, tokens: int) -> int:
    """k' = floor(per_crop x tokens / patches + 1/2), within [1, tokens]: the per-crop fraction of a grid of
    `tokens` resized tokens (integer arithmetic, so no float tie decides it)."""
    return min(tokens, max(1, (2 * per_crop * tokens + patches) // (2 * patches)))


def with_row_newlines(tokens: torch.Tensor, keep: torch.Tensor, shape: tuple[int, int],
                      newline: torch.Tensor) -> torch.Tensor:
    """tokens (k', D) at ascending raster indices keep (k',) of an (h', w') grid -> (k' + h', D): each row's kept
    tokens, then one newline (D,) after every row (merge_grid_upstream's convention: newlines are never pruned)."""
    height, width = shape
    token_key = (keep // width) * (width + 1) + keep % width
    newline_key = torch.arange(height, device=keep.device) * (width + 1) + width
    sequence = torch.cat([tokens, newline.to(tokens.dtype).expand(height, -1)])
    return sequence[torch.cat([token_key, newline_key]).argsort()]


class DownsampledGrid:
    """One image at a time: base crop pruned per crop by `pipeline`, the resized grid pruned as one unit (module
    docstring). `pipeline`: the adapter's anyres `VisualTokenPipeline`; `max_crops`: N of "anyres_max_N"."""

    def __init__(self, pipeline: VisualTokenPipeline, max_crops: int) -> None:
        self.pipeline, self.max_crops = pipeline, max_crops

    def shape(self, image_size: tuple[int, int]) -> tuple[int, int] | None:
        """(h', w') of a tiled image's resized grid, None when transformers does not resize it."""
        return resized_shape(self.pipeline.grid_layout(image_size), image_size, self.max_crops)

    def llm_budget(self, per_crop: int, image_size: tuple[int, int]) -> int:
        """What FastV keeps of a resized image at `per_crop`: as many tokens as the selectors give the LLM, k + k' +
        h' (base crop, the grid's share `grid_budget`, one per row for the newlines, which FastV ranks among the
        rest); at full budget every token."""
        height, width = self.shape(image_size)
        return per_crop + grid_budget(per_crop, self.pipeline.tower.num_patches, height * width) + height

    def full_tokens(self, image_size: tuple[int, int]) -> int:
        """P + h'(w' + 1): what the processor counted for a resized image."""
        height, width = self.shape(image_size)
        return self.pipeline.tower.num_patches + height * (width + 1)

    def __call__(self, crops: torch.Tensor, image_size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """crops (1 + rows x cols, 3, S, S) of one image -> embeds (k + k' + h', D), cls_attn (crops, 0) and
        keep (1, k + k') (module docstring)."""
        pipe, layout, shape = self.pipeline, self.pipeline.grid_layout(image_size), self.shape(image_size)
        check_finite([crops])
        if crops.shape[0] != 1 + layout.rows * layout.cols:
            raise ValueError(f"image of size {image_size}: {crops.shape[0]} crops, expected 1 + {layout.cols}x"
                             f"{layout.rows} {WHERE}")
        out = pipe.encode(crops)
        scores = out.score_maps()
        base = pipe.select(out.features[:1], out.cls_attn[:1], **{k: v[:1] for k, v in scores.items()})
        base_embeds = pipe.project(out.features[:1], base)[0]  # (k, D)
        projected = pipe.projector(out.features[1:].to(pipe.embed_tokens.weight.dtype))  # every grid token
        grid = resize_grid(projected, layout, image_size, shape)  # (h'w', D)
        resized = {k: resize_grid(v[1:, :, None], layout, image_size, shape).T for k, v in scores.items()}
        kept = self.select_grid(grid, out.cls_attn[:1], resized)
        grid_seq = with_row_newlines(grid[kept], kept, shape, pipe.image_newline)
        keep = torch.cat([base.keep[0], pipe.tower.num_patches + kept])[None]
        return torch.cat([base_embeds, grid_seq]), out.cls_attn, keep

    def select_grid(self, grid: torch.Tensor, cls_attn: torch.Tensor, scores: dict) -> torch.Tensor:
        """grid (h'w', D), scores {name: (1, h'w')} -> kept raster indices (k',), ascending, by the method with the
        budget k' (`grid_budget`) over h'w' tokens."""
        pipe, tokens = self.pipeline, grid.shape[0]
        budget = grid_budget(pipe.pruning.pre_projector_budget, pipe.tower.num_patches, tokens)
        pruning = pipe.pruning.replace(tokens_per_crop=tokens, visual_token_num=budget)
        unit = VisualTokenPipeline(pipe.tower, pipe.projector, pipe.embed_tokens, pruning)
        selection = unit.select(grid[None], cls_attn, **scores)
        if selection.prefix is not None or selection.suffix is not None or selection.features is not None:
            raise NotImplementedError(f"pruning method {pruning.method!r} rewrites or adds tokens, which a resized "
                                      f"OneVision grid does not support {WHERE}")
        keep = selection.keep[0]
        if keep.shape[0] != pruning.pre_projector_budget:
            raise RuntimeError(f"method {pruning.method!r} kept {keep.shape[0]} of a resized grid's {tokens} "
                               f"tokens, expected {pruning.pre_projector_budget} {WHERE}")
        return keep
