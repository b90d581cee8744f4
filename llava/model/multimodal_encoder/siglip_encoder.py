"""A SigLIP vision tower, which has no [CLS] token (`SiglipTower`, over transformers' `SiglipVisionModel`), and the
pipeline for such towers (`NoClsPipeline`). LLaVA-OneVision uses them (llava/integrations/transformers/onevision.py).

The score such a tower gives instead of a [CLS] row is the attention each patch receives (`attention_received`,
llava/model/pruning/received.py), at the feature layer: the last layer run, whose q / k projections are captured
(`QKCapture`) and scored blockwise (`llava.model.attention_rows.received_attention`), only when the method needs it.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from llava.model.attention_rows import QKCapture
from llava.model.multimodal_encoder.clip_encoder import TowerOutput, received_per_crop
from llava.model.pipeline import VisualTokenPipeline


class SiglipTower(nn.Module):
    """transformers' `SiglipVisionModel` (kept as `.vision_tower`) run up to one layer; no [CLS] token.

    `has_cls = False` is how a tower says it has no [CLS] row: `check_tower_supports` refuses the methods that rank
    by [CLS] attention. select_layer as transformers' `hidden_states` index (-1: the last layer's output, before
    the post-layernorm, as `get_image_features` selects it)."""

    has_cls = False
    scores_received = True  # forward(..., received=True) also gives TowerOutput.received

    def __init__(self, vision_tower: nn.Module, select_layer: int = -1) -> None:
        super().__init__()
        self.vision_tower = vision_tower
        n_layers = len(self.layers())
        s = select_layer if select_layer >= 0 else n_layers + 1 + select_layer
        if not 1 <= s <= n_layers:
            raise ValueError(f"vision_feature_layer={select_layer} does not name a transformer layer of a "
                             f"{n_layers}-layer SigLIP tower (llava/integrations/transformers/onevision.py)")
        self.n_run = s  # hidden_states[s] is the output of the first s layers

    def layers(self) -> nn.ModuleList:
        return self.vision_tower.encoder.layers

    @property
    def config(self):
        return self.vision_tower.config

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side ** 2

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor, received: bool = False) -> TowerOutput:
        """pixel_values (N, 3, S, S) -> features (N, P, C) of the selected layer; cls_attn (N, 0): no [CLS]; with
        `received`, the attention each patch receives from all P patches of its crop at that layer (N, P)."""
        weight = next(self.vision_tower.parameters())
        hidden = self.vision_tower.embeddings(pixel_values.to(weight.device, weight.dtype))
        *before, last = self.layers()[: self.n_run]
        for layer in before:
            hidden = self.run_layer(layer, hidden)
        if not received:
            hidden = self.run_layer(last, hidden)
            return TowerOutput(features=hidden, cls_attn=hidden.new_zeros(hidden.shape[0], 0))
        attn = last.self_attn
        with QKCapture(attn.q_proj, attn.k_proj) as captured:
            hidden = self.run_layer(last, hidden)
        scores = received_per_crop(captured.q, captured.k, attn.num_heads, attn.scale)  # (N, P)
        return TowerOutput(features=hidden, cls_attn=hidden.new_zeros(hidden.shape[0], 0), received=scores)

    @staticmethod
    def run_layer(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        out = layer(hidden, None)
        return out[0] if isinstance(out, tuple) else out


class NoClsPipeline(VisualTokenPipeline):
    """The pipeline over a tower without [CLS]. Nothing differs any more: the selectors that run here read the
    features (random's per-image seed: the patch feature norms, `selectors.content_scores`) or the tower's
    `received` scores, and the [CLS] methods are refused when the pruning is applied (`check_tower_supports`).
    Kept as a name for the adapters that import it."""
