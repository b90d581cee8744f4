"""FastV inside Qwen-family language models with M-RoPE (3-D position ids): Qwen2.5-VL's text model and Qwen3-VL's
(per-head q_norm / k_norm before rotary).

Sources of truth: transformers' own eager attention (`output_attentions=True` on an unmodified copy) for the row
FastV ranks by; and the unmodified decoder layers run by hand (an eager copy, additive causal mask written here):
layers 0..K-1 on the whole sequence, then layers K.. on the kept tokens with their original 3-D position ids, as
tests/test_fastv.py does for Llama, including one decode step through the cache.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import DynamicCache, Qwen2_5_VLTextConfig, Qwen3VLTextConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLTextModel
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel

from llava.model.pruning import PruningConfig
from llava.model.pruning.fastv import FastV

K, KEEP = 2, 3
LENGTH, VISUAL = 12, slice(3, 9)  # 3 text tokens, 6 visual tokens (a 1 x 2 x 3 grid), 3 text tokens


def build(kind: str, attn: str = "sdpa"):
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=50, max_position_embeddings=256)
    if kind == "qwen2_5_vl":
        config = Qwen2_5_VLTextConfig(**common, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                 "mrope_section": [2, 1, 1]})
        cls = Qwen2_5_VLTextModel
    else:
        config = Qwen3VLTextConfig(**common, head_dim=8, rope_parameters={
            "rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 1, 1], "mrope_interleaved": True})
        cls = Qwen3VLTextModel
    torch.manual_seed(0)
    model = cls._from_config(config, attn_implementation=attn).eval()
    oracle = copy.deepcopy(model)
    oracle.config._attn_implementation = "eager"
    return model, oracle


def positions() -> torch.Tensor:
    """(3, 1, LENGTH) M-RoPE ids as Qwen2.5-VL's get_rope_index lays them out: text tokens share one id on all
    three axes; the 1 x 2 x 3 visual grid has t = 3, h = 3 + row, w = 3 + column; text after it restarts at
    max + 1 = 6."""
    t = [0, 1, 2] + [3] * 6 + [6, 7, 8]
    h = [0, 1, 2] + [3, 3, 3, 4, 4, 4] + [6, 7, 8]
    w = [0, 1, 2] + [3, 4, 5, 3, 4, 5] + [6, 7, 8]
    return torch.tensor([t, h, w]).unsqueeze(1)


def causal(n_keys: int, query_pos: list[int], key_pos: list[int]) -> torch.Tensor:
    """Additive mask (1, 1, q, n_keys): a query at sequence index i sees keys at indices <= i."""
    blocked = torch.tensor(key_pos)[None, :] > torch.tensor(query_pos)[:, None]
    return torch.zeros(blocked.shape).masked_fill(blocked, torch.finfo(torch.float32).min)[None, None]


@torch.no_grad()
def by_hand(oracle, hidden, pos, layers, seq_index):
    """Run `layers` of the unmodified (eager) copy on hidden (1, n, C) at 3-D ids pos (3, 1, n); seq_index: each
    token's index in the unpruned sequence (for the causal mask)."""
    cos_sin = oracle.rotary_emb(hidden, pos)
    mask = causal(len(seq_index), seq_index, seq_index)
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=cos_sin, position_ids=None)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return hidden


def visual_mask(length: int = LENGTH) -> torch.Tensor:
    mask = torch.zeros(1, length, dtype=torch.bool)
    mask[0, VISUAL] = True
    return mask


@pytest.mark.parametrize("kind", ["qwen2_5_vl", "qwen3_vl"])
@torch.no_grad()
def test_fastv_ranks_by_eager_attention_and_equals_the_layers_by_hand(kind):
    model, oracle = build(kind)
    embeds = torch.randn(1, LENGTH, 32, generator=torch.Generator().manual_seed(1))
    pos = positions()
    ref = oracle(inputs_embeds=embeds, position_ids=pos, output_attentions=True, output_hidden_states=True)
    row = ref.attentions[K - 1][:, :, -1].mean(dim=1)  # (1, L): head mean of the last query at layer K

    fastv = FastV(model, PruningConfig(method="fastv", llm_layer=K, visual_token_num=KEEP))
    assert fastv.arm(visual_mask(), [KEEP]) == [KEEP]
    out = model(inputs_embeds=embeds, position_ids=pos, use_cache=False).last_hidden_state
    torch.testing.assert_close(fastv.last_attention, row)

    top = (row[0, VISUAL].topk(KEEP).indices + VISUAL.start).sort().values.tolist()
    kept = [0, 1, 2] + top + [9, 10, 11]
    assert fastv.kept[0].tolist() == kept
    hand = by_hand(oracle, ref.hidden_states[K][:, kept], pos[:, :, kept], oracle.layers[K:], kept)
    torch.testing.assert_close(out, oracle.norm(hand))
    # the rotary the kept tokens got is the one of their 3-D ids, not of their new (0..8) indices
    assert not torch.allclose(out, oracle.norm(by_hand(oracle, ref.hidden_states[K][:, kept],
                                                       torch.arange(len(kept)).expand(3, 1, -1),
                                                       oracle.layers[K:], kept)), atol=1e-4)
    fastv.remove()


@pytest.mark.parametrize("kind, attn", [("qwen2_5_vl", "sdpa"), ("qwen3_vl", "eager")])
@torch.no_grad()
def test_decode_step_through_the_cache_attends_to_the_kept_tokens(kind, attn):
    """sdpa gets no mask (its causal flag fits the kept order); eager gets the model's 4-D mask, whose key axis
    FastV maps to the kept tokens plus the new one."""
    model, oracle = build(kind, attn)
    embeds = torch.randn(1, LENGTH + 1, 32, generator=torch.Generator().manual_seed(2))
    pos = torch.cat([positions(), torch.full((3, 1, 1), 9)], dim=-1)  # the next token: text id max + 1

    fastv = FastV(model, PruningConfig(method="fastv", llm_layer=K, visual_token_num=KEEP))
    fastv.arm(visual_mask(), [KEEP])
    cache = DynamicCache(config=model.config)
    model(inputs_embeds=embeds[:, :LENGTH], position_ids=pos[:, :, :LENGTH], cache=cache, use_cache=True)
    kept = fastv.kept[0].tolist()
    assert cache.get_seq_length(0) == LENGTH and cache.get_seq_length(K) == len(kept)
    step = model(inputs_embeds=embeds[:, LENGTH:], position_ids=pos[:, :, LENGTH:], cache=cache,
                 use_cache=True).last_hidden_state

    # layers 0..K-1 saw every token (the unpruned run of all 13), layers K.. the kept ones and the new token
    full = oracle(inputs_embeds=embeds, position_ids=pos, output_hidden_states=True).hidden_states[K]
    index = kept + [LENGTH]
    hand = by_hand(oracle, full[:, index], pos[:, :, index], oracle.layers[K:], index)
    torch.testing.assert_close(step[:, -1], oracle.norm(hand)[:, -1])
    fastv.remove()
