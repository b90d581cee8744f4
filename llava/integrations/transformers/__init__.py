"""FasterVLM (or any registered pruning method) on a transformers-native VLM: one loaded instance of a class in
`ADAPTERS` (LLaVA-1.5 / 1.6, Video-LLaVA, LLaVA-OneVision, Qwen2.5-VL, Qwen3-VL), used with its own `AutoProcessor`.
Each family is one adapter module (video_llava.py, onevision.py, qwen2_5_vl.py, qwen3_vl.py, ...) and one line in
`ADAPTERS`; budgets are in the family's own token units (per crop, per frame, per image after Qwen's merger).

    pruning = apply_pruning(model, method="fastervlm", visual_token_num=58)
    out = model.generate(**processor(images=image, text=prompt, return_tensors="pt"), max_new_tokens=64)
    pruning.last_v_token_num, pruning.last_cls_attn   # kept visual tokens and [CLS] attention of that call
    pruning.undo()                                    # the model is as it was

How. transformers' processor expands each `<image>` into one placeholder token per visual token (576 for
LLaVA-1.5), and the model scatters the image features over those placeholders. `apply_pruning` sets two instance
attributes on this one model, `forward` and `generate` (transformers' classes are not touched; `undo` deletes them;
handle.py): when pixel values come in, they run our `VisualTokenPipeline` built by the family's adapter over the
model's own modules (adapters.py: the CLIP tower with its [CLS] attention at `vision_feature_layer`, the registered
selector, the model's projector, LLaVA-1.6's merge with `image_newline`), drop the placeholders of the pruned
tokens from `input_ids` / `attention_mask` (/ `labels`), and hand the kept features to the original method as
`mm_encoder_outputs`, the hook transformers offers for pre-computed image features. In-LLM methods (FastV) keep
every placeholder and install their decoder hooks on this model's language model.

Conventions:
- `generate` returns the caller's unpruned `input_ids` followed by the new tokens, so `out[:, input_len:]` still
  gives the answer; `max_length` counts the pruned prompt (prefer `max_new_tokens`). A direct `forward` call returns
  logits over the pruned sequence.
- `visual_token_num` is per crop, as everywhere in this package (LLaVA-1.6: base crop and each grid crop).
- LLaVA-1.6 runs in the "upstream" anyres mode only: the processor has already chosen each image's crop grid with
  transformers' rule and counted placeholders for `spatial_unpad` + `image_newline`, so that is the layout pruned
  here (at full budget exactly the model's own). The paper's layout (spatial merge, no unpadding, its grid rule)
  needs different pixels: load the checkpoint with `llava.model.builder.load_pretrained_model(dir,
  anyres_mode="paper")`, which reads llava-hf directories.
- `last_v_token_num` / `last_cls_attn` follow `LlavaLlamaForCausalLM.generate`: an int and a (crops, P) tensor for
  batch 1, lists of them per sample for a batch (0 and None, or an empty (0, 0) tensor, without images).
"""

from __future__ import annotations

import torch.nn as nn
from transformers import (
    LlavaForConditionalGeneration,
    LlavaNextForConditionalGeneration,
    LlavaOnevisionForConditionalGeneration,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
    VideoLlavaForConditionalGeneration,
)

from llava.integrations.transformers.adapters import LlavaAdapter, LlavaNextAdapter
from llava.integrations.transformers.handle import HANDLE_ATTRIBUTE, PrunedInputs, PruningHandle
from llava.integrations.transformers.onevision import OnevisionAdapter
from llava.integrations.transformers.qwen2_5_vl import Qwen2_5_VLAdapter
from llava.integrations.transformers.qwen3_vl import Qwen3VLAdapter
from llava.integrations.transformers.video_llava import VideoLlavaAdapter, answer_video, answer_videos, video_prompt
from llava.model.pruning import PruningConfig

# transformers model class -> the adapter that builds our pipeline over its modules; a new family is one line here
ADAPTERS: dict[type, type[LlavaAdapter]] = {
    LlavaForConditionalGeneration: LlavaAdapter,
    LlavaNextForConditionalGeneration: LlavaNextAdapter,
    VideoLlavaForConditionalGeneration: VideoLlavaAdapter,  # images and videos (video_llava.py)
    LlavaOnevisionForConditionalGeneration: OnevisionAdapter,  # images and videos (onevision.py, onevision_video.py)
    Qwen2_5_VLForConditionalGeneration: Qwen2_5_VLAdapter,  # merged tokens, kept 3-D positions (qwen2_5_vl.py)
    Qwen3VLForConditionalGeneration: Qwen3VLAdapter,  # as Qwen2.5-VL, DeepStack levels pruned alike (qwen3_vl.py)
}

__all__ = ["ADAPTERS", "PrunedInputs", "PruningHandle", "answer_video", "answer_videos", "apply_pruning",
           "video_prompt"]


def adapter_class(model: nn.Module) -> type[LlavaAdapter]:
    """The adapter of the model's class (or of its nearest registered base class)."""
    for cls in type(model).__mro__:
        if cls in ADAPTERS:
            return ADAPTERS[cls]
    names = " / ".join(cls.__name__ for cls in ADAPTERS)
    raise TypeError(f"apply_pruning takes a transformers {names} instance, got {type(model).__name__} "
                    f"(llava/integrations/transformers/__init__.py ADAPTERS lists the supported classes)")


def apply_pruning(model: nn.Module, method: str = "fastervlm", visual_token_num: int | None = None, *,
                  anyres_mode: str = "upstream", seed: int = 0, llm_layer: int = 2) -> PruningHandle:
    """Prune the visual tokens of one transformers model instance of a class in `ADAPTERS`; returns the
    `PruningHandle` (also `model.fastervlm`).

    method:           a name in `llava.model.pruning.METHODS`; on a tower without [CLS] (OneVision, Qwen) only the
                      methods that declare `needs_cls = False` (random, uniform, divprune, fastv, attention_received)
    visual_token_num: tokens kept per unit of the family: per crop, per video frame, per image or frame group after
                      Qwen's merger (None: all of them, e.g. to read the [CLS] attention only)
    anyres_mode:      LLaVA-1.6: "upstream" only (see the module docstring); ignored for LLaVA-1.5
    seed, llm_layer:  as in `PruningConfig` (random's seed; FastV's layer K)
    Applying again replaces the previous pruning of this model.
    """
    adapter = adapter_class(model)
    adapter.check_config(model.config, type(model).__name__)
    adapter.check_mode(anyres_mode)
    per_crop = adapter.tokens_per_crop(model.config)
    pruning = PruningConfig(method=method, visual_token_num=per_crop if visual_token_num is None else visual_token_num,
                            tokens_per_crop=per_crop, anyres_mode=anyres_mode, seed=seed, llm_layer=llm_layer)
    previous = model.__dict__.get(HANDLE_ATTRIBUTE)
    if previous is not None:
        previous.undo()
    return PruningHandle(model, adapter(model, pruning))
