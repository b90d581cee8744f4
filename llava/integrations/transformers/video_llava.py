"""Video-LLaVA (transformers' `VideoLlavaForConditionalGeneration`, the `LanguageBind/Video-LLaVA-7B-hf` layout):
the adapter that `apply_pruning` uses for it, and `answer_video`, one question about one video.

Token layout (transformers 5.x `modeling_video_llava.py` / `processing_video_llava.py`): an image goes through
`image_tower` and, with `vision_feature_select_strategy="default"`, gives its 256 patch tokens (224 px, patch 14), as
LLaVA-1.5 does. A video (pixel_values_videos (B, T, 3, 224, 224), T = 8) goes frame by frame through `video_tower`
and every frame gives ALL tokens of the selected layer, its [CLS] row first and then 256 patches: the processor
writes T x 257 = 2,056 `<video>` placeholders (config `video_seq_length`). That is the original Video-LLaVA's choice
too (PKU-YuanGroup/Video-LLaVA, `videollava/model/multimodal_encoder/languagebind/__init__.py`,
`LanguageBindVideoTower.feature_select` returns "all"). The strategy applies to images only.

Pruning a video: each frame is a crop with its own [CLS] attention at `vision_feature_layer` and its own budget
(`visual_token_num` of its 256 patches; 64 keeps 25 %, i.e. a 75 % reduction, 26 a 90 % one). Each frame keeps
its [CLS] row in front of its kept patches, where the model has it, so at full budget the model gets exactly its own
features. Kept tokens stay in frame order, then raster order. A frame therefore carries `visual_token_num + 1`
tokens, except with VisionZip, whose own prefix is that same [CLS] row (its budget counts it): `visual_token_num`.
FasterVLM's video branch (Theia-4869/FasterVLM, `videollava/model/llava_arch.py` `encode_videos`) instead drops the
frames' [CLS] rows (`select_feature="patch"`), i.e. 8 tokens fewer per video than here; its top-k per frame on
the head-mean [CLS] attention is what `fastervlm` does on each frame here.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from transformers.modeling_outputs import BaseModelOutputWithPooling

from llava.conversation import conv_templates
from llava.integrations.transformers.adapters import LlavaAdapter, VisualStream
from llava.integrations.transformers.handle import HANDLE_ATTRIBUTE
from llava.model.image_checks import as_crop_list
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from llava.model.pipeline import VisualTokenPipeline
from llava.model.pruning import PruningConfig, Selection, as_selection

VIDEO_TOKEN = "<video>"
IMAGE_TOKEN = "<image>"


class VideoLlavaInputs:
    """What `VideoLlavaProcessor` does for this model, without its video processor (transformers 5.x builds that
    one on torchvision, which this package does not require): each frame goes through the CLIP image processor
    (`VideoLlavaImageProcessor`: the same resize / center crop / normalisation as its video processor), and each
    `<image>` / `<video>` in the text is expanded to its placeholders exactly as `processing_video_llava.py` writes
    them: P per image (strategy "default"), T x (P + 1) per video of T frames.

    `processor(text=[...], images=[PIL...], videos=[frames...], return_tensors="pt")` -> dict with input_ids,
    attention_mask (left padding as the tokenizer says), pixel_values (images, 3, S, S), pixel_values_videos
    (videos, T, 3, S, S). A video is a list of PIL frames or an array (T, H, W, 3); `videos` one video or a list.
    """

    def __init__(self, tokenizer, image_processor, patch_size: int) -> None:
        self.tokenizer, self.image_processor, self.patch_size = tokenizer, image_processor, patch_size

    def _pixels(self, images) -> torch.Tensor:
        out = self.image_processor(images=list(images), return_tensors="pt", return_legacy_image_output=False)
        return out["pixel_values"]

    def __call__(self, text, images=None, videos=None, return_tensors: str = "pt") -> dict:
        texts = [text] if isinstance(text, str) else list(text)
        out = {}
        if images is not None:
            out["pixel_values"] = self._pixels(images if isinstance(images, (list, tuple)) else [images])
        if videos is not None:
            out["pixel_values_videos"] = torch.stack([self._pixels(v) for v in _as_videos(videos)])
        per_image = per_frame = None
        if "pixel_values" in out:
            side = out["pixel_values"].shape[-2:]
            per_image = (side[0] // self.patch_size) * (side[1] // self.patch_size)
        if "pixel_values_videos" in out:
            t, _, h, w = out["pixel_values_videos"].shape[1:]
            per_frame = t * ((h // self.patch_size) * (w // self.patch_size) + 1)
        texts = [_expand(t, IMAGE_TOKEN, per_image) for t in texts]
        texts = [_expand(t, VIDEO_TOKEN, per_frame) for t in texts]
        return {**self.tokenizer(texts, padding=True, return_tensors=return_tensors), **out}

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)


def _as_videos(videos) -> list:
    """One video (PIL frames, or an array (T, H, W, 3)) or a list of them -> a list of videos (lists of frames)."""
    if isinstance(videos, np.ndarray) and videos.ndim == 4:
        return [list(videos)]
    if isinstance(videos, (list, tuple)) and videos and isinstance(videos[0], (Image.Image, np.ndarray)) and (
            not isinstance(videos[0], np.ndarray) or videos[0].ndim == 3):
        return [list(videos)]
    return [list(v) for v in videos]


def _expand(text: str, token: str, count: int | None) -> str:
    if token in text and count is None:
        raise ValueError(f"the text holds {token} but no {'images' if token == IMAGE_TOKEN else 'videos'} were given")
    return text if count is None else text.replace(token, token * count)


class FramePipeline(VisualTokenPipeline):
    """The pipeline over a video's frames: one crop per frame, pixel values (T, 3, S, S) per video; each frame's
    tokens are [its [CLS] row at the selected layer, its kept patches (ascending)]."""

    def select(self, features: torch.Tensor, cls_attn: torch.Tensor, **signals: torch.Tensor) -> Selection:
        """The method's selection per frame, with the frame's [CLS] row (N, C) as its prefix (VisionZip already
        has it there)."""
        selection = as_selection(super().select(features, cls_attn, **signals))
        self.cls_slot = selection.prefix is None  # whether this call adds the [CLS] row (read by check_budget)
        if not self.cls_slot:
            return selection
        return replace(selection, prefix=signals["cls_token"].unsqueeze(1))

    def full_frame_tokens(self) -> int:
        """Placeholders one frame has at full budget: its [CLS] row and every patch (257 for 224 px, patch 14)."""
        return self.tower.num_patches + 1

    def check_budget(self, embeds: list[torch.Tensor], crops: list[int]) -> None:
        per_frame = self.pruning.pre_projector_budget + int(self.cls_slot)
        for i, (e, n) in enumerate(zip(embeds, crops)):
            if e.shape[0] != per_frame * n:
                raise RuntimeError(f"video {i}: {e.shape[0]} visual tokens after pruning, expected {per_frame * n} "
                                   f"({per_frame} per frame x {n} frames); method {self.pruning.method!r} is broken")


class VideoLlavaAdapter(LlavaAdapter):
    """VideoLlavaForConditionalGeneration: images through `image_tower` (one crop each, pixel_values (images, 3, S,
    S)), videos through `video_tower` (pixel_values_videos (videos, T, 3, S, S), one crop per frame); one projector."""

    pixel_keys = ("pixel_values", "pixel_values_videos")
    size_keys = ()

    def __init__(self, model: nn.Module, pruning: PruningConfig) -> None:
        self.model = model
        layer = model.config.vision_feature_layer
        projector, embed_tokens = model.model.multi_modal_projector, model.get_input_embeddings()
        self.tower = CLIPVisionTower(model.model.image_tower, select_layer=layer)
        self.video_tower = CLIPVisionTower(model.model.video_tower, select_layer=layer)
        self.pipeline = VisualTokenPipeline(self.tower, projector, embed_tokens, pruning)
        self.video_pipeline = FramePipeline(self.video_tower, projector, embed_tokens, pruning)

    def streams(self, visual: dict) -> list[VisualStream]:
        """The image stream (if pixel_values) and the video stream (if pixel_values_videos), in that order."""
        streams = super().streams(visual) if visual.get("pixel_values") is not None else []
        videos = visual.get("pixel_values_videos")
        if videos is not None:
            frames = [v.shape[0] for v in as_crop_list(videos)]
            tokens = self.video_pipeline(videos)
            full = [n * self.video_pipeline.full_frame_tokens() for n in frames]
            streams.append(VisualStream("video", self.model.config.video_token_id, tokens, full))
        return streams

    def encoder_outputs(self, features: dict[str, list[torch.Tensor]]) -> dict:
        """VideoLlava casts each `pooler_output` as one tensor: the items' kept features in order, (1, n, D)."""
        return {key: BaseModelOutputWithPooling(pooler_output=torch.cat(f).unsqueeze(0))
                for key, f in features.items()}


def video_prompt(question: str) -> str:
    """The prompt of the seed's video QA (FasterVLM `videollava/eval/video/run_inference_video_qa.py`: conv
    "llava_v1", the frames' image tokens, a newline, the question) with transformers' single `<video>` token, which
    its processor expands to every frame's placeholders: "<system> USER: <video>\\n{question} ASSISTANT:"."""
    conv = conv_templates["llava_v1"].copy()
    conv.append_message(conv.roles[0], f"{VIDEO_TOKEN}\n{question}")
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def answer_video(model: nn.Module, processor, question: str, frames: list[Image.Image],
                 **generation) -> tuple[str, int]:
    """One question about one video: frames (T PIL images, the sampled frames, T = 8 for Video-LLaVA) -> (answer
    text, visual tokens the LLM got). `model`: a VideoLlavaForConditionalGeneration (with `apply_pruning`
    installed, or not: then every token), `processor` a `VideoLlavaInputs` (what the loader returns) or
    transformers' VideoLlavaProcessor. `generation` goes to `generate`
    (default greedy, max_new_tokens=1024 as the seed; the seed sampled with temperature 0.1)."""
    if not frames:
        raise ValueError("answer_video needs at least one frame")
    clip = np.stack([np.asarray(f.convert("RGB")) for f in frames])  # (T, H, W, 3): one video for either processor
    inputs = processor(text=video_prompt(question), videos=clip, return_tensors="pt")
    dtype = model.get_input_embeddings().weight.dtype
    inputs = {k: v.to(model.device, dtype) if v.is_floating_point() else v.to(model.device) for k, v in inputs.items()}
    options = {"do_sample": False, "max_new_tokens": 1024, **generation}
    with torch.inference_mode():
        out = model.generate(**inputs, **options)
    text = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()
    handle = model.__dict__.get(HANDLE_ATTRIBUTE)
    if handle is not None and handle.last is not None:
        return text, int(handle.last.v_token_num[0])
    return text, int((inputs["input_ids"] == model.config.video_token_id).sum())
