"""The efficiency benchmark on transformers-native families without a [CLS] token: LLaVA-OneVision
(`LlavaOnevisionForConditionalGeneration`) and Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`), random weights in
the 7B checkpoints' shapes (or small / tiny ones with the same token geometry), on one 1024x1024 image or one
8-frame video, pruned with `llava.integrations.transformers.apply_pruning` (the path users run).
`NativeSubject` is what `llava.bench.measure.benchmark` runs.

Dimensions (every 7B number from the released checkpoints):
- LLaVA-OneVision-7B (llava-hf/llava-onevision-qwen2-7b-ov-hf): SigLIP-so400m 384/14 with 26 layers, width 1152,
  MLP 4304, 16 heads (transformers `LlavaOnevisionConfig` vision defaults, set from that checkpoint, and
  `convert_llava_onevision_weights_to_hf.py`, which drops SigLIP's last layer); the LLM is Qwen2-7B-Instruct's
  config (width 3584, 28 layers, 28 heads, 4 KV heads, MLP 18944) with the vocabulary grown by <image>/<video> and
  padded to a multiple of 64: 152,064 + 2 -> 152,128 rows (same conversion script).
- Qwen2.5-VL-7B (Qwen/Qwen2.5-VL-7B-Instruct config.json): vision depth 32, width 1280, MLP 3420, 16 heads, patch
  14, 2x2 merger to 3584, window 112 px, full attention in blocks 7/15/23/31; LLM width 3584, 28 layers, 28 heads,
  4 KV heads, MLP 18944, 152,064 rows, M-RoPE sections 16/24/24 (transformers `Qwen2_5_VLVisionConfig` defaults
  but for its width, and the module dump of that checkpoint).
- small (CPU): the 7B token geometry (SigLIP 384/14 crops, Qwen 14 px patches merged 2x2) and the LLM's depth and
  query/KV head ratio (28 layers, 7 heads of 64 over 1 KV head, MLP/width as 7B) at width 448; a ViT-S-wide tower.
  The small OneVision image is 384x384 (base crop + a 1x1 grid: 729 + 729 + 27 newlines = 1,485 tokens) and the
  small Qwen image 672x672 (24 x 24 = 576 tokens): 7B's 7,371 / 1,369 would take minutes per run on two cores.
- tiny: a few thousand parameters per layer, the small inputs, for tests.

Token counts (llava.bench.token_budgets has the rules): OneVision, 1024x1024 = base + 3x3 grid of 729-token crops
+ 81 newlines = 7,371, budgets per crop (729); an 8-frame video = 8 x 196 pooled tokens + 1 newline = 1,569,
budgets per frame (196). Qwen2.5-VL, 1024x1024 -> 1036x1036 = 37 x 37 = 1,369 tokens after the merger, budget per
image; 8 frames of 448x448 = 4 frame pairs x 256, budget per frame pair. Default budgets: every token, 75 / 90 / 95 %
fewer. The unpruned row is transformers' model with no handle installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

from llava.bench import token_budgets
from llava.bench.measure import BASELINE, Case, Clock, Sample
from llava.bench.synthetic import PROMPT_AFTER, PROMPT_BEFORE
from llava.bench.video import HandleSubject, run_handled_once
from llava.integrations.transformers import adapter_class

FRAMES = 8
DEFAULT_METHODS = "fastv,divprune,attention_received,random"  # the registered methods that need no [CLS]


@dataclass(frozen=True)
class NativeShape:
    family: str  # "onevision" or "qwen2.5-vl"
    media: str  # "image" or "video"
    vision: tuple[int, int, int, int]  # width, layers, heads, MLP
    llm: tuple[int, int, int, int, int]  # width, layers, heads, KV heads, MLP
    vocab: int
    size: tuple[int, int] = (1024, 1024)  # image or frame (height, width)
    fullatt: tuple[int, ...] = ()  # Qwen2.5-VL: vision blocks with full attention


_OV_7B = dict(vision=(1152, 26, 16, 4304), llm=(3584, 28, 28, 4, 18944), vocab=152128)
_QWEN_7B = dict(vision=(1280, 32, 16, 3420), llm=(3584, 28, 28, 4, 18944), vocab=152064, fullatt=(7, 15, 23, 31))
_SMALL_LLM = (448, 28, 7, 1, 2368)  # 7B's depth, 7 query heads per KV head, MLP / width = 18944 / 3584
_TINY = dict(llm=(64, 4, 4, 2, 128), vocab=1000)  # 4 layers: FastV K = 2 needs layers after K
NATIVE_SHAPES = {
    "onevision-7b": NativeShape("onevision", "image", **_OV_7B),
    "onevision-video-7b": NativeShape("onevision", "video", **_OV_7B, size=(384, 384)),
    "onevision-small": NativeShape("onevision", "image", (384, 12, 6, 1536), _SMALL_LLM, 32000, size=(384, 384)),
    "onevision-video-small": NativeShape("onevision", "video", (384, 12, 6, 1536), _SMALL_LLM, 32000, (384, 384)),
    "onevision-tiny": NativeShape("onevision", "image", (32, 2, 2, 64), **_TINY, size=(384, 384)),
    "onevision-video-tiny": NativeShape("onevision", "video", (32, 2, 2, 64), **_TINY, size=(384, 384)),
    "qwen2.5-vl-7b": NativeShape("qwen2.5-vl", "image", **_QWEN_7B),
    "qwen2.5-vl-video-7b": NativeShape("qwen2.5-vl", "video", **{**_QWEN_7B, "size": (448, 448)}),
    "qwen2.5-vl-small": NativeShape("qwen2.5-vl", "image", (384, 8, 6, 1026), _SMALL_LLM, 32000, (672, 672), (3, 7)),
    "qwen2.5-vl-video-small": NativeShape("qwen2.5-vl", "video", (384, 8, 6, 1026), _SMALL_LLM, 32000, (448, 448),
                                          (3, 7)),
    "qwen2.5-vl-tiny": NativeShape("qwen2.5-vl", "image", (32, 2, 2, 64), **_TINY, size=(672, 672), fullatt=(1,)),
    "qwen2.5-vl-video-tiny": NativeShape("qwen2.5-vl", "video", (32, 2, 2, 64), **_TINY, size=(448, 448),
                                         fullatt=(1,)),
}


QWEN_EOS = 151645  # Qwen2.5-VL's <|im_end|> (its config's eos_token_id; bos 151643)


def _qwen2(s: NativeShape) -> dict:
    """The Qwen2 decoder's config arguments."""
    width, layers, heads, kv_heads, mlp = s.llm
    return dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                intermediate_size=mlp, vocab_size=s.vocab, max_position_embeddings=32768, tie_word_embeddings=False)


def onevision_config(s: NativeShape) -> LlavaOnevisionConfig:
    """SigLIP 384/14 (no head) + Qwen2; <image> / <video> are the last two vocabulary rows; default pinpoints."""
    width, layers, heads, mlp = s.vision
    vision = SiglipVisionConfig(hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                                intermediate_size=mlp, image_size=384, patch_size=14, vision_use_head=False)
    return LlavaOnevisionConfig(vision_config=vision, text_config=Qwen2Config(**_qwen2(s)),
                                image_token_index=s.vocab - 2, video_token_index=s.vocab - 1)


def qwen_config(s: NativeShape) -> Qwen2_5_VLConfig:
    """Qwen2.5-VL: window-attention ViT (patch 14, merge 2, window 112) + Qwen2 with M-RoPE; the vision and
    placeholder ids are the last four vocabulary rows. M-RoPE sections keep 7B's 16/24/24 split of head_dim / 2."""
    width, layers, heads, mlp = s.vision
    half = s.llm[0] // s.llm[2] // 2
    sections = [half // 4, 3 * half // 8, half - half // 4 - 3 * half // 8]
    vision = dict(depth=layers, hidden_size=width, num_heads=heads, intermediate_size=mlp, out_hidden_size=s.llm[0],
                  fullatt_block_indexes=list(s.fullatt), patch_size=14, spatial_merge_size=2, window_size=112)
    text = {**_qwen2(s), "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": sections}}
    if s.vocab <= QWEN_EOS:  # the small shapes' vocabularies have no row for Qwen's own <|endoftext|> / <|im_end|>
        text.update(bos_token_id=None, eos_token_id=None)
    v = s.vocab
    return Qwen2_5_VLConfig(vision_config=vision, text_config=text, vision_start_token_id=v - 4,
                            vision_end_token_id=v - 3, image_token_id=v - 2, video_token_id=v - 1)


def build_native_model(name: str, device="cpu", dtype=torch.float32, attn_implementation="sdpa", seed=0):
    """transformers' model of shape `NATIVE_SHAPES[name]`, random weights created on `device` in `dtype`."""
    if name not in NATIVE_SHAPES:
        raise ValueError(f"unknown synthetic shape {name!r}; choose one of {sorted(NATIVE_SHAPES)} "
                         f"(llava/bench/native.py)")
    s = NATIVE_SHAPES[name]
    cls, config = ((LlavaOnevisionForConditionalGeneration, onevision_config(s)) if s.family == "onevision"
                   else (Qwen2_5_VLForConditionalGeneration, qwen_config(s)))
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls._from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    return model.eval().requires_grad_(False)


@dataclass
class NativeInputs:
    ids: torch.Tensor  # (1, L) with the processor's placeholders
    visual: dict  # the pixel / grid / size arguments of the call
    placeholder_id: int
    per_unit: int  # tokens per budget unit (crop, frame, image, frame pair)
    unit: str
    extra: dict = field(default_factory=dict)  # further call arguments (Qwen: mm_token_type_ids)

    def call_kwargs(self) -> dict:
        return {"input_ids": self.ids, "attention_mask": torch.ones_like(self.ids), **self.visual, **self.extra}


def _prompt(placeholders: torch.Tensor, text_vocab: int, device) -> torch.Tensor:
    """35 random text ids, the placeholders, 29 more (a LLaVA-1.5 VQA prompt's length, as the other shapes)."""
    gen = torch.Generator().manual_seed(0)
    before = torch.randint(3, text_vocab, (PROMPT_BEFORE,), generator=gen)
    after = torch.randint(3, text_vocab, (PROMPT_AFTER,), generator=gen)
    return torch.cat([before, placeholders, after])[None].to(device)


def onevision_inputs(model, s: NativeShape, device, dtype) -> NativeInputs:
    """One image of `s.size` as the processor gives it (base + grid crops, (1, crops, 3, 384, 384)) or one video of
    8 frames (1, 8, 3, 384, 384); placeholder counts from transformers' rule (llava.bench.token_budgets)."""
    config, gen = model.config, torch.Generator().manual_seed(1)
    side = config.vision_config.image_size
    if s.media == "video":
        budget, token = token_budgets.onevision_video(FRAMES), config.video_token_id
        visual = {"pixel_values_videos": torch.randn(1, FRAMES, 3, side, side, generator=gen)}
    else:
        budget, token = token_budgets.onevision_image(*s.size), config.image_token_id
        crops = image_size_to_num_patches(s.size, config.image_grid_pinpoints, side)
        visual = {"pixel_values": torch.randn(1, crops, 3, side, side, generator=gen),
                  "image_sizes": torch.tensor([list(s.size)])}
    visual = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in visual.items()}
    ids = _prompt(torch.full((budget.full,), token), config.text_config.vocab_size - 2, device)
    return NativeInputs(ids, visual, token, budget.per_unit, budget.unit)


def qwen_inputs(model, s: NativeShape, device, dtype) -> NativeInputs:
    """One image (its smart_resize'd 14 px patches, flattened as the processor does: (patches, 3 x 2 x 14 x 14),
    grid (1, h, w)) or 8 frames (4 frame pairs); <|vision_start|> placeholders <|vision_end|>, mm_token_type_ids."""
    config, gen = model.config, torch.Generator().manual_seed(1)
    budget = token_budgets.qwen_video(FRAMES, *s.size) if s.media == "video" else token_budgets.qwen_image(*s.size)
    merged_side = int(round(budget.per_unit ** 0.5))  # square inputs: per unit = side^2 merged tokens
    grid = torch.tensor([[budget.units, 2 * merged_side, 2 * merged_side]])
    pixels = torch.randn(int(grid.prod()), 3 * 2 * 14 * 14, generator=gen).to(device=device, dtype=dtype)
    if s.media == "video":
        token, kind = config.video_token_id, 2
        visual = {"pixel_values_videos": pixels, "video_grid_thw": grid.to(device),
                  "second_per_grid_ts": torch.tensor([1.0], device=device)}
    else:
        token, kind = config.image_token_id, 1
        visual = {"pixel_values": pixels, "image_grid_thw": grid.to(device)}
    span = torch.cat([torch.tensor([config.vision_start_token_id]), torch.full((budget.full,), token),
                      torch.tensor([config.vision_end_token_id])])
    ids = _prompt(span, config.vision_start_token_id, device)
    types = (ids == token).long() * kind
    return NativeInputs(ids, visual, token, budget.per_unit, budget.unit, {"mm_token_type_ids": types})


def run_native_once(model, inputs: NativeInputs, new_tokens: int, clock: Clock) -> Sample:
    """One call of the native model on its image or video, then greedy decode steps (`run_handled_once`)."""
    return run_handled_once(model, inputs.call_kwargs(), inputs.placeholder_id, new_tokens, clock)


class NativeSubject(HandleSubject):
    """A transformers-native model on one image or video, as `benchmark` runs it: `set_case` installs the case's
    pruning with `apply_pruning` (none for the unpruned case), `run` is one end-to-end call, `time_tower` the
    model's own visual encoder (tower + projector / merger; these towers have no [CLS] row to compare against)."""

    default_methods = DEFAULT_METHODS

    def __init__(self, model, inputs: NativeInputs) -> None:
        self.model, self.inputs = model, inputs
        self.llm_config = model.config.text_config
        self.per_crop, self.crop_name = inputs.per_unit, inputs.unit
        self.default_budgets = ",".join(str(n) for n in budget_steps(inputs.per_unit))
        self.device = model.device

    def set_case(self, case: Case, fastv_layer: int) -> None:
        if case.method != BASELINE:
            try:
                adapter_class(self.model)
            except TypeError as err:
                raise SystemExit(f"pruned rows of {type(self.model).__name__} need its adapter in "
                                 f"llava.integrations.transformers.ADAPTERS (llava/bench/native.py): {err}") from err
        super().set_case(case, fastv_layer)

    def run(self, new_tokens: int, clock: Clock) -> Sample:
        return run_native_once(self.model, self.inputs, new_tokens, clock)

    @torch.inference_mode()
    def time_tower(self, clock: Clock, plain_first: bool) -> tuple[float, float]:
        visual = self.inputs.visual
        inner = self.model.model
        start = clock.mark()
        if "pixel_values_videos" in visual:
            inner.get_video_features(**{k: v for k, v in visual.items() if k != "second_per_grid_ts"})
        else:
            inner.get_image_features(**visual)
        return clock.ms(start, clock.mark()), float("nan")


def budget_steps(per_unit: int) -> list[int]:
    """Every token, then 75 / 90 / 95 % fewer (token_budgets' rounding)."""
    b = token_budgets.Budget("", "", "", 1, per_unit, 0)
    return [per_unit] + [b.kept_per_unit(r) for r in token_budgets.REDUCTIONS]


def build_native_subject(name: str, device, dtype, attn_implementation: str = "sdpa") -> NativeSubject:
    model = build_native_model(name, device, dtype, attn_implementation)
    s = NATIVE_SHAPES[name]
    make = onevision_inputs if s.family == "onevision" else qwen_inputs
    return NativeSubject(model, make(model, s, device, dtype))
