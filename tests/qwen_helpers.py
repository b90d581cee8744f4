"""The tiny random Qwen2.5-VL configuration the Qwen tests share: a 2-block vision tower (block 1 with full
attention, window 8, patch 2, 2x2 merger) and a small Qwen2 LLM with M-RoPE sections [1, 1, 2]."""

from __future__ import annotations

from transformers import Qwen2_5_VLConfig


def tiny_qwen2_5_vl_config(vocab_size: int, llm_layers: int, **token_ids: int) -> Qwen2_5_VLConfig:
    """token_ids: image_token_id, video_token_id, vision_start_token_id, vision_end_token_id."""
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=llm_layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 1e4},
                         bos_token_id=None, eos_token_id=None, pad_token_id=0),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32,
                           patch_size=2, spatial_merge_size=2, temporal_patch_size=2, window_size=8,
                           fullatt_block_indexes=[1], in_channels=3, tokens_per_second=2),
        **token_ids)
