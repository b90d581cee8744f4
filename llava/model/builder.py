"""`load_pretrained_model`: local LLaVA checkpoints (liuhaotian layouts) with FasterVLM pruning, offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.multimodal_encoder.builder import (
    build_vision_tower,
    clip_vision_state_dict,
    load_tower_weights,
    resolve_vision_tower_path,
)
from llava.model.pruning import PruningConfig
from llava.model.tokenizer import load_tokenizer
from llava.utils import find_weight_files, load_state_dict

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
TOWER_PREFIX = "model.vision_tower.vision_tower."  # where LLaVA-1.6 checkpoints keep their fine-tuned tower


def resolve_local_dir(path_or_name: str | os.PathLike) -> Path:
    """A checkpoint directory: the path itself, or a hub name found in the local HF cache (never downloaded)."""
    p = Path(path_or_name).expanduser()
    if p.is_dir():
        return p
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=str(path_or_name), local_files_only=True))
    except Exception:
        raise FileNotFoundError(
            f"checkpoint {str(path_or_name)!r} is neither a local directory nor in the local Hugging Face cache "
            f"(downloads are not attempted); pass the path of a local copy"
        ) from None


def read_llava_config(model_dir: Path) -> LlavaConfig:
    """The checkpoint's config.json as our LlavaConfig. `model_type: "llava"` clashes with transformers' own
    registered type, so the json is read directly rather than through AutoConfig. A transformers-native llava-hf
    config (text_config + vision_config) is converted (see `llava.model.convert_hf`)."""
    from llava.model.convert_hf import LLAVA_HF, checkpoint_layout, llava_config_from_hf

    raw = _read_config_json(model_dir)
    try:
        layout = checkpoint_layout(raw)
    except ValueError as err:
        raise ValueError(f"{model_dir}/{err}") from None
    if layout == LLAVA_HF:
        return llava_config_from_hf(raw, str(model_dir))
    raw = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "transformers_version")}
    if isinstance(raw.get("image_grid_pinpoints"), str):
        import ast

        raw["image_grid_pinpoints"] = ast.literal_eval(raw["image_grid_pinpoints"])
    return LlavaConfig(**raw)


def is_llava_hf(model_dir: Path) -> bool:
    """Whether the directory holds a transformers-native llava-hf checkpoint (config.json with text_config and
    vision_config) rather than a liuhaotian one."""
    from llava.model.convert_hf import LLAVA_HF, checkpoint_layout

    try:
        return checkpoint_layout(_read_config_json(model_dir)) == LLAVA_HF
    except (FileNotFoundError, ValueError):
        return False  # reported with the liuhaotian loader's own messages


def _read_config_json(model_dir: Path) -> dict:
    cfg_file = model_dir / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{model_dir} is not a checkpoint directory: config.json is missing")
    return json.loads(cfg_file.read_text())


def _tokenizer_dir(model_dir: Path, base_dir: Path | None) -> Path:
    for d in (model_dir, base_dir):
        if d is not None and any((d / f).is_file() for f in TOKENIZER_FILES):
            return d
    where = str(model_dir) if base_dir is None else f"{model_dir} or {base_dir}"
    raise FileNotFoundError(f"no tokenizer in {where}: expected one of {list(TOKENIZER_FILES)}")


def _has_full_weights(d: Path) -> bool:
    """Whether the directory holds (or claims to hold, via an index) full model weights; shards that an index
    lists but that are missing are reported by `find_weight_files`."""
    from llava.utils import INDEX_FILES, WEIGHT_FILES

    if any((d / f).is_file() for f in INDEX_FILES + WEIGHT_FILES):
        find_weight_files(d)
        return True
    return False


def _projector_file(d: Path) -> Path | None:
    for name in ("mm_projector.bin", "mm_projector.safetensors"):
        if (d / name).is_file():
            return d / name
    return None


def _weights_kind(model_dir: Path, base_dir: Path | None) -> str:
    """"full" (LLM + projector in model_dir) or "projector" (mm_projector.bin + the LLM of model_base)."""
    if _has_full_weights(model_dir):
        return "full"
    if (model_dir / "adapter_config.json").is_file():
        raise NotImplementedError(f"{model_dir} is a LoRA checkpoint; merge it into its base model first")
    if _projector_file(model_dir) is not None:
        if base_dir is None:
            raise ValueError(f"{model_dir} holds only the projector (mm_projector.bin): pass the base LLM as model_base")
        if not _has_full_weights(base_dir):
            raise FileNotFoundError(f"no model weights in the model_base directory {base_dir}")
        return "projector"
    raise FileNotFoundError(
        f"no model weights in {model_dir}: expected model*.safetensors / pytorch_model*.bin (with an index when "
        f"sharded), or mm_projector.bin together with model_base"
    )


def _pick_dtype(device: str, dtype, torch_dtype) -> torch.dtype:
    chosen = dtype if dtype is not None else torch_dtype
    if chosen == "auto":
        chosen = None
    if isinstance(chosen, str):
        name, chosen = chosen, getattr(torch, chosen, None)
        if not isinstance(chosen, torch.dtype):  # "float17", or an attribute of torch that is no dtype ("nn")
            raise ValueError(f"dtype {name!r} is not a torch dtype; use float16, bfloat16 or float32 (or 'auto')")
    if chosen is not None:
        return chosen
    return torch.float32 if str(device).startswith("cpu") else torch.float16


def _tokens_per_crop(tower_dir: Path) -> int:
    from llava.model.multimodal_encoder.builder import tokens_per_crop

    return tokens_per_crop(tower_dir)


def _from_pretrained_kwargs(device, device_map, dtype, torch_dtype, attn_implementation, use_flash_attn: bool,
                            load_8bit: bool, load_4bit: bool, extra: dict) -> tuple[dict, torch.dtype, str]:
    """(from_pretrained keyword arguments, compute dtype, attention implementation) for the loader's options."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but CUDA is not available; pass device='cpu' (--device cpu)")
    torch_dtype_ = _pick_dtype(device, dtype, torch_dtype)
    attn = attn_implementation or ("flash_attention_2" if use_flash_attn else "sdpa")
    load_kwargs = {"dtype": torch_dtype_, "attn_implementation": attn}
    if str(device) != "cuda":
        load_kwargs["device_map"] = {"": device}
    elif device_map is not None:
        load_kwargs["device_map"] = device_map
    if load_8bit or load_4bit:
        from transformers import BitsAndBytesConfig

        keep_full = ["mm_projector", "lm_head"]  # the projector stays in the compute dtype, as the tower does
        load_kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep_full) if load_8bit else BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_compute_dtype=torch_dtype_, bnb_4bit_use_double_quant=True,
                bnb_4bit_quant_type="nf4", llm_int8_skip_modules=keep_full,
            )
        )
    load_kwargs.update(extra)
    return load_kwargs, torch_dtype_, attn


def load_pretrained_model(
    model_path,
    model_base=None,
    model_name=None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map="auto",
    device: str = "cuda",
    use_flash_attn: bool = False,
    visual_token_num: int | None = None,
    pruning_method: str = "fastervlm",
    anyres_mode: str = "paper",
    llm_layer: int = 2,
    vision_tower_path: str | None = None,
    attn_implementation: str | None = None,
    dtype=None,
    torch_dtype=None,
    **kwargs,
):
    """Load a LLaVA-1.5 / 1.6 checkpoint directory and set up FasterVLM pruning.

    Both layouts load into our `LlavaLlamaForCausalLM`, detected from config.json: liuhaotian (`mm_vision_tower`)
    and transformers-native llava-hf (`text_config` + `vision_config`, model_type "llava" / "llava_next"; converted
    while loading, see `llava.model.convert_hf`).

    Returns `(tokenizer, model, image_processor, context_len)` as LLaVA does.

    visual_token_num: visual tokens kept per crop (None or the crop's token count = no pruning, 576 for
                      CLIP ViT-L/14-336); pruning_method: a name in `llava.model.pruning.METHODS`;
    llm_layer:        in-LLM methods (FastV) only: prune after this many decoder layers (FastV's K, default 2);
    anyres_mode:      LLaVA-1.6 only: "paper" (original FasterVLM behaviour, the default) or "upstream";
    vision_tower_path: local copy of the `mm_vision_tower` model (else $FASTERVLM_VISION_TOWER, the path in the
                      config, or the local HF cache); llava-hf checkpoints carry their tower and take none;
    model_base:       base LLM for a projector-only checkpoint (a directory holding mm_projector.bin);
    dtype / torch_dtype: default float32 on CPU, float16 otherwise.
    `model_name` is accepted for compatibility; the layout is read from the files, not from the name.
    """
    model_dir = resolve_local_dir(model_path)
    if is_llava_hf(model_dir):  # transformers-native layout: the same weights, renamed while loading
        from llava.model.convert_hf import load_llava_hf

        load_kwargs, torch_dtype_, attn = _from_pretrained_kwargs(
            device, device_map, dtype, torch_dtype, attn_implementation, use_flash_attn, load_8bit, load_4bit, kwargs)
        return load_llava_hf(model_dir, model_base=model_base, vision_tower_path=vision_tower_path,
                             visual_token_num=visual_token_num, pruning_method=pruning_method,
                             anyres_mode=anyres_mode, load_kwargs=load_kwargs, dtype=torch_dtype_, attn=attn,
                             llm_layer=llm_layer)
    base_dir = resolve_local_dir(model_base) if model_base else None
    config = read_llava_config(model_dir)
    weights = _weights_kind(model_dir, base_dir)  # fail on a wrong layout before anything heavy is read
    tokenizer_dir = _tokenizer_dir(model_dir, base_dir)
    tower_dir = resolve_vision_tower_path(config.mm_vision_tower, vision_tower_path)
    per_crop = _tokens_per_crop(tower_dir)
    pruning = PruningConfig(  # validated here, before any weights are read
        method=pruning_method,
        visual_token_num=per_crop if visual_token_num is None else visual_token_num,
        tokens_per_crop=per_crop,
        anyres_mode=anyres_mode,
        llm_layer=llm_layer,
    )
    load_kwargs, torch_dtype_, attn = _from_pretrained_kwargs(
        device, device_map, dtype, torch_dtype, attn_implementation, use_flash_attn, load_8bit, load_4bit, kwargs)

    if weights == "full":
        model = LlavaLlamaForCausalLM.from_pretrained(model_dir, config=config, **load_kwargs)
    else:
        model = LlavaLlamaForCausalLM.from_pretrained(base_dir, config=config, **load_kwargs)
        projector_file = _projector_file(model_dir)
        state = load_state_dict(projector_file, prefix="model.mm_projector.")
        model.get_model().mm_projector.load_state_dict(state)
        model.get_model().mm_projector.to(device=model.device, dtype=torch_dtype_)

    tokenizer = load_tokenizer(tokenizer_dir)  # SentencePiece-exact for Llama checkpoints, as the original stack
    _add_image_tokens(model, tokenizer)

    tower = build_vision_tower(config, tower_dir, attn_implementation=attn, dtype=torch_dtype_)
    own = load_state_dict(model_dir, prefix=TOWER_PREFIX) if weights == "full" else {}
    if own:  # LLaVA-1.6 fine-tuned its tower: these weights win over the mm_vision_tower copy
        load_tower_weights(tower.vision_tower, clip_vision_state_dict(own), source=f"{model_dir} ({TOWER_PREFIX}*)")
    tower.to(device=model.device, dtype=torch_dtype_)
    model.attach_vision_tower(tower, pruning)
    model.eval()

    from llava.mm_utils import load_image_processor

    image_processor = load_image_processor(tower_dir)
    context_len = getattr(config, "max_sequence_length", None) or 2048  # LLaVA's rule
    return tokenizer, model, image_processor, context_len


def _add_image_tokens(model, tokenizer) -> None:
    """Checkpoints trained with `<im_patch>` / `<im_start>`/`<im_end>` tokens need them in the tokenizer."""
    from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN

    new = []
    if getattr(model.config, "mm_use_im_patch_token", False):
        new.append(DEFAULT_IMAGE_PATCH_TOKEN)
    if getattr(model.config, "mm_use_im_start_end", False):
        new += [DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
        if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
