"""Read a checkpoint directory into a `LoadPlan`: the config, the files holding the LLM, projector, tokenizer and
vision tower, and the weight-name conversion. Both layouts (liuhaotian `mm_vision_tower` checkpoints, transformers-
native llava-hf ones, see `llava.model.convert_hf`) end in the same plan, which `llava.model.builder` loads the same
way. Every check that needs no weights happens here, so a bad checkpoint fails before anything heavy is read; each
message names the file.
"""

from __future__ import annotations

import ast
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import snapshot_download

from llava.json_file import read_json_file
from llava.model.convert_hf import (
    HF_TO_LLAVA_KEYS,
    LLAVA_HF,
    checkpoint_layout,
    hf_config,
    hf_processor_settings,
    llava_config_from_hf,
)
from llava.model.language_model.llava_llama import LlavaConfig, is_pinpoint
from llava.model.multimodal_encoder.builder import (
    check_tower_fits,
    clip_vision_config,
    geometry_from_weights,
    resolve_vision_tower_path,
    tokens_per_crop,
)
from llava.model.native import native_class
from llava.utils import INDEX_FILES, WEIGHT_FILES, find_weight_files, load_state_dict

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")
TOWER_PREFIX = "model.vision_tower.vision_tower."  # where LLaVA-1.6 checkpoints keep their fine-tuned tower
HF_TOWER_PREFIXES = ("model.vision_tower.", "vision_tower.")  # llava-hf: transformers 5.x, older saves
PROJECTOR_FILES = ("mm_projector.bin", "mm_projector.safetensors")


@dataclass(frozen=True)
class TowerPlan:
    """Where the vision tower comes from.

    directory:      the tower directory (liuhaotian `mm_vision_tower`; its image processor, and its weights unless
                    the checkpoint carries its own); None for llava-hf, which carries its tower;
    vision_config:  transformers' CLIPVisionConfig when the weights come from the checkpoint (`weights_dir` under
                    the first of `state_prefixes` that has keys), else None (the directory's own weights);
    tokens_per_crop: patch tokens one crop gives, the upper bound of the pruning budget."""

    directory: Path | None
    vision_config: object | None
    weights_dir: Path | None
    state_prefixes: tuple[str, ...]
    tokens_per_crop: int


@dataclass(frozen=True)
class LoadPlan:
    """What `load_pretrained_model` reads, decided from the files alone.

    weights_dir:    the directory `from_pretrained` reads the LLM (+ projector) from: the checkpoint, or model_base
                    for a projector-only checkpoint (then `projector_file` holds the projector);
    key_mapping:    checkpoint name -> our name regexes (llava-hf), None when the names are already ours;
    processor:      `load_image_processor`'s argument: the tower directory, or the llava-hf processor settings."""

    layout: str
    model_dir: Path
    config: LlavaConfig
    weights_dir: Path
    projector_file: Path | None
    key_mapping: dict | None
    tokenizer_dir: Path
    tower: TowerPlan
    processor: Path | dict


def resolve_local_dir(path_or_name: str | os.PathLike) -> Path:
    """A checkpoint directory: the path itself, or a hub name found in the local HF cache (never downloaded)."""
    p = Path(path_or_name).expanduser()
    if p.is_dir():
        return p
    try:
        return Path(snapshot_download(repo_id=str(path_or_name), local_files_only=True))
    except Exception:  # hub errors have many types; every one means "not here"
        raise FileNotFoundError(
            f"checkpoint {str(path_or_name)!r} is neither a local directory nor in the local Hugging Face cache "
            f"(downloads are not attempted); pass the path of a local copy"
        ) from None


def _read_config_json(model_dir: Path) -> dict:
    cfg_file = model_dir / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{model_dir} is not a checkpoint directory: config.json is missing")
    return read_json_file(cfg_file, "the checkpoint's config")


def _layout(raw: dict, model_dir: Path) -> str:
    try:
        return checkpoint_layout(raw)
    except ValueError as err:
        raise ValueError(f"{model_dir}/{err}") from None


def _llava_config(raw: dict, model_dir: Path, layout: str) -> LlavaConfig:
    cfg_file = model_dir / "config.json"
    if layout == LLAVA_HF:
        if raw.get("model_type") == "llava_next" and "image_grid_pinpoints" in raw:  # absent: transformers' default
            raw = {**raw, "image_grid_pinpoints": check_grid_pinpoints(raw["image_grid_pinpoints"], cfg_file)}
        return llava_config_from_hf(raw, str(model_dir))
    raw = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "transformers_version")}
    if "anyres" in str(raw.get("image_aspect_ratio", "")) or isinstance(raw.get("image_grid_pinpoints"), str):
        # anyres needs valid pinpoints; without anyres a string form is only parsed, as LLaVA does
        raw["image_grid_pinpoints"] = check_grid_pinpoints(raw.get("image_grid_pinpoints"), cfg_file)
    return LlavaConfig(**raw)


def read_llava_config(model_dir: Path) -> LlavaConfig:
    """The checkpoint's config.json as our LlavaConfig. `model_type: "llava"` clashes with transformers' own
    registered type, so the json is read directly rather than through AutoConfig. A transformers-native llava-hf
    config (text_config + vision_config) is converted (see `llava.model.convert_hf`)."""
    raw = _read_config_json(model_dir)
    return _llava_config(raw, model_dir, _layout(raw, model_dir))


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
    if not isinstance(value, (list, tuple)) or not value or not all(is_pinpoint(p) for p in value):
        raise ValueError(f"{cfg_file}: image_grid_pinpoints must be a non-empty list of [width, height] pairs of "
                         f"positive pixel counts, got {value!r}")
    return [list(p) for p in value]


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


def _has_tokenizer(d: Path | None) -> bool:
    return d is not None and any((d / f).is_file() for f in TOKENIZER_FILES)


def _tokenizer_dir(model_dir: Path, base_dir: Path | None) -> Path:
    for d in (model_dir, base_dir):
        if _has_tokenizer(d):
            return d
    where = str(model_dir) if base_dir is None else f"{model_dir} or {base_dir}"
    raise FileNotFoundError(f"no tokenizer in {where}: expected one of {list(TOKENIZER_FILES)}")


def _has_full_weights(d: Path) -> bool:
    """Whether the directory holds (or claims to hold, via an index) full model weights; shards that an index
    lists but that are missing are reported by `find_weight_files`."""
    if any((d / f).is_file() for f in INDEX_FILES + WEIGHT_FILES):
        find_weight_files(d)
        return True
    return False


def _projector_file(d: Path) -> Path | None:
    return next((d / name for name in PROJECTOR_FILES if (d / name).is_file()), None)


def _weights_dir(model_dir: Path, base_dir: Path | None) -> tuple[Path, Path | None]:
    """(directory of the LLM weights, projector file or None): the checkpoint itself when it is complete, else
    model_base's LLM with the checkpoint's mm_projector.bin."""
    if _has_full_weights(model_dir):
        return model_dir, None
    if (model_dir / "adapter_config.json").is_file():
        raise NotImplementedError(f"{model_dir} is a LoRA checkpoint; merge it into its base model first")
    projector = _projector_file(model_dir)
    if projector is None:
        raise FileNotFoundError(
            f"no model weights in {model_dir}: expected model*.safetensors / pytorch_model*.bin (with an index when "
            f"sharded), or mm_projector.bin together with model_base")
    if base_dir is None:
        raise ValueError(f"{model_dir} holds only the projector (mm_projector.bin): pass the base LLM as model_base")
    if not _has_full_weights(base_dir):
        raise FileNotFoundError(f"no model weights in the model_base directory {base_dir}")
    return base_dir, projector


def _liuhaotian_tower(config: LlavaConfig, model_dir: Path, full: bool, override) -> TowerPlan:
    """The `mm_vision_tower` directory, checked against the checkpoint; LLaVA-1.6's fine-tuned tower weights in
    the checkpoint (under TOWER_PREFIX) replace the directory's."""
    tower_dir = resolve_vision_tower_path(config.mm_vision_tower, override)
    embeddings = load_state_dict(model_dir, prefix=TOWER_PREFIX + "vision_model.embeddings.") if full else {}
    pos, patch = embeddings.get("position_embedding.weight"), embeddings.get("patch_embedding.weight")
    own = None if pos is None or patch is None else geometry_from_weights(
        pos.shape, patch.shape, f"{model_dir} ({TOWER_PREFIX}vision_model.embeddings.*)")
    check_tower_fits(config, tower_dir, model_dir / "config.json", expected=own)
    if own is None:
        return TowerPlan(tower_dir, None, None, (), tokens_per_crop(tower_dir))
    return TowerPlan(tower_dir, clip_vision_config(tower_dir), model_dir, (TOWER_PREFIX,), tokens_per_crop(tower_dir))


def _liuhaotian_plan(model_dir: Path, raw: dict, base_dir: Path | None, tower_override) -> LoadPlan:
    config = _llava_config(raw, model_dir, "liuhaotian")
    weights_dir, projector = _weights_dir(model_dir, base_dir)  # a wrong layout fails before anything heavy
    _check_weight_files(find_weight_files(weights_dir) + ([projector] if projector else []))
    tokenizer_dir = _tokenizer_dir(model_dir, base_dir)
    tower = _liuhaotian_tower(config, model_dir, projector is None, tower_override)
    return LoadPlan("liuhaotian", model_dir, config, weights_dir, projector, None, tokenizer_dir, tower,
                    tower.directory)


def _llava_hf_plan(model_dir: Path, raw: dict, model_base, tower_override) -> LoadPlan:
    if model_base is not None:
        raise ValueError(f"{model_dir} is a complete llava-hf checkpoint; model_base is for projector-only "
                         f"liuhaotian checkpoints")
    if tower_override is not None:
        raise ValueError(f"{model_dir} is a llava-hf checkpoint: it carries its own vision tower, so "
                         f"vision_tower_path / --vision-tower-path does not apply")
    config = _llava_config(raw, model_dir, LLAVA_HF)  # its errors name the file (pinpoints, unsupported settings)
    if not _has_tokenizer(model_dir):
        raise FileNotFoundError(
            f"{model_dir} is a llava-hf checkpoint without tokenizer files: expected {' or '.join(TOKENIZER_FILES)} "
            f"next to config.json (copy them from the hub repository the weights came from)")
    _check_weight_files(find_weight_files(model_dir))
    vision = hf_config(raw).vision_config
    tower = TowerPlan(None, vision, model_dir, HF_TOWER_PREFIXES, (vision.image_size // vision.patch_size) ** 2)
    return LoadPlan(LLAVA_HF, model_dir, config, model_dir, None, HF_TO_LLAVA_KEYS, model_dir, tower,
                    hf_processor_settings(model_dir))


def native_checkpoint(model_path) -> tuple[Path, type | None]:
    """(directory, transformers' class) of a checkpoint loaded natively with `apply_pruning` (Video-LLaVA-hf,
    LLaVA-OneVision-hf, every class of `llava.integrations.transformers.ADAPTERS` but LLaVA-1.5 / 1.6: see
    `llava.model.native`), else (directory, None): converted into our model by `plan_load`."""
    model_dir = resolve_local_dir(model_path)
    return model_dir, native_class(model_dir, _read_config_json(model_dir))


def plan_load(model_path, model_base=None, vision_tower_path=None) -> LoadPlan:
    """The `LoadPlan` of a checkpoint directory (or hub name in the local cache), its layout read from config.json."""
    model_dir = resolve_local_dir(model_path)
    raw = _read_config_json(model_dir)
    if _layout(raw, model_dir) == LLAVA_HF:
        return _llava_hf_plan(model_dir, raw, model_base, vision_tower_path)
    base_dir = resolve_local_dir(model_base) if model_base else None
    return _liuhaotian_plan(model_dir, raw, base_dir, vision_tower_path)


def tower_state(tower: TowerPlan) -> dict:
    """The tower weights a checkpoint carries, under the first of `tower.state_prefixes` that has keys."""
    for prefix in tower.state_prefixes:
        state = load_state_dict(tower.weights_dir, prefix=prefix)
        if state:
            return state
    raise ValueError(f"{tower.weights_dir}: no vision tower weights (expected keys under "
                     f"{' or '.join(tower.state_prefixes)})")
