"""Qwen2.5-VL (transformers' `Qwen2_5_VLForConditionalGeneration`, the `Qwen/Qwen2.5-VL-*-Instruct` layout): the
adapter `apply_pruning` uses for it, on the Qwen-family base (llava/integrations/transformers/qwen_vl.py: budgets per
image / frame group of merged tokens, positions kept from the unpruned prompt).

Its vision model (transformers 5.x `modeling_qwen2_5_vl.py`, `Qwen2_5_VisionTransformerPretrainedModel.forward`)
permutes the patches into window order (`get_vision_window_index`, in units of the 2x2 merged tokens), runs window
attention in most blocks and full attention within each frame group (`cu_seqlens`, one segment per t index) in the
blocks of `fullatt_block_indexes`, merges 2x2 patches (`Qwen2_5_VLPatchMerger`, the projector) and un-permutes.
`attention_received` is read at the LAST full-attention block: the block's q / k are captured from its `qkv`
projection (one layer only, no attention map is kept), rotated as the block does, scored per frame group
(`llava.model.attention_rows.received_attention`), summed over the 4 patches of each merged token (consecutive in
window order) and put back in raster order. The tower has no [CLS] token: fastervlm / visionzip / vispruner are
refused when the pruning is applied.
"""

from __future__ import annotations

import torch
from transformers.vision_utils import get_vision_window_index

from llava.integrations.transformers.qwen_vl import QwenVLAdapter


class Qwen2_5_VLAdapter(QwenVLAdapter):
    """Qwen2_5_VLForConditionalGeneration: window attention in most vision blocks, full attention over each frame
    group in `fullatt_block_indexes`; the score is read at the last full-attention block, whose hidden states are
    in window order (`get_vision_window_index`)."""

    def score_block(self) -> int:
        return self.model.config.vision_config.fullatt_block_indexes[-1]

    def window_order(self, grid_thw: torch.Tensor) -> torch.Tensor:
        vision = self.model.config.vision_config
        order, _ = get_vision_window_index(grid_thw, spatial_merge_size=vision.spatial_merge_size,
                                           window_size=vision.window_size, patch_size=vision.patch_size)
        return order
