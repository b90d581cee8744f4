"""`load_pretrained_model`: local LLaVA checkpoints (liuhaotian layouts) with FasterVLM pruning, offline."""

from __future__ import annotations

import ast
import json
import os
import zipfile
from pathlib import Path

import torch

from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.multimodal_encoder.builder import (
    build_vision_tower,
    check_tower_fits,
    clip_vision_state_dict,
    geometry_from_weights,
    load_tower_weights,
    resolve_vision_tower_path,
)
from llava.model.pruning import PruningConfig
from llava.model.tokenizer import load_tokenizer
from llava.utils import find_weight_files, load_state_dict, read_json_file

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
    cfg_file = model_dir / "config.json"
    if layout == LLAVA_HF:
        if raw.get("model_type") == "llava_next" and "image_grid_pinpoints" in raw:  # absent: transformers' default
            raw = {**raw, "image_grid_pinpoints": check_grid_pinpoints(raw["image_grid_pinpoints"], cfg_file)}
        return llava_config_from_hf(raw, str(model_dir))
    raw = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "transformers_version")}
    if "anyres" in str(raw.get("image_aspect_ratio", "")):
        raw["image_grid_pinpoints"] = check_grid_pinpoints(raw.get("image_grid_pinpoints"), cfg_file)
    elif isinstance(raw.get("image_grid_pinpoints"), str):  # unused without anyres; parsed as LLaVA does
        raw["image_grid_pinpoints"] = check_grid_pinpoints(raw["image_grid_pinpoints"], cfg_file)
    return LlavaConfig(**raw)


def check_grid_pinpoints(value, cfg_file: Path) -> list[list[int]]:
    """`image_grid_pinpoints` of an anyres config as a list of [width, height] canvases (a list, or its string form
    as some configs store it). Missing, unparsable, empty, or anything but pairs of positive ints: ValueError naming
    `cfg_file` (otherwise the first image would fail deep inside the anyres tiling)."""
    if value is None:
        raise ValueError(f"{cfg_file}: image_aspect_ratio is anyres but there are no image_grid_pinpoints (the "
                         f"[width, height] canvases LLaVA-1.6 tiles an image into)")
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise ValueError(f"{cfg_file}: image_grid_pinpoints {value!r} cannot be parsed: expected a list of "
                             f"[width, height] pairs") from None
    def is_pair(p) -> bool:
        return (isinstance(p, (list, tuple)) and len(p) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in p))

    if not isinstance(value, (list, tuple)) or not value or not all(is_pair(p) for p in value):
        raise ValueError(f"{cfg_file}: image_grid_pinpoints must be a non-empty list of [width, height] pairs of "
                         f"positive pixel counts, got {value!r}")
    return [list(p) for p in value]


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
    return read_json_file(cfg_file, "the checkpoint's config")


def check_weight_file(path: Path) -> None:
    """Refuse a weight file cut short (an interrupted download or copy) before any loader reads it, naming it:
    - safetensors: 8-byte header length, JSON header, then the tensors; the header's largest data offset says how
      long the file must be (the format: huggingface/safetensors, README "Format");
    - torch .bin (a zip archive since torch 1.6): the zip's central directory sits at the very end, so a cut file
      cannot be opened as a zip. Pre-1.6 pickle files (no zip magic) are left to torch.
    Only headers are read, not the tensors."""
    size = path.stat().st_size
    cut = f"{path} is truncated or damaged (only {size} bytes"
    again = "fetch this file again"
    if path.suffix == ".safetensors":
        with open(path, "rb") as f:
            head = f.read(8)
            header_len = int.from_bytes(head, "little") if len(head) == 8 else None
            if header_len is None or 8 + header_len > size:
                raise ValueError(f"{cut}, not even its header): {again}")
            try:
                header = json.loads(f.read(header_len))
                end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError):
                raise ValueError(f"{cut}; its safetensors header is unreadable): {again}") from None
        if 8 + header_len + end > size:
            raise ValueError(f"{cut}; its header describes {8 + header_len + end}): {again}")
        return
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"PK\x03\x04":
        try:
            zipfile.ZipFile(path).close()
        except (zipfile.BadZipFile, OSError, EOFError):
            raise ValueError(f"{cut}; the end of its zip archive is missing): {again}") from None


def _check_weight_files(files: list[Path]) -> None:
    for f in files:
        check_weight_file(f)


def _check_hf_tokenizer_files(model_dir: Path) -> None:
    """A llava-hf directory needs its tokenizer next to the weights; say so before the weights are read."""
    if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{model_dir} is a llava-hf checkpoint without tokenizer files: expected {' or '.join(TOKENIZER_FILES)} "
            f"next to config.json (copy them from the hub repository the weights came from)"
        )


def _own_tower_geometry(model_dir: Path):
    """The geometry (side, patch, hidden) of the tower weights a LLaVA-1.6 checkpoint carries, else None."""
    embeddings = load_state_dict(model_dir, prefix=TOWER_PREFIX + "vision_model.embeddings.")
    pos, patch = embeddings.get("position_embedding.weight"), embeddings.get("patch_embedding.weight")
    if pos is None or patch is None:
        return None
    return geometry_from_weights(pos.shape, patch.shape, f"{model_dir} ({TOWER_PREFIX}vision_model.embeddings.*)")


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
            raise ValueError(f"{model_dir} holds only the projector (mm_projector.bin): pass the base LLM as "
                             f"model_base")
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
    vision_tower_path: local copy of the `mm_vision_tower` model; without it the config's path when it is a tower
                      directory here, else $FASTERVLM_VISION_TOWER, else the local HF cache. The tower is checked
                      against the checkpoint (width vs mm_hidden_size, image size / patch vs the checkpoint's own
                      tower weights or OpenAI CLIP name, pinpoints). llava-hf checkpoints carry their tower;
    model_base:       base LLM for a projector-only checkpoint (a directory holding mm_projector.bin);
    dtype / torch_dtype: default float32 on CPU, float16 otherwise.
    `model_name` is accepted for compatibility; the layout is read from the files, not from the name.
    """
    model_dir = resolve_local_dir(model_path)
    if is_llava_hf(model_dir):  # transformers-native layout: the same weights, renamed while loading
        from llava.model.convert_hf import load_llava_hf

        read_llava_config(model_dir)  # its errors name the file (pinpoints, unsupported settings)
        _check_hf_tokenizer_files(model_dir)
        _check_weight_files(find_weight_files(model_dir))

        load_kwargs, torch_dtype_, attn = _from_pretrained_kwargs(
            device, device_map, dtype, torch_dtype, attn_implementation, use_flash_attn, load_8bit, load_4bit, kwargs)
        return load_llava_hf(model_dir, model_base=model_base, vision_tower_path=vision_tower_path,
                             visual_token_num=visual_token_num, pruning_method=pruning_method,
                             anyres_mode=anyres_mode, load_kwargs=load_kwargs, dtype=torch_dtype_, attn=attn,
                             llm_layer=llm_layer)
    base_dir = resolve_local_dir(model_base) if model_base else None
    config = read_llava_config(model_dir)
    weights = _weights_kind(model_dir, base_dir)  # fail on a wrong layout before anything heavy is read
    _check_weight_files(find_weight_files(model_dir) if weights == "full"
                        else find_weight_files(base_dir) + [_projector_file(model_dir)])
    tokenizer_dir = _tokenizer_dir(model_dir, base_dir)
    tower_dir = resolve_vision_tower_path(config.mm_vision_tower, vision_tower_path)
    own_tower = _own_tower_geometry(model_dir) if weights == "full" else None
    check_tower_fits(config, tower_dir, model_dir / "config.json", expected=own_tower)
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
