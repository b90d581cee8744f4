"""Qwen3-VL (transformers' `Qwen3VLForConditionalGeneration`, the `Qwen/Qwen3-VL-*-Instruct` layout): the adapter
`apply_pruning` uses for it (`Qwen3VLAdapter`, on the Qwen-family base llava/integrations/transformers/qwen_vl.py).

Token layout (transformers 5.x `modeling_qwen3_vl.py`, `processing_qwen3_vl.py`): the processor cuts an image into
16 px patches (2 frames deep; an image is its own frame twice) and orders them so that each 2x2 window of patches is 4
consecutive rows; the ViT (`Qwen3VLVisionModel`, no [CLS] token, no window attention: every block attends over the
whole image, or over one frame of a video, `cu_seqlens`) ends in the 2x2 merger (`merger`), which gives one LLM token
per window. An image writes `<|vision_start|>` + one `<|image_pad|>` per merged token + `<|vision_end|>`; a video
writes, per frame (grid t index), a timestamp text (`<1.5 seconds>`), `<|vision_start|>`, its `<|video_pad|>` tokens,
`<|vision_end|>`.

DeepStack (Meng et al., arXiv 2406.04334): the blocks `deepstack_visual_indexes` each feed their own merger
(`deepstack_merger_list`); level l's merged features are ADDED to the hidden states of LLM layer l's output at the
visual positions (`Qwen3VLTextModel._deepstack_process` with `visual_pos_masks`). A pruned token must therefore
leave every level: the kept set of the main features is applied to each level's features, and both go back through
`mm_encoder_outputs` (`BaseModelOutputWithDeepstackFeatures.pooler_output` / `.deepstack_features`, one tensor per
image or frame), so `visual_pos_masks` is built by the model from the kept placeholders.

Budgets are merged (LLM) tokens per image and per video frame; an item with fewer tokens keeps all of them.
Selection runs on the merged features (the merger is Qwen's projector), in raster order of the merged grid.
Methods: random, uniform, divprune (merged features), attention_received (the mean attention each patch receives at
the LAST vision block, over its image / frame, summed over the 4 patches of each merged token; computed blockwise by
`llava.model.attention_rows.received_attention` from that block's q / k after its 2-D rotary, by the Qwen base).
The in-LLM fastv ranks with the query / key right before the rotary, i.e. after Qwen3's per-head `q_norm` /
`k_norm` (llava/model/pruning/fastv.py), and needs `llm_layer` >= the number of DeepStack levels (3 in the released
models, so the default K = 2 is refused: use 3): the model adds level l after LLM layer l at the unpruned visual
positions, which a sequence pruned earlier no longer has. The [CLS]-attention methods are refused (no [CLS] token).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from llava.integrations.transformers.qwen_vl import QwenVLAdapter, TowerItems
from llava.model.pruning import PruningConfig, get_llm_pruner

WHERE = "(llava/integrations/transformers/qwen3_vl.py)"


class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3VLForConditionalGeneration: the Qwen-family adapter (llava/integrations/transformers/qwen_vl.py) with
    the DeepStack levels pruned as the main features and attention_received read at the last vision block."""

    def __init__(self, model: nn.Module, pruning: PruningConfig) -> None:
        self.check_fastv(model.config, pruning)
        super().__init__(model, pruning)
        self.last_keep: dict[str, list[torch.Tensor]] = {}  # the last call's kept (t, m) indices per item

    @staticmethod
    def check_fastv(config, pruning: PruningConfig) -> None:
        """FastV drops tokens after LLM layer K; the model still adds DeepStack level l after layer l (0-based) at
        the unpruned visual positions, so K must be at least the number of levels."""
        levels = len(config.vision_config.deepstack_visual_indexes)
        if get_llm_pruner(pruning.method) is not None and pruning.llm_layer < levels:
            raise NotImplementedError(
                f"fastv with llm_layer={pruning.llm_layer} on Qwen3-VL: the model adds its {levels} DeepStack "
                f"feature levels to the outputs of LLM layers 1..{levels} at the unpruned visual positions, so FastV "
                f"can prune only after them; use llm_layer >= {levels} {WHERE}")

    def score_block(self) -> int:
        """The last vision block: no window attention in Qwen3-VL, every block attends over a whole image / frame."""
        return len(self.model.model.visual.blocks) - 1

    def run_tower(self, pixels: torch.Tensor, grid_thw: torch.Tensor, needs_received: bool) -> TowerItems:
        """The base's run, plus each item's DeepStack features (one (n_i, D) per level, in level order) as the
        extras that the kept set prunes too; read from the vision model's own output (a forward hook)."""
        seen = []
        hook = self.model.model.visual.register_forward_hook(
            lambda module, args, output: seen.append(output.deepstack_features))
        try:
            items = super().run_tower(pixels, grid_thw, needs_received)
        finally:
            hook.remove()
        counts = [f.shape[0] for f in items.features]
        levels = [level.split(counts) for level in seen[-1]]
        items.extras = [[level[i] for level in levels] for i in range(len(counts))]
        return items

    def encoder_output(self, kept: list[torch.Tensor], extras: list[list[torch.Tensor]]):
        """Kept merged features and, per DeepStack level, the same items' kept features, as `get_image_features`
        returns them (pooler_output and each level: one tensor per item)."""
        levels = len(self.model.config.vision_config.deepstack_visual_indexes)
        deepstack = [tuple(item[level] for item in extras) for level in range(levels)]
        return BaseModelOutputWithDeepstackFeatures(pooler_output=tuple(kept), deepstack_features=deepstack)

    def stream(self, key: str, token_id: int, pixels: torch.Tensor, grid_thw: torch.Tensor):
        """The base's stream; its kept sets (per item, (t, m) indices per frame) are kept in `last_keep[key]`."""
        out = super().stream(key, token_id, pixels, grid_thw)
        self.last_keep[key] = out.tokens.keep
        return out
