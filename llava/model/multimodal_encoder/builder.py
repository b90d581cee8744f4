"""Find and build the vision tower named by `mm_vision_tower`, offline.

The tower directory's config.json says which tower it is (`model_type`): CLIP (`clip`, `clip_vision_model`) or
DINOv2 (`dinov2`). Both are wrapped to return the selected layer's patch features and its [CLS] attention.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from transformers import CLIPConfig, CLIPVisionConfig, CLIPVisionModel, Dinov2Model

from llava.json_file import read_json_file
from llava.model.multimodal_encoder.clip_encoder import ClsAttentionTower, CLIPVisionTower
from llava.model.multimodal_encoder.dinov2_encoder import Dinov2VisionTower
from llava.utils import load_state_dict

VISION_TOWER_ENV = "FASTERVLM_VISION_TOWER"


def _tower_dir(candidate: str | os.PathLike, source: str) -> Path:
    """`candidate` as a tower directory; FileNotFoundError naming `source` when it has no config.json."""
    path = Path(candidate).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"vision tower directory {path} (from {source}) has no config.json")
    return path


def resolve_vision_tower_path(name: str, override: str | os.PathLike | None = None) -> Path:
    """Local directory of the tower named `name` (the checkpoint's `mm_vision_tower`), never from the network:

    1. `override` (vision_tower_path= / --vision-tower-path): the caller asked for it;
    2. `name` itself when it is a directory with a config.json: the tower the checkpoint was saved with, which an
       environment variable set for some other checkpoint must not replace;
    3. $FASTERVLM_VISION_TOWER, for a hub name or a path that does not exist on this machine;
    4. `name` in the local Hugging Face cache.
    Raises FileNotFoundError naming the path and where it came from, or saying how to point at a copy."""
    if override:
        return _tower_dir(override, "vision_tower_path / --vision-tower-path")
    named = Path(name).expanduser()
    if (named / "config.json").is_file():
        return named
    env = os.environ.get(VISION_TOWER_ENV)
    if env:
        return _tower_dir(env, f"${VISION_TOWER_ENV}")
    if named.is_dir():
        raise FileNotFoundError(f"vision tower directory {named} (mm_vision_tower) has no config.json")
    try:
        return Path(snapshot_download(repo_id=name, local_files_only=True))
    except Exception:  # hub errors have many types; every one means "not in the cache"
        pass
    raise FileNotFoundError(
        f"cannot find the vision tower {name!r} (mm_vision_tower) locally. Point at a local copy with "
        f"load_pretrained_model(..., vision_tower_path=DIR) / --vision-tower-path DIR, or the environment variable "
        f"{VISION_TOWER_ENV}=DIR, or put it in the Hugging Face cache (`hf download {name}` on a machine online)."
    )


CLIP_TYPES = ("clip", "clip_vision_model")
DINOV2_TYPES = ("dinov2",)


def tower_model_type(tower_dir: Path) -> str:
    """`model_type` of the tower directory's config.json, checked against the towers supported here."""
    kind = read_json_file(Path(tower_dir) / "config.json", "the vision tower's config").get("model_type")
    if kind not in CLIP_TYPES + DINOV2_TYPES:
        raise ValueError(f"{tower_dir}: unsupported vision tower model_type {kind!r} "
                         f"(expected one of {list(CLIP_TYPES + DINOV2_TYPES)})")
    return kind


def processor_side(tower_dir: Path) -> int | None:
    """The side of the crops the tower's image processor outputs (crop_size, or size when it does not crop), from
    preprocessor_config.json; None when the directory has no such file."""
    file = Path(tower_dir) / "preprocessor_config.json"
    if not file.is_file():
        return None
    cfg = read_json_file(file, "the vision tower's image processor")
    crop = cfg.get("crop_size") if cfg.get("do_center_crop", True) else None
    size = crop or cfg.get("size") or {}
    side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else size
    if not isinstance(side, int):
        raise ValueError(f"{file}: cannot read the input side from crop_size / size ({crop!r} / {cfg.get('size')!r})")
    return side


def dinov2_input_size(tower_dir: Path) -> int:
    """The side DINOv2 runs at: the crop its image processor outputs (it was trained at 518 px and interpolates
    its position embeddings to whatever it is shown)."""
    side = processor_side(tower_dir)
    if side is None:
        raise FileNotFoundError(f"{tower_dir}: a DINOv2 tower needs preprocessor_config.json (its input size)")
    return side


def tokens_per_crop(tower_dir: Path) -> int:
    """Patch tokens one crop gives: (input side / patch size)^2."""
    if tower_model_type(tower_dir) in DINOV2_TYPES:
        patch = read_json_file(Path(tower_dir) / "config.json").get("patch_size", 14)
        return (dinov2_input_size(tower_dir) // patch) ** 2
    vc = clip_vision_config(tower_dir)
    return (vc.image_size // vc.patch_size) ** 2


def clip_vision_config(tower_dir: Path) -> CLIPVisionConfig:
    """transformers' CLIPVisionConfig of a CLIP (or CLIP vision) tower directory."""
    cfg = read_json_file(Path(tower_dir) / "config.json", "the vision tower's config")
    kind = cfg.get("model_type")
    if kind == "clip":
        return CLIPConfig(**cfg).vision_config
    if kind == "clip_vision_model":
        return CLIPVisionConfig(**cfg)
    raise ValueError(f"{tower_dir}: unsupported vision tower model_type {kind!r} "
                     f"(expected 'clip' or 'clip_vision_model')")


def clip_vision_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map CLIP checkpoint names (`vision_model.*` of a CLIPModel, or bare names) onto transformers 5.x's
    `CLIPVisionModel`, which has no `vision_model.` level. Text-tower and projection weights are dropped."""
    if any(k.startswith("vision_model.") for k in state):
        state = {k[len("vision_model."):]: v for k, v in state.items() if k.startswith("vision_model.")}
    return {k: v for k, v in state.items() if not k.endswith("position_ids")}


def _select(config) -> dict:
    """Which layer and tokens the tower returns, from the checkpoint's `mm_vision_select_*` fields."""
    return dict(select_layer=config.mm_vision_select_layer, select_feature=config.mm_vision_select_feature)


def build_vision_tower(
    config,
    tower_dir: Path,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
) -> ClsAttentionTower:
    """The tower of a local CLIP or DINOv2 directory, wrapped to return features + [CLS] attention."""
    if tower_model_type(tower_dir) in DINOV2_TYPES:
        return _build_dinov2(tower_dir, attn_implementation, dtype, _select(config))
    return build_clip_tower(clip_vision_config(tower_dir), load_state_dict(tower_dir), config, attn_implementation,
                            dtype, source=str(tower_dir))


def build_clip_tower(vision_config: CLIPVisionConfig, state: dict[str, torch.Tensor], config,
                     attn_implementation: str, dtype: torch.dtype, source: str) -> CLIPVisionTower:
    """Our `CLIPVisionTower` around a `CLIPVisionModel` of `vision_config` holding `state` (CLIP checkpoint names,
    see `clip_vision_state_dict`; `source` names where it was read), cast to `dtype`, selecting as `config` says."""
    model = CLIPVisionModel._from_config(vision_config, attn_implementation=attn_implementation)
    load_tower_weights(model, clip_vision_state_dict(state), source=source)
    model.to(dtype).eval().requires_grad_(False)
    return CLIPVisionTower(model, **_select(config))


def _build_dinov2(tower_dir: Path, attn_implementation: str, dtype: torch.dtype, select: dict) -> Dinov2VisionTower:
    """transformers' `Dinov2Model` from a local directory (hub or current weight names both load)."""
    model, info = Dinov2Model.from_pretrained(str(tower_dir), attn_implementation=attn_implementation, dtype=dtype,
                                              output_loading_info=True)
    missing = [k for k in info["missing_keys"] if "mask_token" not in k]  # mask_token: pretraining only
    if missing or info["unexpected_keys"] or info["mismatched_keys"]:
        raise ValueError(f"vision tower weights in {tower_dir} do not match its config: missing {sorted(missing)[:5]}, "
                         f"unexpected {sorted(info['unexpected_keys'])[:5]}, "
                         f"mismatched {sorted(info['mismatched_keys'])[:5]}")
    model.eval().requires_grad_(False)
    return Dinov2VisionTower(model, input_size=dinov2_input_size(tower_dir), **select)


def load_tower_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with an error that names the source and the mismatching keys. `post_layernorm` may be absent
    (some llava-hf saves drop it): it only feeds CLIP's pooled output, and LLaVA reads a hidden layer."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids") and not k.startswith("post_layernorm.")]
    if missing or unexpected:
        raise ValueError(
            f"vision tower weights from {source} do not match the tower config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )


@dataclass(frozen=True)
class TowerGeometry:
    """What decides the visual tokens: input side (px), patch size (px) and width. `source` names where it was read."""

    side: int
    patch: int
    hidden: int | None
    source: str

    @property
    def tokens(self) -> int:
        return (self.side // self.patch) ** 2

    def describe(self) -> str:
        width = f", hidden size {self.hidden}" if self.hidden is not None else ""
        return f"{self.side} px, patch {self.patch} ({self.tokens} tokens per crop{width})"


def tower_geometry(tower_dir: Path) -> TowerGeometry:
    """The tower directory's input side, patch size and hidden size, from its config.json (and, for DINOv2, the
    processor's crop, which is the side it is run at)."""
    tower_dir = Path(tower_dir)
    source = str(tower_dir / "config.json")
    if tower_model_type(tower_dir) in DINOV2_TYPES:
        cfg = read_json_file(tower_dir / "config.json")
        return TowerGeometry(dinov2_input_size(tower_dir), cfg.get("patch_size", 14), cfg.get("hidden_size"), source)
    vc = clip_vision_config(tower_dir)
    return TowerGeometry(vc.image_size, vc.patch_size, vc.hidden_size, source)


# openai/clip-vit-large-patch14-336 -> patch 14 at 336 px; openai/clip-vit-large-patch14 -> 224 px (OpenAI's names)
_OPENAI_CLIP_NAME = re.compile(r"clip-vit-[a-z]+-patch(\d+)(?:-(\d+))?$")


def geometry_from_name(name: str, source: str) -> TowerGeometry | None:
    """The geometry an OpenAI CLIP hub name promises (the only towers LLaVA-1.5/1.6 were trained with), else None."""
    match = _OPENAI_CLIP_NAME.search(str(name).rstrip("/"))
    if match is None:
        return None
    return TowerGeometry(int(match.group(2) or 224), int(match.group(1)), None, f"{source} (mm_vision_tower {name!r})")


def check_tower_fits(config, tower_dir: Path, config_file: Path, expected: TowerGeometry | None = None) -> None:
    """Refuse a tower that does not fit the checkpoint, saying what differs and naming both files, instead of a
    silently different token count or a matrix-shape error later:
    - its hidden size must be the projector's input (`mm_hidden_size` of the checkpoint's config.json);
    - its side and patch must give the token count the checkpoint expects: `expected` (read from the checkpoint's
      own fine-tuned tower weights, LLaVA-1.6) or the OpenAI CLIP name in `mm_vision_tower`;
    - its image processor must output crops of the side the tower runs at (CLIP only: DINOv2 interpolates);
    - anyres pinpoints must be whole multiples of that side (LLaVA cuts each canvas into side x side crops)."""
    tower_dir = Path(tower_dir)
    have = tower_geometry(tower_dir)
    mm_hidden = config.mm_hidden_size
    if mm_hidden is not None and have.hidden is not None and mm_hidden != have.hidden:
        raise ValueError(f"the vision tower {have.source} has hidden size {have.hidden}, but the checkpoint's "
                         f"projector takes mm_hidden_size={mm_hidden} ({config_file}): not the tower this checkpoint "
                         f"was trained with")
    expected = expected or geometry_from_name(config.mm_vision_tower or "", str(config_file))
    if expected is not None and (expected.side, expected.patch) != (have.side, have.patch):
        raise ValueError(f"the vision tower {have.source} is {have.describe()}, but the checkpoint expects "
                         f"{expected.describe()} from {expected.source}: not the tower this checkpoint was trained "
                         f"with")
    side = processor_side(tower_dir)
    if tower_model_type(tower_dir) in CLIP_TYPES and side is not None and side != have.side:
        raise ValueError(f"{tower_dir / 'preprocessor_config.json'} makes {side} px crops, but the tower "
                         f"{have.source} takes {have.side} px images (image_size)")
    if config.is_anyres:
        for pair in config.image_grid_pinpoints:
            if any(v % have.side for v in pair):
                raise ValueError(f"{config_file}: image_grid_pinpoints {list(pair)} is not a multiple of the vision "
                                 f"tower's {have.side} px input ({have.source}); each canvas is cut into "
                                 f"{have.side} x {have.side} crops")


def geometry_from_weights(position_shape, patch_shape, source: str) -> TowerGeometry:
    """The geometry a CLIP tower's own weights imply: position embeddings (tokens + 1 [CLS], hidden) and the patch
    convolution (hidden, 3, patch, patch)."""
    patch = int(patch_shape[-1])
    per_side = math.isqrt(int(position_shape[0]) - 1)
    return TowerGeometry(per_side * patch, patch, int(position_shape[-1]), source)
