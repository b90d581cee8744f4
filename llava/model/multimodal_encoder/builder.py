"""Find and build the vision tower named by `mm_vision_tower`, offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
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
) -> CLIPVisionTower:
    """The tower from a local CLIP directory, wrapped to return features + [CLS] attention."""
    from transformers import CLIPVisionModel

    vision_config = _clip_vision_config(tower_dir)
    model = CLIPVisionModel._from_config(vision_config, attn_implementation=attn_implementation)
    load_tower_weights(model, clip_vision_state_dict(load_state_dict(tower_dir)), source=str(tower_dir))
    model.to(dtype).eval().requires_grad_(False)
    return CLIPVisionTower(
        model,
        select_layer=getattr(config, "mm_vision_select_layer", -2),
        select_feature=getattr(config, "mm_vision_select_feature", "patch"),
    )


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
