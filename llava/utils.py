"""Small helpers shared by the loaders: reading checkpoint tensors from the layouts HF directories use."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open

from llava.json_file import read_json_file

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def find_weight_files(directory: str | os.PathLike) -> list[Path]:
    """The weight files of a checkpoint directory: a single file, or the shards listed by an index.

    Raises FileNotFoundError naming the directory and the file names looked for when there are none.
    """
    d = Path(directory)
    for index in INDEX_FILES:
        if (d / index).is_file():
            shards = sorted(set(read_json_file(d / index)["weight_map"].values()))
            missing = [s for s in shards if not (d / s).is_file()]
            if missing:
                raise FileNotFoundError(f"{d}: {index} lists shards that are not there: {missing}")
            return [d / s for s in shards]
    for name in WEIGHT_FILES:
        if (d / name).is_file():
            return [d / name]
    raise FileNotFoundError(
        f"no model weights in {d}: expected one of {list(WEIGHT_FILES)} or a sharded index {list(INDEX_FILES)}"
    )


def _load_file(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors of one file whose names start with `prefix`; others are never materialised."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def load_state_dict(directory_or_file: str | os.PathLike, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensors whose names start with `prefix`, read from a checkpoint file or directory, prefix stripped.

    With a sharded safetensors or .bin index only the shards holding matching keys are opened.
    """
    p = Path(directory_or_file)
    files = [p] if p.is_file() else find_weight_files(p)
    wanted_files = files
    if p.is_dir():
        for index in INDEX_FILES:
            if (p / index).is_file():
                weight_map = read_json_file(p / index)["weight_map"]
                wanted_files = sorted({p / f for k, f in weight_map.items() if k.startswith(prefix)})
                break
    out: dict[str, torch.Tensor] = {}
    for f in wanted_files:
        for k, v in _load_file(f, prefix).items():
            out[k[len(prefix):]] = v
    return out
