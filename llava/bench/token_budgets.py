"""Visual-token budgets per model family: how many visual tokens a typical input gives the LLM unpruned, in which
unit a budget (`visual_token_num`) counts, and what 75 / 90 / 95 % fewer tokens means in that unit.

    python -m llava.bench.token_budgets          # prints the Markdown table of the README

The full counts come from transformers' own placeholder rules, not from a re-derivation:
- LLaVA-1.5: one CLIP ViT-L/14 crop at 336 px, (336 / 14)^2 patches ("default" strategy drops [CLS]);
- LLaVA-1.6: `LlavaNextProcessor._get_number_of_features` (transformers `processing_llava_next.py`) over the
  `LlavaNextConfig` default pinpoints: base crop + unpadded grid + one newline per grid row;
- LLaVA-OneVision: `LlavaOnevisionProcessor._get_number_of_features` (`processing_llava_onevision.py`) over the
  `LlavaOnevisionConfig` default pinpoints and "anyres_max_9" (SigLIP 384/14, no [CLS]: 729 per crop); a video frame is
  pooled 2x2 to ceil(27 / 2)^2 = 196 tokens and the video gets one newline (`replace_video_token`);
- Qwen2.5-VL: `smart_resize` (`image_processing_pil_qwen2_vl.py`, the torchvision-free copy) with the
  Qwen2.5-VL-7B-Instruct preprocessor's bounds (min_pixels 3136, max_pixels 12845056; hub
  `preprocessor_config.json`) for images and `Qwen2VLVideoProcessor`'s default bounds (128 to 768 x 28 x 28 pixels
  per frame) for videos; 14 px patches merged 2x2 (one LLM token per 28 x 28 pixels), 2 frames per temporal patch;
- Video-LLaVA: `VideoLlavaConfig().video_seq_length` = 8 frames x (256 patches + the [CLS] row transformers keeps).

A budget is per unit: per crop (LLaVA-1.5 / 1.6, OneVision images), per frame (Video-LLaVA, OneVision videos, after
OneVision's pooling), per image or per temporal frame pair after the 2x2 merger (Qwen2.5-VL). K at a reduction r is
round((1 - r) x tokens per unit), which gives the paper's 144 / 58 / 29 of LLaVA-1.5's 576. The "LLM gets" columns
add what is never pruned: LLaVA-1.6 / OneVision keep every row newline of the grid (`llava.model.merge
.merge_grid_upstream`) and OneVision's video newline; Video-LLaVA keeps each frame's [CLS] row (its VisionZip
budget counts that row instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import SimpleNamespace

from transformers import LlavaNextConfig, LlavaOnevisionConfig, VideoLlavaConfig
from transformers.image_processing_utils import select_best_resolution
from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor
from transformers.models.llava_onevision.processing_llava_onevision import LlavaOnevisionProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

REDUCTIONS = (0.75, 0.90, 0.95)
QWEN_IMAGE_PIXELS = (3136, 12845056)  # Qwen/Qwen2.5-VL-7B-Instruct preprocessor_config.json: min / max_pixels
QWEN_VIDEO_PIXELS = (128 * 28 * 28, 768 * 28 * 28)  # transformers Qwen2VLVideoProcessor.size defaults, per frame
QWEN_FACTOR = 28  # patch 14 x spatial merge 2: one LLM token per 28 x 28 pixels
QWEN_TEMPORAL = 2  # frames per temporal patch (temporal_patch_size)


@dataclass(frozen=True)
class Budget:
    """One family on one typical input: `units` budget units of `per_unit` tokens, plus `extra` never-pruned tokens
    (newlines, [CLS] rows), `full` = units x per_unit + extra placeholders in the unpruned prompt."""

    family: str
    input: str
    unit: str
    units: int
    per_unit: int
    extra: int
    extra_name: str = ""

    @property
    def full(self) -> int:
        return self.units * self.per_unit + self.extra

    def kept_per_unit(self, reduction: float) -> int:
        return max(1, round((1 - reduction) * self.per_unit))

    def llm_tokens(self, reduction: float) -> int:
        return self.units * self.kept_per_unit(reduction) + self.extra


class _NextRule:
    """transformers' LLaVA-1.6 placeholder count, run on plain attributes (no tokenizer needed)."""

    _get_number_of_features = LlavaNextProcessor._get_number_of_features
    _get_unpadded_features = LlavaNextProcessor._get_unpadded_features

    def __init__(self, pinpoints, patch_size: int, extra: int):
        self.image_processor = SimpleNamespace(image_grid_pinpoints=pinpoints)
        self.patch_size, self.num_additional_image_tokens = patch_size, extra


class _OnevisionRule:
    """transformers' LLaVA-OneVision placeholder count (anyres_max_N included), on plain attributes."""

    _get_number_of_features = LlavaOnevisionProcessor._get_number_of_features
    _get_unpadded_features = LlavaOnevisionProcessor._get_unpadded_features

    def __init__(self, pinpoints, tokens_per_crop: int, aspect: str):
        self.image_processor = SimpleNamespace(image_grid_pinpoints=pinpoints)
        self.num_image_tokens, self.vision_aspect_ratio = tokens_per_crop, aspect


def llava15(side: int = 336, patch: int = 14) -> Budget:
    return Budget("LLaVA-1.5", f"{side}x{side} image", "crop", 1, (side // patch) ** 2, 0)


def llava16(height: int = 672, width: int = 672, side: int = 336, patch: int = 14) -> Budget:
    """Base crop + grid crops (per crop (side / patch)^2), newlines after each unpadded grid row."""
    rule = _NextRule(LlavaNextConfig().image_grid_pinpoints, patch, extra=1)
    full = rule._get_number_of_features(height, width, side, side) - 1  # "default" strategy: no [CLS]
    per_crop = (side // patch) ** 2
    rows, crops = grid_shape(LlavaNextConfig().image_grid_pinpoints, height, width, side)
    newlines = rows * (side // patch)
    _check(full, (crops + 1) * per_crop + newlines, "LLaVA-1.6 (square inputs only: no unpadding)")
    return Budget("LLaVA-1.6", f"{width}x{height} image", "crop", crops + 1, per_crop, newlines, "row newlines")


def onevision_image(height: int = 1024, width: int = 1024) -> Budget:
    config = LlavaOnevisionConfig()
    side, patch = config.vision_config.image_size, config.vision_config.patch_size
    per_crop = (side // patch) ** 2
    rule = _OnevisionRule(config.image_grid_pinpoints, per_crop, config.vision_aspect_ratio)
    full = rule._get_number_of_features(height, width, side, side)
    rows, crops = grid_shape(config.image_grid_pinpoints, height, width, side)
    newlines = rows * (side // patch)
    _check(full, (crops + 1) * per_crop + newlines, "LLaVA-OneVision (square, not anyres_max-downsampled only)")
    return Budget("LLaVA-OneVision", f"{width}x{height} image", "crop", crops + 1, per_crop, newlines,
                  "row newlines")


def onevision_video(frames: int = 8) -> Budget:
    config = LlavaOnevisionConfig()
    pooled = math.ceil(config.vision_config.image_size // config.vision_config.patch_size / 2) ** 2
    return Budget("LLaVA-OneVision", f"{frames}-frame video", "frame (pooled 2x2)", frames, pooled, 1,
                  "video newline")


def qwen_image(height: int = 1024, width: int = 1024) -> Budget:
    h, w = smart_resize(height, width, QWEN_FACTOR, *QWEN_IMAGE_PIXELS)
    return Budget("Qwen2.5-VL", f"{width}x{height} image ({w}x{h} after smart_resize)", "image (after merger)", 1,
                  (h // QWEN_FACTOR) * (w // QWEN_FACTOR), 0)


def qwen_video(frames: int = 8, height: int = 448, width: int = 448) -> Budget:
    h, w = smart_resize(height, width, QWEN_FACTOR, *QWEN_VIDEO_PIXELS)
    return Budget("Qwen2.5-VL", f"{frames}-frame {width}x{height} video", "frame pair (after merger)",
                  frames // QWEN_TEMPORAL, (h // QWEN_FACTOR) * (w // QWEN_FACTOR), 0)


def video_llava(frames: int = 8) -> Budget:
    config = VideoLlavaConfig()
    per_frame = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    _check(config.video_seq_length, frames * (per_frame + 1), "Video-LLaVA")
    return Budget("Video-LLaVA", f"{frames}-frame video", "frame", frames, per_frame, frames, "[CLS] rows")


def grid_shape(pinpoints, height: int, width: int, side: int) -> tuple[int, int]:
    """(grid rows of crops, grid crops) transformers picks for an image (select_best_resolution)."""
    best_h, best_w = select_best_resolution((height, width), pinpoints)
    return best_h // side, (best_h // side) * (best_w // side)


def _check(count: int, layout: int, what: str) -> None:
    if count != layout:
        raise ValueError(f"{what}: transformers counts {count} placeholders but the crop layout gives {layout}; this "
                         f"table handles inputs whose grid is neither unpadded nor downsampled "
                         f"(llava/bench/token_budgets.py)")


def typical() -> list[Budget]:
    """The README's inputs: LLaVA-1.5 336 px, LLaVA-1.6 672x672, OneVision 1024x1024 and 8 frames, Qwen2.5-VL
    1024x1024 and 8 frames of 448x448, Video-LLaVA 8 frames."""
    return [llava15(), llava16(), onevision_image(), onevision_video(), qwen_image(), qwen_video(), video_llava()]


def markdown(budgets: list[Budget], reductions=REDUCTIONS) -> str:
    pct = [f"{round(100 * r)}%" for r in reductions]
    head = (["family", "input", "full visual tokens", "budget unit", "tokens / unit"]
            + [f"K at -{p}" for p in pct] + [f"LLM gets at -{p}" for p in pct])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in budgets:
        extra = f" + {b.extra} {b.extra_name}" if b.extra else ""
        full = f"{b.full:,} ({b.units} x {b.per_unit}{extra})" if b.units > 1 or b.extra else f"{b.full:,}"
        cells = ([b.family, b.input, full, b.unit, str(b.per_unit)]
                 + [str(b.kept_per_unit(r)) for r in reductions] + [f"{b.llm_tokens(r):,}" for r in reductions])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(typical()))
