"""LLaVA-OneVision (transformers' `LlavaOnevisionForConditionalGeneration`, the `llava-hf/llava-onevision-*-hf`
layout): its SigLIP tower without a [CLS] token (`SiglipTower`), and the adapter `apply_pruning` uses for it.

Token layout (transformers 5.x `modeling_llava_onevision.py` `get_image_features` / `pack_image_features`, and
`processing_llava_onevision.py` `_get_number_of_features`, which counts the placeholders): SigLIP has no [CLS]
token and the config selects `vision_feature_select_strategy="full"`, so a crop gives all P = (S / patch)^2 patch
tokens of `vision_feature_layer` (729 for 384 px, patch 14). An image of a one-image sample is tiled like LLaVA-1.6
(transformers' grid rule over `image_grid_pinpoints`): base crop (P tokens, no newline), then the stitched grid,
unpadded with transformers' rounding, with `image_newline` after every row. Images of a multi-image sample
(`batch_num_images` > 1) give their base crop only, then one newline. Budgets are per crop (`visual_token_num` of
P); the grid's kept tokens are laid out as LLaVA-1.6's upstream mode does (`llava.model.merge.merge_grid_upstream`).
Videos (`pixel_values_videos`) are pruned per frame after transformers' 2x2 pooling, in pooled-token units
(llava/integrations/transformers/onevision_video.py).

"anyres_max_N" downsampling: when the unpadded grid holds more than 1.1^2 x N crops' tokens, transformers resizes
it bilinearly (with `anyres_max_9`, grids above 3x3 crops); such an image's grid is pruned after the resize, as one
unit of h'w' tokens keeping the per-crop fraction v / P (llava/integrations/transformers/onevision_grid.py).

Methods: the tower has no [CLS] row, so the [CLS]-attention methods are refused when the pruning is applied
(`adapters.check_tower_supports`); random, uniform, divprune, attention_received (the attention each patch
receives, `SiglipTower` scores it) and the in-LLM fastv need no [CLS]. `last_cls_attn` is then an
empty (crops, 0) tensor per image: there is no [CLS] attention to report.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from llava.integrations.transformers.adapters import LlavaNextAdapter, VisualStream
from llava.integrations.transformers.onevision_grid import DownsampledGrid
from llava.integrations.transformers.onevision_video import VideoPoolPipeline, video_pruning
from llava.model.image_checks import as_crop_list
from llava.model.multimodal_encoder.siglip_encoder import NoClsPipeline, SiglipTower
from llava.model.pipeline import VisualTokens

SIGLIP_TYPES = ("siglip_vision_model",)


class OnevisionAdapter(LlavaNextAdapter):
    """LlavaOnevisionForConditionalGeneration, images: pixel_values (images, max crops, 3, S, S) padded, or all crops
    (N, 3, S, S); image_sizes (images, 2) as (height, width); batch_num_images (samples,) images per sample.
    Videos: pixel_values_videos (videos, T, 3, S, S), or a list of (T_i, 3, S, S)."""

    pixel_keys = ("pixel_values", "pixel_values_videos")
    size_keys = ("image_sizes", "batch_num_images")
    pipeline_class = NoClsPipeline

    def __init__(self, model: nn.Module, pruning) -> None:
        super().__init__(model, pruning)
        self.video_pipeline = VideoPoolPipeline(
            self.tower, model.model.multi_modal_projector, model.get_input_embeddings(),
            video_pruning(self.pipeline.pruning, self.tower.num_patches_per_side),
            pool=model.model.apply_pooling, image_newline=model.model.image_newline)
        self.resized_grid = DownsampledGrid(self.pipeline, int(model.config.vision_aspect_ratio.split("_")[-1]))

    def make_tower(self, model: nn.Module) -> nn.Module:
        return SiglipTower(model.model.vision_tower, select_layer=model.config.vision_feature_layer)

    @staticmethod
    def check_config(config, what: str) -> None:
        """The OneVision settings pruned here: one feature layer, every SigLIP token ("full"), "anyres_max_N"."""
        where = "(llava/integrations/transformers/onevision.py)"
        if not isinstance(config.vision_feature_layer, int):
            raise NotImplementedError(f"{what}: vision_feature_layer={config.vision_feature_layer!r} concatenates "
                                      f"several layers; pruning ranks the tokens of one layer {where}")
        if config.vision_feature_select_strategy != "full":
            raise NotImplementedError(f"{what}: vision_feature_select_strategy="
                                      f"{config.vision_feature_select_strategy!r}; SigLIP has no [CLS] row, so only "
                                      f"'full' (every patch token) is supported {where}")
        if config.vision_config.model_type not in SIGLIP_TYPES:
            raise NotImplementedError(f"{what}: vision tower {config.vision_config.model_type!r}; the OneVision "
                                      f"adapter wraps a SigLIP tower {where}")
        if not str(config.vision_aspect_ratio).startswith("anyres_max_"):
            raise NotImplementedError(f"{what}: vision_aspect_ratio={config.vision_aspect_ratio!r}; only "
                                      f"'anyres_max_N' is supported {where}")

    def streams(self, visual: dict) -> list[VisualStream]:
        """The image stream (if pixel_values) and the video stream (if pixel_values_videos), in that order."""
        streams = [self.image_stream(visual)] if visual.get("pixel_values") is not None else []
        videos = visual.get("pixel_values_videos")
        if videos is not None:
            per_frame = self.video_pipeline.pruning.tokens_per_crop
            full = [v.shape[0] * per_frame + 1 for v in as_crop_list(videos)]  # T x Q pooled tokens + 1 newline
            streams.append(VisualStream("video", self.model.config.video_token_id, self.video_pipeline(videos), full))
        return streams

    def encoder_outputs(self, features: dict[str, list[torch.Tensor]]) -> dict:
        """Images as a list of (n_i, D) (transformers concatenates them); videos as one (1, n, D) tensor, which
        transformers flattens over its first two axes."""
        out = {key: BaseModelOutputWithPooling(pooler_output=f) for key, f in features.items() if key == "image"}
        if "video" in features:
            out["video"] = BaseModelOutputWithPooling(pooler_output=torch.cat(features["video"]).unsqueeze(0))
        return out

    def image_stream(self, visual: dict) -> VisualStream:
        """pixel_values, image_sizes, batch_num_images -> the image stream (base crop, unpadded grid, newlines); a
        grid that transformers resizes ("anyres_max_N") goes through `DownsampledGrid`."""
        sizes = self.image_sizes(visual.get("image_sizes"))
        tiled = self.tiled(visual.get("batch_num_images"), len(sizes))
        resized = [tile and self.resized_grid.shape(s) is not None for s, tile in zip(sizes, tiled)]
        crops = [self.pipeline.crops(s) if tile else 1 for s, tile in zip(sizes, tiled)]
        tokens = self.image_tokens(self.split_crops(visual["pixel_values"], crops), sizes, resized)
        full = [self.resized_grid.full_tokens(s) if r else self.pipeline.full_tokens(s) if tile
                else self.tower.num_patches + 1 for s, tile, r in zip(sizes, tiled, resized)]
        per_crop = self.pipeline.pruning.visual_token_num
        llm = [self.resized_grid.llm_budget(per_crop, s) if r else per_crop * c
               for s, r, c in zip(sizes, resized, crops)]
        return VisualStream("image", self.model.config.image_token_id, tokens, full, llm)

    def image_tokens(self, pixels: list[torch.Tensor], sizes: list, resized: list[bool]) -> VisualTokens:
        """Per image (crops_i, 3, S, S): the images transformers keeps at grid resolution through the pipeline in one
        call, each resized one through `DownsampledGrid`; results in image order."""
        plain = [i for i, r in enumerate(resized) if not r]
        parts = {}
        if plain:
            tokens = self.pipeline([pixels[i] for i in plain], [sizes[i] for i in plain])
            parts = {i: (tokens.embeds[j], tokens.cls_attn[j], tokens.keep[j]) for j, i in enumerate(plain)}
        parts.update({i: self.resized_grid(pixels[i], sizes[i]) for i, r in enumerate(resized) if r})
        embeds, cls_attn, keep = (list(column) for column in zip(*(parts[i] for i in range(len(pixels)))))
        return VisualTokens(embeds=embeds, cls_attn=cls_attn, keep=keep)

    @staticmethod
    def tiled(batch_num_images, n_images: int) -> list[bool]:
        """Per image whether it is tiled (the only image of its sample), as `get_image_features` decides; without
        batch_num_images every image is (transformers' single-image default)."""
        if batch_num_images is None:
            return [True] * n_images
        tiled = [int(n) == 1 for n in torch.as_tensor(batch_num_images).tolist() for _ in range(int(n))]
        if len(tiled) != n_images:
            raise ValueError(f"batch_num_images sums to {len(tiled)} but {n_images} image size(s) were given")
        return tiled
