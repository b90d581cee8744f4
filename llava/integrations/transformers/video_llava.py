"""Video-LLaVA (transformers' `VideoLlavaForConditionalGeneration`, the `LanguageBind/Video-LLaVA-7B-hf` layout):
the adapter that `apply_pruning` uses for it, `VideoLlavaInputs` (its processor without torchvision), and
`answer_videos` (a left-padded batch of questions, one video each) with `answer_video`, its batch of one.

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

    def __call__(self, text, images=None, videos=None, return_tensors: str = "pt",
                 padding_side: str | None = None) -> dict:
        texts = [text] if isinstance(text, str) else list(text)
        out = {}
        if images is not None:
            out["pixel_values"] = self._pixels(images if isinstance(images, (list, tuple)) else [images])
        if videos is not None:
            out["pixel_values_videos"] = _stack_videos([self._pixels(v) for v in _as_videos(videos)])
        per_image = None
        if "pixel_values" in out:
            side = out["pixel_values"].shape[-2:]
            per_image = (side[0] // self.patch_size) * (side[1] // self.patch_size)
        texts = [_expand(t, IMAGE_TOKEN, per_image) for t in texts]
        texts = self._expand_videos(texts, out.get("pixel_values_videos"))
        return {**self.tokenizer(texts, padding=True, padding_side=padding_side, return_tensors=return_tensors),
                **out}

    def _expand_videos(self, texts: list[str], videos) -> list[str]:
        """Each `<video>` -> T x (P + 1) placeholders of its own video (videos in text order; T may differ)."""
        if videos is None:
            return [_expand(t, VIDEO_TOKEN, None) for t in texts]
        counts = [v.shape[0] * ((v.shape[-2] // self.patch_size) * (v.shape[-1] // self.patch_size) + 1)
                  for v in videos]
        if sum(t.count(VIDEO_TOKEN) for t in texts) != len(counts):
            raise ValueError(f"the texts hold {sum(t.count(VIDEO_TOKEN) for t in texts)} {VIDEO_TOKEN} but "
                             f"{len(counts)} video(s) were given: one {VIDEO_TOKEN} per video")
        out, n = [], iter(counts)
        for text in texts:
            pieces = text.split(VIDEO_TOKEN)
            out.append(pieces[0] + "".join(VIDEO_TOKEN * next(n) + p for p in pieces[1:]))
        return out

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


def _stack_videos(videos: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    """Per video pixels (T_i, 3, S, S) -> (videos, T, 3, S, S) when every T_i is the same, else the list (which the
    pruning handle takes; transformers' own VideoLlava needs one T per batch)."""
    return torch.stack(videos) if len({v.shape for v in videos}) == 1 else videos


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
    """One question about one video: `answer_videos` with a batch of one, the prompt `video_prompt(question)`."""
    return answer_videos(model, processor, [video_prompt(question)], [frames], **generation)[0]


def answer_videos(model: nn.Module, processor, prompts: list[str], videos: list[list[Image.Image]],
                  **generation) -> list[tuple[str, int]]:
    """A batch of questions, one video each: prompts (full prompt texts, one `<video>` each, e.g. `video_prompt(q)`)
    and videos (the sampled PIL frames of each, T = 8 for Video-LLaVA) -> per entry (answer text, visual tokens the
    LLM got for it). One left-padded `generate` call with its attention mask; greedy, so each answer equals the
    entry's batch-of-one answer (FastV needs equal drops per entry: videos of one frame count).

    `model`: a VideoLlavaForConditionalGeneration, with `apply_pruning` installed (then its handle's per-sample
    counts) or not (every placeholder); `processor` a `VideoLlavaInputs` (what the loader returns) or transformers'
    VideoLlavaProcessor. `generation` goes to `generate` (default greedy, max_new_tokens=1024 as the seed)."""
    _check_batch(prompts, videos)
    clips = [np.stack([np.asarray(f.convert("RGB")) for f in frames]) for frames in videos]  # (T, H, W, 3) each
    # left padding: every prompt ends where generation starts (right padding would put pads before the answers)
    inputs = _on_model(model, processor(text=list(prompts), videos=clips, padding_side="left", return_tensors="pt"))
    options = {"do_sample": False, "max_new_tokens": 1024, **generation}
    with torch.inference_mode():
        out = model.generate(**inputs, **options)
    if out.shape[0] != len(prompts):
        raise ValueError(f"answer_videos: generate returned {out.shape[0]} sequences for {len(prompts)} prompts "
                         "(one answer per prompt: leave num_return_sequences / num_beams groups out)")
    texts = processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return [(text.strip(), n) for text, n in zip(texts, _kept_counts(model, inputs["input_ids"]))]


def _check_batch(prompts: list[str], videos: list[list[Image.Image]]) -> None:
    if isinstance(prompts, str) or len(prompts) != len(videos) or not prompts:
        raise ValueError(f"answer_videos takes a list of prompts and a list of videos of the same length, got "
                         f"{'a string' if isinstance(prompts, str) else len(prompts)} and {len(videos)}")
    for i, (prompt, frames) in enumerate(zip(prompts, videos)):
        if prompt.count(VIDEO_TOKEN) != 1:
            raise ValueError(f"prompt {i} holds {prompt.count(VIDEO_TOKEN)} {VIDEO_TOKEN}, not 1: build it with "
                             f"video_prompt(question) (llava/integrations/transformers/video_llava.py)")
        if not frames:
            raise ValueError(f"video {i} has no frames")


def _on_model(model: nn.Module, inputs: dict) -> dict:
    """Processor outputs on the model's device, floating tensors (or lists of them) in its dtype."""
    dtype = model.get_input_embeddings().weight.dtype

    def move(v: torch.Tensor) -> torch.Tensor:
        return v.to(model.device, dtype) if v.is_floating_point() else v.to(model.device)

    return {k: [move(t) for t in v] if isinstance(v, list) else move(v) for k, v in inputs.items()}


def _kept_counts(model: nn.Module, input_ids: torch.Tensor) -> list[int]:
    """Visual tokens the LLM got per batch entry: the installed handle's count of the last call, else every
    `<video>` placeholder of the entry's row (input_ids (B, L))."""
    handle = model.__dict__.get(HANDLE_ATTRIBUTE)
    if handle is not None and handle.last is not None:
        counts = [int(n) for n in handle.last.v_token_num]
    else:
        counts = (input_ids == model.config.video_token_id).sum(dim=1).tolist()
    if len(counts) != input_ids.shape[0]:
        raise RuntimeError(f"{len(counts)} visual-token counts for a batch of {input_ids.shape[0]} "
                           "(llava/integrations/transformers/video_llava.py)")
    return counts
