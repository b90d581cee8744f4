"""`load_pretrained_model`: a local LLaVA checkpoint (liuhaotian or llava-hf layout) with FasterVLM pruning, offline.

One flow for both layouts: `llava.model.checkpoint.plan_load` reads the directory into a `LoadPlan`, the pruning
request is resolved against the plan's tower, the loader options (dtype, placement, attention, quantization) are
settled, then the LLM, tokenizer, tower and pruning are built from the plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import BitsAndBytesConfig

from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from llava.mm_utils import load_image_processor
from llava.model.checkpoint import LoadPlan, native_checkpoint, plan_load, tower_state
from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
from llava.model.multimodal_encoder.builder import build_clip_tower, build_vision_tower
from llava.model.native import load_native
from llava.model.pruning import PruningConfig, PruningRequest, resolve_pruning
from llava.model.tokenizer import load_tokenizer
from llava.utils import load_state_dict

# load_pretrained_model's keywords that build a PruningRequest (the request's field each one sets)
PRUNING_KEYWORDS = {"visual_token_num": "visual_token_num", "pruning_method": "method", "anyres_mode": "anyres_mode",
                    "llm_layer": "llm_layer"}


@dataclass(frozen=True)
class LoadOptions:
    """The loader's options settled into one value per concept: `from_pretrained` keyword arguments (placement,
    dtype, attention, quantization, extras), the compute dtype and the attention implementation (for the tower)."""

    from_pretrained: dict
    dtype: torch.dtype
    attn: str


def pruning_request(pruning: PruningConfig | PruningRequest | None, keywords: dict):
    """`pruning=` or the keyword sugar (`visual_token_num=`, `pruning_method=`, `anyres_mode=`, `llm_layer=`; None
    = not given), never both: the request the loader resolves against the tower."""
    given = {name: value for name, value in keywords.items() if value is not None}
    if pruning is not None and given:
        raise ValueError(f"pass the pruning settings either as pruning=... or as the keywords {sorted(given)}, "
                         f"not both")
    if pruning is not None:
        return pruning
    return PruningRequest(**{PRUNING_KEYWORDS[name]: value for name, value in given.items()})


def _one(name: str, value, sugar_name: str, sugar):
    """`value`, or its older spelling `sugar` when only that is given; both given and different: ValueError."""
    if value is not None and sugar is not None and value != sugar:
        raise ValueError(f"{name}={value!r} and {sugar_name}={sugar!r} disagree: pass {name} only")
    return value if value is not None else sugar


def _as_dtype(dtype) -> torch.dtype | None:
    """A torch dtype from a dtype or its name; None / "auto" stay None (the device's default)."""
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, str):
        name, dtype = dtype, getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):  # "float17", or an attribute of torch that is no dtype ("nn")
            raise ValueError(f"dtype {name!r} is not a torch dtype; use float16, bfloat16 or float32 (or 'auto')")
    return dtype


def _default_dtype(device) -> torch.dtype:
    return torch.float32 if str(device).startswith("cpu") else torch.float16


def _device_map(device, device_map):
    """LLaVA's rule: `device` other than "cuda" puts the whole model there (`{"": device}`), else `device_map`."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but CUDA is not available; pass device='cpu' (--device cpu)")
    if str(device) == "cuda":
        return device_map
    if device_map not in ("auto", None, {"": device}):
        raise ValueError(f"device={device!r} places the whole model, device_map={device_map!r} places it otherwise: "
                         f"pass one of them")
    return {"": device}


def _quantization(load_8bit: bool, load_4bit: bool, dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """bitsandbytes settings of LLaVA's load_8bit / load_4bit (the projector stays in the compute dtype)."""
    if not (load_8bit or load_4bit):
        return None
    keep_full = ["mm_projector", "lm_head"]
    if load_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep_full)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True,
                              bnb_4bit_quant_type="nf4", llm_int8_skip_modules=keep_full)


def load_options(*, device="cuda", device_map="auto", dtype=None, torch_dtype=None, attn_implementation=None,
                 use_flash_attn: bool = False, load_8bit: bool = False, load_4bit: bool = False,
                 extra: dict | None = None) -> LoadOptions:
    """One value per concept: `dtype` (older spelling `torch_dtype`), placement (`device` as LLaVA's shorthand for
    `device_map={"": device}`), `attn_implementation` (`use_flash_attn=True` = "flash_attention_2", default sdpa)."""
    dtype = _one("dtype", _as_dtype(dtype), "torch_dtype", _as_dtype(torch_dtype)) or _default_dtype(device)
    attn = _one("attn_implementation", attn_implementation, "use_flash_attn",
                "flash_attention_2" if use_flash_attn else None) or "sdpa"
    kwargs = {"dtype": dtype, "attn_implementation": attn}
    placement = _device_map(device, device_map)
    if placement is not None:
        kwargs["device_map"] = placement
    quantization = _quantization(load_8bit, load_4bit, dtype)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    return LoadOptions({**kwargs, **(extra or {})}, dtype, attn)


def load_pretrained_model(
    model_path,
    model_base=None,
    model_name=None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map="auto",
    device: str = "cuda",
    use_flash_attn: bool = False,
    *,
    pruning: PruningConfig | PruningRequest | None = None,
    vision_tower_path: str | None = None,
    dtype=None,
    attn_implementation: str | None = None,
    visual_token_num: int | None = None,
    pruning_method: str | None = None,
    anyres_mode: str | None = None,
    llm_layer: int | None = None,
    torch_dtype=None,
    **kwargs,
):
    """Load a LLaVA-1.5 / 1.6 checkpoint directory and set up visual-token pruning.

    Both layouts load into our `LlavaLlamaForCausalLM`, detected from config.json: liuhaotian (`mm_vision_tower`)
    and transformers-native llava-hf (`text_config` + `vision_config`, model_type "llava" / "llava_next"; converted
    while loading, see `llava.model.convert_hf`). Returns `(tokenizer, model, image_processor, context_len)` as
    LLaVA does; the first eight parameters are LLaVA's, positional as there.

    pruning:          a `PruningRequest` (e.g. `PruningConfig.from_args(args)`; visual_token_num None = every
                      token) or a `PruningConfig`; resolved against the tower's tokens per crop and validated
                      before any weights are read. Default: no pruning. Sugar for it (not together with pruning=):
                      visual_token_num=, pruning_method=, anyres_mode=, llm_layer= (the `PruningRequest` fields
                      visual_token_num, method, anyres_mode, llm_layer).
    vision_tower_path: local copy of the `mm_vision_tower` model; without it the config's path when it is a tower
                      directory here, else $FASTERVLM_VISION_TOWER, else the local HF cache. The tower is checked
                      against the checkpoint (width vs mm_hidden_size, image size / patch vs the checkpoint's own
                      tower weights or OpenAI CLIP name, pinpoints). llava-hf checkpoints carry their tower;
    model_base:       base LLM for a projector-only checkpoint (a directory holding mm_projector.bin);
    dtype:            default float32 on CPU, float16 otherwise (`torch_dtype=` is accepted as its older name);
    device / device_map: `device` other than "cuda" places the whole model there, else `device_map` does;
    attn_implementation: "sdpa" by default (`use_flash_attn=True` is LLaVA's name for "flash_attention_2");
    kwargs:           passed on to transformers' `from_pretrained`.
    `model_name` is accepted for compatibility; the layout is read from the files, not from the name.
    A transformers-native directory of a class in `llava.integrations.transformers.ADAPTERS` other than LLaVA-1.5 /
    1.6 (Video-LLaVA-hf, LLaVA-OneVision-hf, the Qwen-VL families once registered) gives `(tokenizer, model,
    processor, context_len)`: transformers' own class with `apply_pruning` installed (budget per crop / frame), and
    its processor in the image processor's place (llava/model/native.py; Video-LLaVA: `VideoLlavaInputs`).
    """
    request = pruning_request(pruning, dict(visual_token_num=visual_token_num, pruning_method=pruning_method,
                                            anyres_mode=anyres_mode, llm_layer=llm_layer))
    options = load_options(device=device, device_map=device_map, dtype=dtype, torch_dtype=torch_dtype,
                           attn_implementation=attn_implementation, use_flash_attn=use_flash_attn,
                           load_8bit=load_8bit, load_4bit=load_4bit, extra=kwargs)
    model_dir, native = native_checkpoint(model_path)
    if native is not None:  # transformers' own class with apply_pruning (llava/model/native.py)
        _refuse_for_native(model_dir, model_base, vision_tower_path)
        return load_native(model_dir, native, request, options.from_pretrained)
    plan = plan_load(model_path, model_base, vision_tower_path)
    resolved = resolve_pruning(request, plan.tower.tokens_per_crop)  # validated before any weights are read

    model = load_llm(plan, options)
    tokenizer = load_tokenizer(plan.tokenizer_dir)  # SentencePiece-exact for Llama checkpoints, as the original stack
    _add_image_tokens(model, tokenizer)
    tower = build_tower(plan, options)
    tower.to(device=model.device, dtype=options.dtype)
    model.attach_vision_tower(tower, resolved)
    model.eval()
    context_len = getattr(plan.config, "max_sequence_length", None) or 2048  # LLaVA's rule
    return tokenizer, model, load_image_processor(plan.processor), context_len


def _refuse_for_native(model_dir, model_base, vision_tower_path) -> None:
    """A native checkpoint carries its LLM and tower: model_base / vision_tower_path do not apply."""
    if model_base is not None or vision_tower_path is not None:
        raise ValueError(f"{model_dir} is a complete transformers-native checkpoint (it carries its LLM and vision "
                         f"tower): model_base and vision_tower_path / --vision-tower-path do not apply")


def load_llm(plan: LoadPlan, options: LoadOptions) -> LlavaLlamaForCausalLM:
    """The LLM and projector of the plan (names converted by its key mapping); a weight left unfilled is an error
    naming the directory (it would otherwise stay randomly initialised)."""
    model, info = LlavaLlamaForCausalLM.from_pretrained(plan.weights_dir, config=plan.config,
                                                        key_mapping=plan.key_mapping, output_loading_info=True,
                                                        **options.from_pretrained)
    separate = "model.mm_projector." if plan.projector_file is not None else None  # read below
    missing = [k for k in info["missing_keys"] if "rotary" not in k and not (separate and k.startswith(separate))]
    if missing or info["mismatched_keys"]:
        raise ValueError(f"{plan.weights_dir}: weights the checkpoint does not fill: missing {sorted(missing)[:5]}, "
                         f"mismatched {sorted(info['mismatched_keys'])[:5]}")
    if plan.projector_file is not None:
        projector = model.get_model().mm_projector
        projector.load_state_dict(load_state_dict(plan.projector_file, prefix="model.mm_projector."))
        projector.to(device=model.device, dtype=options.dtype)
    return model


def build_tower(plan: LoadPlan, options: LoadOptions):
    """The plan's vision tower: its directory's weights, or the ones the checkpoint carries (llava-hf, and
    LLaVA-1.6's fine-tuned tower, which wins over the `mm_vision_tower` copy)."""
    tower = plan.tower
    if tower.vision_config is None:
        return build_vision_tower(plan.config, tower.directory, attn_implementation=options.attn, dtype=options.dtype)
    source = f"{tower.weights_dir} ({' or '.join(p + '*' for p in tower.state_prefixes)})"
    return build_clip_tower(tower.vision_config, tower_state(tower), plan.config, options.attn, options.dtype,
                            source)


def _add_image_tokens(model, tokenizer) -> None:
    """Checkpoints trained with `<im_patch>` / `<im_start>`/`<im_end>` tokens need them in the tokenizer."""
    new = []
    if model.config.mm_use_im_patch_token:
        new.append(DEFAULT_IMAGE_PATCH_TOKEN)
    if model.config.mm_use_im_start_end:
        new += [DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
