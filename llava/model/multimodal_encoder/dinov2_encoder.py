"""DINOv2 vision tower: the selected layer's patch features and that layer's [CLS] attention, as the CLIP tower.

DINOv2 is trained at 518 px (37 x 37 position embeddings) and interpolates its position embeddings to the input
it is shown, so the checkpoint's `image_size` is not the side the tower runs at. The side comes from the image
processor (`crop_size`) and is carried here as `input_size`; `config.image_size` of this wrapper reports it, so
the patch count (and LLaVA-1.6's crop grid) follow the pixels the tower really sees.
"""

from __future__ import annotations

import copy

import torch.nn as nn

from llava.model.multimodal_encoder.clip_encoder import ClsAttentionTower


class Dinov2VisionTower(ClsAttentionTower):
    """Wraps transformers' `Dinov2Model` (kept as `.vision_tower`); no register tokens, so token 0 is [CLS]."""

    def __init__(self, vision_tower: nn.Module, input_size: int, select_layer: int = -2,
                 select_feature: str = "patch"):
        patch = vision_tower.config.patch_size
        if input_size % patch:
            raise ValueError(f"DINOv2 input side {input_size} px is not a multiple of its {patch} px patches")
        if getattr(vision_tower.config, "num_register_tokens", 0):
            raise ValueError("DINOv2 with register tokens is not supported: [CLS] attention over patches assumes "
                             "the sequence is [CLS] + patches")
        super().__init__(vision_tower, select_layer=select_layer, select_feature=select_feature)
        self.input_size = input_size
        self._config = copy.copy(vision_tower.config)
        self._config.image_size = input_size  # the side it runs at, not the 518 px it was trained at

    @property
    def config(self):
        return self._config

    def layers(self) -> nn.ModuleList:
        return self.vision_tower.encoder.layer

    def embed(self, pixel_values):
        # [CLS] + patch embeddings + position embeddings interpolated (bicubic) to the input's patch grid
        return self.vision_tower.embeddings(pixel_values)

    def qk_modules(self, layer: nn.Module):
        attn = layer.attention
        return attn.q_proj, attn.k_proj, attn.num_attention_heads, attn.scaling
