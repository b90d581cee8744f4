"""The efficiency benchmark on video: transformers' `VideoLlavaForConditionalGeneration` in Video-LLaVA-7B's shape
(or a small / tiny one with the same token counts) with random weights, pruned per frame with
`llava.integrations.transformers.apply_pruning` (the path users run, llava/integrations/transformers/video_llava.py)
and fed one synthetic video of 8 frames through the installed handle. `VideoSubject` is what `benchmark` runs.

Token arithmetic (transformers' `VideoLlavaConfig` defaults, `modeling_video_llava.py`): a frame is 224 px with
14 px patches, 16 x 16 = 256 patches, and transformers feeds every frame's [CLS] row too, so the unpruned video is
8 x 257 = 2,056 placeholders (`video_seq_length`). At `visual_token_num` K per frame the LLM gets 8 x (K + 1)
tokens (each frame's [CLS] row + its K kept patches), VisionZip 8 x K (its budget counts the [CLS] row) and FastV
8 x K after its layer K (the 2,056 before). 64 per frame = 75 % fewer patches, 26 = 90 %.

The unpruned row is transformers' own model with no handle installed (its tower runs every layer, as shipped);
`fastervlm` at 256 is our path at full budget (the same LLM input, ranked by the [CLS] row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CLIPVisionConfig, LlamaConfig, VideoLlavaConfig, VideoLlavaForConditionalGeneration

from llava.bench.measure import BASELINE, Case, Clock, Sample, cache_bytes, greedy_decode, time_tower
from llava.bench.synthetic import PROMPT_AFTER, PROMPT_BEFORE, SELECT_LAYER, SyntheticShape
from llava.integrations.transformers import apply_pruning
from llava.integrations.transformers.handle import HANDLE_ATTRIBUTE
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

FRAMES = 8  # Video-LLaVA samples 8 frames per video
VOCAB_PAD = 64  # Video-LLaVA-7B-hf: 32,000 tokenizer rows + <image>, <video> and padding = 32,064 embedding rows
DEFAULT_BUDGETS = "256,64,26"  # per frame: all patches, 75 % and 90 % fewer

# `vocab` is the tokenizer's size before <image> (= vocab) and <video> (= vocab + 1); towers are CLIP at 224 px.
VIDEO_SHAPES = {
    # Video-LLaVA-7B-hf: CLIP ViT-L/14-224 towers (LanguageBind's shape) + Vicuna-7B (LLaVA-1.5-7B's LLM)
    "video-7b": SyntheticShape(1024, 24, 16, 4096, hidden=4096, layers=32, heads=32, kv_heads=32, mlp=11008,
                               image_size=224),
    # CPU: the image benchmark's `small` (7B's depth and MLP ratio at width 512, a ViT-S-wide tower) at 224 px
    "video-small": SyntheticShape(384, 12, 6, 1536, hidden=512, layers=32, heads=8, kv_heads=8, mlp=1376,
                                  image_size=224),
    # tests: the same token counts, a few thousand parameters per layer
    "video-tiny": SyntheticShape(32, 2, 2, 64, hidden=64, layers=4, heads=4, kv_heads=2, mlp=128, vocab=1000,
                                 image_size=224),
}


def video_llava_config(s: SyntheticShape) -> VideoLlavaConfig:
    """A `VideoLlavaConfig` of shape `s`: two CLIP towers (image, video), a Llama decoder, the -hf token ids."""
    vision = CLIPVisionConfig(hidden_size=s.vision_hidden, intermediate_size=s.vision_mlp,
                              num_hidden_layers=s.vision_layers, num_attention_heads=s.vision_heads,
                              image_size=s.image_size, patch_size=s.patch_size)
    text = LlamaConfig(hidden_size=s.hidden, intermediate_size=s.mlp, num_hidden_layers=s.layers,
                       num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, vocab_size=s.vocab + VOCAB_PAD,
                       max_position_embeddings=4096, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2,
                       pad_token_id=0, tie_word_embeddings=False)
    patches = (s.image_size // s.patch_size) ** 2
    return VideoLlavaConfig(vision_config=vision, text_config=text, image_token_index=s.vocab,
                            video_token_index=s.vocab + 1, vision_feature_layer=SELECT_LAYER,
                            vision_feature_select_strategy="default", image_seq_length=patches,
                            video_seq_length=FRAMES * (patches + 1))


def build_video_model(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      attn_implementation: str = "sdpa", seed: int = 0) -> VideoLlavaForConditionalGeneration:
    """transformers' Video-LLaVA of shape `VIDEO_SHAPES[name]`, random weights created on `device` in `dtype`."""
    if name not in VIDEO_SHAPES:
        raise ValueError(f"unknown synthetic video shape {name!r}; choose one of {sorted(VIDEO_SHAPES)} "
                         f"(llava/bench/video.py)")
    torch.manual_seed(seed)
    with torch.device(device):
        model = VideoLlavaForConditionalGeneration._from_config(
            video_llava_config(VIDEO_SHAPES[name]), attn_implementation=attn_implementation, dtype=dtype)
    return model.eval().requires_grad_(False)


@dataclass
class VideoInputs:
    ids: torch.Tensor  # (1, L): the prompt with the processor's T x (P + 1) <video> placeholders
    mask: torch.Tensor  # (1, L) ones
    pixels: torch.Tensor  # (1, T, 3, S, S) pixel_values_videos


def video_inputs(model, device, dtype) -> VideoInputs:
    """A LLaVA-1.5-long prompt of random text ids (as the image benchmark's: 35 before, 29 after) around one video's
    placeholders, written as transformers' processor writes them, and random frames (1, 8, 3, S, S)."""
    config = model.config
    gen = torch.Generator().manual_seed(0)
    text_vocab = min(config.image_token_id, config.video_token_id)
    before = torch.randint(3, text_vocab, (PROMPT_BEFORE - 1,), generator=gen)
    after = torch.randint(3, text_vocab, (PROMPT_AFTER,), generator=gen)
    placeholders = torch.full((config.video_seq_length,), config.video_token_id)
    ids = torch.cat([torch.tensor([1]), before, placeholders, after])[None].to(device)
    size = config.vision_config.image_size
    pixels = torch.randn(1, FRAMES, 3, size, size, generator=gen).to(device=device, dtype=dtype)
    return VideoInputs(ids, torch.ones_like(ids), pixels)


@torch.inference_mode()
def run_handled_once(model, call: dict, placeholder_id: int, new_tokens: int, clock: Clock) -> Sample:
    """One call of a transformers model as users make it (an installed `apply_pruning` handle prunes inside
    `forward`), then `new_tokens - 1` greedy decode steps with the cache. `call`: the model's keywords (input_ids,
    attention_mask, pixels, ...). `prepare_ms` ends where the decoder starts (a pre-hook on the language model marks
    it): tower + selection + projector / merger + dropped placeholders + embedding splice; `prefill_ms` is the decoder,
    the LM head on the last position and the argmax."""
    marks = []
    hook = model.model.language_model.register_forward_pre_hook(lambda *_: marks.append(clock.mark()))
    t0 = clock.mark()
    try:
        out = model(**call, use_cache=True, logits_to_keep=1)
    finally:
        hook.remove()
    token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
    t2 = clock.mark()
    cache = greedy_decode(model, out, token, new_tokens - 1)
    t3 = clock.mark()
    ids = call["input_ids"]
    placeholders = int((ids == placeholder_id).sum())
    handle = model.__dict__.get(HANDLE_ATTRIBUTE)
    kept = int(handle.last.v_token_num[0]) if handle is not None else placeholders
    prompt_len = handle.last.input_ids.shape[1] if handle is not None else ids.shape[1]
    return Sample(clock.ms(t0, marks[0]), clock.ms(marks[0], t2), clock.ms(t2, t3), kept, prompt_len,
                  ids.shape[1] - placeholders, cache_bytes(cache))


def run_video_once(model, inputs: VideoInputs, new_tokens: int, clock: Clock) -> Sample:
    """One Video-LLaVA call on the video, then greedy decode steps (`run_handled_once`)."""
    call = dict(input_ids=inputs.ids, attention_mask=inputs.mask, pixel_values_videos=inputs.pixels)
    return run_handled_once(model, call, model.config.video_token_id, new_tokens, clock)


class HandleSubject:
    """A transformers model pruned through `apply_pruning`: `set_case` installs the case's pruning (none for the
    unpruned case), `reset` removes it. Subclasses set `model`."""

    model = None

    def set_case(self, case: Case, fastv_layer: int) -> None:
        if case.method == BASELINE:
            self.reset()
        else:
            apply_pruning(self.model, case.method, case.budget, llm_layer=fastv_layer)

    def reset(self) -> None:
        """The model as built: no pruning installed."""
        handle = self.model.__dict__.get(HANDLE_ATTRIBUTE)
        if handle is not None:
            handle.undo()


class VideoSubject(HandleSubject):
    """Video-LLaVA on one video, as `benchmark` runs it: `set_case` installs the case's pruning with
    `apply_pruning` (or none: the unpruned model), `run` is one end-to-end call, `time_tower` the video tower with
    and without the [CLS] row of our pruning path."""

    default_budgets = DEFAULT_BUDGETS
    crop_name = "frame"

    def __init__(self, model, inputs: VideoInputs) -> None:
        self.model, self.inputs = model, inputs
        self.tower = CLIPVisionTower(model.model.video_tower, select_layer=model.config.vision_feature_layer)
        self.llm_config = model.config.text_config
        self.per_crop = self.tower.num_patches
        self.device = model.device

    def run(self, new_tokens: int, clock: Clock) -> Sample:
        return run_video_once(self.model, self.inputs, new_tokens, clock)

    def time_tower(self, clock: Clock, plain_first: bool) -> tuple[float, float]:
        return time_tower(self.tower, self.inputs.pixels, clock, plain_first)
