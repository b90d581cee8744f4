"""Find and build the vision tower named by `mm_vision_tower`, offline.

The tower directory's config.json says which tower it is (`model_type`): CLIP (`clip`, `clip_vision_model`) or
DINOv2 (`dinov2`). Both are wrapped to return the selected layer's patch features and its [CLS] attention.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from llava.model.multimodal_encoder.clip_encoder import ClsAttentionTower, CLIPVisionTower
from llava.model.multimodal_encoder.dinov2_encoder import Dinov2VisionTower
from llava.utils import load_state_dict

VISION_TOWER_ENV = "FASTERVLM_VISION_TOWER"


def resolve_vision_tower_path(name: str, override: str | os.PathLike | None = None) -> Path:
    """Local directory of the tower: `override`, then $FASTERVLM_VISION_TOWER, then `name` as a path, then the
    local Hugging Face cache (never the network). Raises FileNotFoundError saying how to point at a copy."""
    for candidate in (override, os.environ.get(VISION_TOWER_ENV)):
        if candidate:
            path = Path(candidate).expanduser()
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"vision tower directory {path} has no config.json")
            return path
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=name, local_files_only=True))
    except Exception:
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
    kind = json.loads((Path(tower_dir) / "config.json").read_text()).get("model_type")
    if kind not in CLIP_TYPES + DINOV2_TYPES:
        raise ValueError(f"{tower_dir}: unsupported vision tower model_type {kind!r} "
                         f"(expected one of {list(CLIP_TYPES + DINOV2_TYPES)})")
    return kind


def dinov2_input_size(tower_dir: Path) -> int:
    """The side DINOv2 runs at: the crop its image processor outputs (it was trained at 518 px and interpolates
    its position embeddings to whatever it is shown)."""
    file = Path(tower_dir) / "preprocessor_config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{tower_dir}: a DINOv2 tower needs preprocessor_config.json (its input size)")
    cfg = json.loads(file.read_text())
    crop = cfg.get("crop_size") if cfg.get("do_center_crop", True) else None
    size = crop or cfg.get("size") or {}
    side = size.get("height") or size.get("shortest_edge") if isinstance(size, dict) else size
    if not isinstance(side, int):
        raise ValueError(f"{file}: cannot read the input side from crop_size / size ({crop!r} / {cfg.get('size')!r})")
    return side


def tokens_per_crop(tower_dir: Path) -> int:
    """Patch tokens one crop gives: (input side / patch size)^2."""
    if tower_model_type(tower_dir) in DINOV2_TYPES:
        patch = json.loads((Path(tower_dir) / "config.json").read_text()).get("patch_size", 14)
        return (dinov2_input_size(tower_dir) // patch) ** 2
    vc = _clip_vision_config(tower_dir)
    return (vc.image_size // vc.patch_size) ** 2


def _clip_vision_config(tower_dir: Path):
    from transformers import CLIPConfig, CLIPVisionConfig

    cfg = json.loads((tower_dir / "config.json").read_text())
    kind = cfg.get("model_type")
    if kind == "clip":
        return CLIPConfig(**cfg).vision_config
    if kind == "clip_vision_model":
        return CLIPVisionConfig(**cfg)
    raise ValueError(f"{tower_dir}: unsupported vision tower model_type {kind!r} (expected 'clip' or 'clip_vision_model')")


def clip_vision_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map CLIP checkpoint names (`vision_model.*` of a CLIPModel, or bare names) onto transformers 5.x's
    `CLIPVisionModel`, which has no `vision_model.` level. Text-tower and projection weights are dropped."""
    if any(k.startswith("vision_model.") for k in state):
        state = {k[len("vision_model."):]: v for k, v in state.items() if k.startswith("vision_model.")}
    return {k: v for k, v in state.items() if not k.endswith("position_ids")}


def build_vision_tower(
    config,
    tower_dir: Path,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
) -> ClsAttentionTower:
    """The tower of a local CLIP or DINOv2 directory, wrapped to return features + [CLS] attention."""
    select = dict(select_layer=getattr(config, "mm_vision_select_layer", -2),
                  select_feature=getattr(config, "mm_vision_select_feature", "patch"))
    if tower_model_type(tower_dir) in DINOV2_TYPES:
        return _build_dinov2(tower_dir, attn_implementation, dtype, select)
    from transformers import CLIPVisionModel

    vision_config = _clip_vision_config(tower_dir)
    model = CLIPVisionModel._from_config(vision_config, attn_implementation=attn_implementation)
    load_tower_weights(model, clip_vision_state_dict(load_state_dict(tower_dir)), source=str(tower_dir))
    model.to(dtype).eval().requires_grad_(False)
    return CLIPVisionTower(model, **select)


def _build_dinov2(tower_dir: Path, attn_implementation: str, dtype: torch.dtype, select: dict) -> Dinov2VisionTower:
    """transformers' `Dinov2Model` from a local directory (hub or current weight names both load)."""
    from transformers import Dinov2Model

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
    """Strict load with an error that names the source and the mismatching keys."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(
            f"vision tower weights from {source} do not match the tower config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
