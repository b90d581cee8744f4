"""The projector from vision features to LLM embeddings (`mm_projector_type`)."""

from __future__ import annotations

import re

import torch.nn as nn


def build_vision_projector(config) -> nn.Module:
    """config: a `LlavaConfig` (mm_projector_type, mm_hidden_size, hidden_size).

    `linear`, `identity`, or `mlp{N}x_gelu` (N Linear layers with GELU between; LLaVA-1.5/1.6 use mlp2x_gelu).

    The layout (a Sequential of Linear, GELU, Linear, ...) matches the `model.mm_projector.{0,2}` weight names.
    """
    kind = config.mm_projector_type
    mm_hidden, hidden = config.mm_hidden_size, config.hidden_size
    if kind == "linear":
        return nn.Linear(mm_hidden, hidden)
    if kind == "identity":
        if mm_hidden != hidden:
            raise ValueError(f"identity projector needs mm_hidden_size == hidden_size, got {mm_hidden} and {hidden}")
        return nn.Identity()
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if match:
        depth = int(match.group(1))
        modules: list[nn.Module] = [nn.Linear(mm_hidden, hidden)]
        for _ in range(depth - 1):
            modules += [nn.GELU(), nn.Linear(hidden, hidden)]
        return nn.Sequential(*modules)
    raise ValueError(f"unknown mm_projector_type {kind!r}; supported: linear, identity, mlp<N>x_gelu (e.g. mlp2x_gelu)")
