"""Adapters from transformers' Llava model classes to our `VisualTokenPipeline`: each one builds the pipeline over
the instance's own modules (its CLIP tower wrapped for [CLS] attention, its projector, its input embeddings,
LLaVA-1.6's `image_newline`) and says how the processor's `pixel_values` / `image_sizes` map to crops per image.
`streams` turns one call's visual inputs into `VisualStream`s (one per placeholder token: images, and for
Video-LLaVA videos, llava/integrations/transformers/video_llava.py); `encoder_outputs` hands the kept features back
in the form the model takes as `mm_encoder_outputs`.

A new family is one adapter class here (or in its own module) and one line in `ADAPTERS`
(llava/integrations/transformers/__init__.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

from llava.model.convert_hf import check_supported
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from llava.model.pipeline import VisualTokenPipeline, VisualTokens
from llava.model.placeholders import kept_placeholders
from llava.model.pruning import PruningConfig
from llava.model.pruning.registry import methods_without_cls, needs_cls


class NeedsClsError(ValueError):
    """A method that reads the [CLS] token asked of a tower that has none (`check_tower_supports`)."""


def check_tower_supports(tower: nn.Module, method: str, what: str) -> None:
    """Refuse, once when the pruning is applied, a method that reads the [CLS] token (fastervlm, visionzip,
    vispruner: `needs_cls`, declared next to each method in llava/model/pruning) on a tower that declares
    `has_cls = False`, naming the methods that work there (`methods_without_cls`)."""
    if getattr(tower, "has_cls", True) or not needs_cls(method):
        return
    raise NeedsClsError(f"pruning method {method!r} ranks patches by the [CLS] token's attention, but {what}'s "
                        f"vision tower ({type(tower).__name__}) has no [CLS] token; use a method that needs no [CLS]: "
                        f"{', '.join(methods_without_cls())} (llava/integrations/transformers/adapters.py)")


@dataclass(frozen=True)
class VisualStream:
    """One kind of visual input of a call: `key` is its `mm_encoder_outputs` key ("image" / "video"), `token_id` the
    placeholder its processor wrote, `tokens` the pipeline's result per item (an image, or a video's frames), `full`
    each item's placeholder count at full budget, `llm_budgets` what an in-LLM method (FastV) keeps of each item
    (None: `visual_token_num` x the item's crops / frames)."""

    key: str
    token_id: int
    tokens: VisualTokens
    full: list[int]
    llm_budgets: list[int] | None = None

    def in_llm_budgets(self, per_crop: int) -> list[int]:
        """Per item, the visual tokens an in-LLM method keeps at `per_crop` per crop / frame."""
        if self.llm_budgets is not None:
            return self.llm_budgets
        return [per_crop * a.shape[0] for a in self.tokens.cls_attn]


class LlavaAdapter:
    """LlavaForConditionalGeneration (LLaVA-1.5): one crop per image, pixel_values (images, 3, S, S)."""

    anyres = False
    pixel_keys = ("pixel_values",)  # the call's pixel inputs that this adapter encodes (and takes out of the call)
    size_keys = ("image_sizes",)  # further visual inputs it reads (and takes out of the call)
    pipeline_class = VisualTokenPipeline

    def __init__(self, model: nn.Module, pruning: PruningConfig) -> None:
        self.model = model
        self.tower = self.make_tower(model)
        check_tower_supports(self.tower, pruning.method, type(model).__name__)
        self.pipeline = self.pipeline_class(self.tower, model.model.multi_modal_projector,
                                            model.get_input_embeddings(), pruning, **self.pipeline_options())

    def make_tower(self, model: nn.Module) -> nn.Module:
        """The model's vision tower wrapped for the pipeline (CLIP with its [CLS] attention)."""
        return CLIPVisionTower(model.model.vision_tower, select_layer=model.config.vision_feature_layer)

    def pipeline_options(self) -> dict:
        return {}

    @staticmethod
    def tokens_per_crop(config) -> int:
        """Patch tokens of one crop (the budget's unit and bound): (image_size / patch_size)^2."""
        vision = config.vision_config
        return (vision.image_size // vision.patch_size) ** 2

    @staticmethod
    def check_config(config, what: str) -> None:
        """The llava-hf settings this adapter prunes (`convert_hf.check_supported`: CLIP, one layer, patches)."""
        check_supported(config, what)

    @staticmethod
    def check_mode(anyres_mode: str) -> None:
        """LLaVA-1.5 has no anyres layout: every mode is the same."""

    def image_sizes(self, image_sizes) -> list[tuple[int, int]] | None:
        """(width, height) per image for the pipeline; None without anyres."""
        return None

    def crops(self, pixel_values: torch.Tensor, sizes) -> list[torch.Tensor] | torch.Tensor:
        """The processor's pixel_values as the pipeline's images."""
        return pixel_values

    def streams(self, visual: dict) -> list[VisualStream]:
        """The call's visual inputs (pixel_values, image_sizes as the processor returns them) -> the image stream."""
        sizes = self.image_sizes(visual.get("image_sizes"))
        tokens = self.pipeline(self.crops(visual["pixel_values"], sizes), sizes)
        full = [self.pipeline.full_tokens(s) for s in (sizes or [None] * len(tokens.embeds))]
        return [VisualStream("image", self.model.config.image_token_id, tokens, full)]

    @staticmethod
    def kept_placeholders(placeholders: torch.Tensor, owner: list[int], stream: VisualStream) -> torch.Tensor:
        """Positions to keep (B, L) bool: all text, and of each item's placeholders as many as it kept tokens (they
        are re-numbered: LLaVA's convention; `placeholders.kept_placeholders`)."""
        return kept_placeholders(placeholders, owner, stream.full, stream.tokens.counts)

    def pruned_call_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, keep: torch.Tensor,
                           pruned_mask: torch.Tensor | None, visual: dict) -> dict:
        """Further model inputs of the pruned call (Qwen: the unpruned prompt's positions); none for LLaVA."""
        return {}

    def encoder_outputs(self, features: dict[str, list[torch.Tensor]]) -> dict:
        """The kept features per stream key, (n_i, D) per item, as transformers' Llava models take pre-computed
        features (`mm_encoder_outputs`)."""
        return {key: BaseModelOutputWithPooling(pooler_output=f) for key, f in features.items()}


class LlavaNextAdapter(LlavaAdapter):
    """LlavaNextForConditionalGeneration (LLaVA-1.6): the processor tiled each image with transformers' grid rule and
    wrote the placeholders of `spatial_unpad` + `image_newline` with transformers' unpad rounding, so the pipeline
    runs in upstream mode with those rules. pixel_values: (images, crops, 3, S, S) padded, or all crops (N, 3, S, S);
    image_sizes (images, 2) as (height, width)."""

    anyres = True

    def pipeline_options(self) -> dict:
        pinpoints, side = self.model.config.image_grid_pinpoints, self.model.config.vision_config.image_size

        def grid(image_size: tuple[int, int]) -> tuple[int, int]:
            """transformers' own grid rule (its pinpoints are (height, width)), which its processor used."""
            width, height = image_size
            rows, cols = get_anyres_image_grid_shape([height, width], pinpoints, side)
            return cols, rows

        return dict(grid_rule=grid, image_newline=self.model.model.image_newline, unpad_rule="transformers")

    @staticmethod
    def check_mode(anyres_mode: str) -> None:
        if anyres_mode != "upstream":
            raise ValueError(
                f"anyres_mode={anyres_mode!r}: on a transformers LlavaNext model only 'upstream' is supported, "
                f"because its processor already tiled each image with transformers' grid rule and wrote the "
                f"placeholders of the spatial_unpad + image_newline layout. For the paper's layout load the directory "
                f"with llava.model.builder.load_pretrained_model(path, anyres_mode='paper'), which reads llava-hf "
                f"checkpoints"
            )

    def image_sizes(self, image_sizes) -> list[tuple[int, int]]:
        if image_sizes is None:
            raise ValueError("LLaVA-1.6 (LlavaNext) needs image_sizes, as its processor returns them")
        return [(int(w), int(h)) for h, w in torch.as_tensor(image_sizes).tolist()]

    def crops(self, pixel_values: torch.Tensor, sizes) -> list[torch.Tensor]:
        return self.split_crops(pixel_values, [self.pipeline.crops(s) for s in sizes])

    @staticmethod
    def split_crops(pixel_values: torch.Tensor, crops: list[int]) -> list[torch.Tensor]:
        """The processor's pixels as one (crops_i, 3, S, S) tensor per image: the padded (images, max crops, 3, S,
        S) form cut to size, or all crops (N, 3, S, S) split."""
        if pixel_values.ndim == 5:
            return [p[:n] for p, n in zip(pixel_values, crops)]
        return list(pixel_values.split(crops))
