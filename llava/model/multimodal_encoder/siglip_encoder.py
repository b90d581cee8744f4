"""A SigLIP vision tower, which has no [CLS] token (`SiglipTower`, over transformers' `SiglipVisionModel`), and the
pipeline for such towers (`NoClsPipeline`). LLaVA-OneVision uses them (llava/integrations/transformers/onevision.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from llava.model.multimodal_encoder.clip_encoder import TowerOutput
from llava.model.pipeline import VisualTokenPipeline
from llava.model.pruning import Selection


class SiglipTower(nn.Module):
    """transformers' `SiglipVisionModel` (kept as `.vision_tower`) run up to one layer; no [CLS] token.

    `has_cls = False` is how a tower says it has no [CLS] row: `check_tower_supports` refuses the methods that rank
    by [CLS] attention. select_layer as transformers' `hidden_states` index (-1: the last layer's output, before
    the post-layernorm, as `get_image_features` selects it)."""

    has_cls = False

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
    def forward(self, pixel_values: torch.Tensor) -> TowerOutput:
        """pixel_values (N, 3, S, S) -> features (N, P, C) of the selected layer; cls_attn (N, 0): no [CLS]."""
        weight = next(self.vision_tower.parameters())
        hidden = self.vision_tower.embeddings(pixel_values.to(weight.device, weight.dtype))
        for layer in self.layers()[: self.n_run]:
            out = layer(hidden, None)
            hidden = out[0] if isinstance(out, tuple) else out
        return TowerOutput(features=hidden, cls_attn=hidden.new_zeros(hidden.shape[0], 0))


class NoClsPipeline(VisualTokenPipeline):
    """The pipeline over a tower without [CLS]: the selectors that run here (random, uniform; keep_all for fastv)
    read only the score tensor's shape and, for random's per-image seed, its content; they get each patch's feature
    norm (N, P) in place of a [CLS] attention. The methods that rank by [CLS] attention never get here
    (`check_tower_supports` refuses them when the pruning is applied)."""

    def select(self, features: torch.Tensor, cls_attn: torch.Tensor, **signals: torch.Tensor) -> Selection:
        return super().select(features, features.float().norm(dim=-1), **signals)
