"""CLIP vision tower that returns the selected layer's patch features and that layer's [CLS] attention.

The public FasterVLM asked CLIP for every layer's attention maps (`output_attentions=True`), which forces eager
attention and stores 24 x heads x 577 x 577 maps to use one row of one layer. Here the layers run with whatever
attention backend the tower was built with (eager, sdpa, flash_attention_2); at the selected layer the query and
key projections are captured with forward hooks and only the [CLS] query row is scored (`llava.model.attention_rows`);
the layers after the selected one are never run.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn as nn

from llava.model.attention_rows import QKCapture, cls_attention_from_qk, received_attention, split_heads


@dataclass
class TowerOutput:
    features: torch.Tensor  # (N, P, C) patch features of the selected layer
    cls_attn: torch.Tensor  # (N, P) head-mean softmax of the [CLS] query at that layer, patch columns only
    keys: torch.Tensor | None = None  # (N, P, C / heads) head-mean key projections of the patches at that layer
    cls_token: torch.Tensor | None = None  # (N, C) the [CLS] row of the selected layer's output
    received: torch.Tensor | None = None  # (N, P) mean attention each patch receives at that layer (no-[CLS] towers)

    def score_maps(self) -> dict[str, torch.Tensor]:
        """Every per-patch score map (N, P) besides the features and the [CLS] attention (e.g. `received`), float32:
        what a path that resizes or pools the token map must carry along to the selector (LLaVA-OneVision's videos
        and resized grids)."""
        n, p = self.features.shape[:2]
        return {f.name: getattr(self, f.name).float() for f in fields(self)
                if f.name not in ("features", "cls_attn") and isinstance(getattr(self, f.name), torch.Tensor)
                and getattr(self, f.name).shape == (n, p)}


def received_per_crop(q: torch.Tensor, k: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """q, k (N, T, C) projections of one ViT layer -> (N, T) float32: the attention each token receives from every
    token of its own crop (`received_attention`, one segment per crop)."""
    n, t, _ = q.shape
    heads_first = [split_heads(x, num_heads).transpose(0, 1).reshape(num_heads, n * t, -1) for x in (q, k)]
    cu = torch.arange(n + 1) * t  # crop boundaries in the flattened (N * T) sequence
    return received_attention(*heads_first, cu_seqlens=cu, scale=scale).view(n, t)


def head_mean(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(N, T, C) projections -> (N, T, C / num_heads), averaged over the heads (VisionZip's token descriptor)."""
    n, t, c = x.shape
    return x.view(n, t, num_heads, c // num_heads).mean(dim=2)


class ClsAttentionTower(nn.Module):
    """Shared logic for ViTs with a leading [CLS] token; subclasses say where embeddings, layers and q/k live."""

    scores_received = True  # forward(..., received=True) also gives TowerOutput.received (attention_received)
    # "cls_patch" (LLaVA's option to keep the [CLS] row) is not offered: pruning ranks and indexes patch tokens only.
    select_feature_options = ("patch",)

    def __init__(self, vision_tower: nn.Module, select_layer: int = -2, select_feature: str = "patch"):
        super().__init__()
        if select_feature not in self.select_feature_options:
            raise ValueError(
                f"unknown mm_vision_select_feature {select_feature!r}; supported: {self.select_feature_options}"
            )
        self.vision_tower = vision_tower
        self.select_feature = select_feature
        n_layers = len(self.layers())
        # hidden_states[s] is the output of layer s-1 (hidden_states[0] is the embedding output).
        s = select_layer if select_layer >= 0 else n_layers + 1 + select_layer
        if not 1 <= s <= n_layers:
            raise ValueError(
                f"mm_vision_select_layer={select_layer} does not name a transformer layer of a {n_layers}-layer tower"
            )
        self.select_layer = select_layer
        self.attn_layer = s - 1  # the layer whose output is selected, and whose [CLS] attention ranks tokens

    # --- per-architecture hooks -------------------------------------------------------------------------------
    def layers(self) -> nn.ModuleList:
        raise NotImplementedError

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def qk_modules(self, layer: nn.Module) -> tuple[nn.Module, nn.Module, int, float]:
        """(query projection, key projection, number of heads, score scale) of one layer."""
        raise NotImplementedError

    def run_layer(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        out = layer(hidden, None)
        return out[0] if isinstance(out, tuple) else out

    # --- shared ------------------------------------------------------------------------------------------------
    @property
    def config(self):
        return self.vision_tower.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vision_tower.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.vision_tower.parameters()).device

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor, received: bool = False) -> TowerOutput:
        """pixel_values (N, 3, S, S) -> features (N, P, C), cls_attn (N, P), P = (S / patch)^2, plus the patches'
        head-mean keys and the [CLS] row of the same layer (for selectors that need them, e.g. VisionZip), and with
        `received` the attention each patch receives from all 1 + P tokens of its crop (N, P)."""
        hidden = self.embed(pixel_values.to(device=self.device, dtype=self.dtype))  # (N, 1 + P, C)
        layers = self.layers()
        for layer in layers[: self.attn_layer]:
            hidden = self.run_layer(layer, hidden)

        q_mod, k_mod, num_heads, scale = self.qk_modules(layers[self.attn_layer])
        with QKCapture(q_mod, k_mod) as captured:
            hidden = self.run_layer(layers[self.attn_layer], hidden)
        cls_attn = cls_attention_from_qk(captured.q, captured.k, num_heads, scale)[:, 1:]  # (N, P)
        keys = head_mean(captured.k[:, 1:], num_heads)  # (N, P, C / heads)
        scores = received_per_crop(captured.q, captured.k, num_heads, scale)[:, 1:] if received else None
        return TowerOutput(features=hidden[:, 1:], cls_attn=cls_attn, keys=keys, cls_token=hidden[:, 0],
                           received=scores)


class CLIPVisionTower(ClsAttentionTower):
    """Wraps transformers' `CLIPVisionModel` (kept as `.vision_tower`, so the module path matches LLaVA's)."""

    def layers(self) -> nn.ModuleList:
        return self.vision_tower.encoder.layers

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision_tower.pre_layrnorm(self.vision_tower.embeddings(pixel_values))

    def qk_modules(self, layer: nn.Module):
        attn = layer.self_attn
        return attn.q_proj, attn.k_proj, attn.num_heads, attn.scale
