"""Analytic prefill FLOPs and KV-cache bytes (llava.bench.flops), as exact equalities.

Sources of truth, none of them the module under test:
- the arithmetic written out below, matmul by matmul (2 FLOPs per multiply-add; q/k/v/o projections; the gated
  MLP's three matrices; causal attention, query i reading i + 1 keys, for QK^T and for AV; the LM head on the last
  position only);
- FastV's theoretical per-layer FLOPs, n * (4 d^2 + 2 n d + 2 d m) (Chen et al., arXiv 2403.06764, Sec. 4), which
  counts multiply-adds, a two-matrix MLP and the full n x n attention square. Ours counts 2 FLOPs per multiply-add,
  Llama's gated MLP (three matrices) and the causal triangle: for multi-head attention ours = 2 x FastV's
  + 2 n d m (the gate matrix) - 2 d n (n - 1) (the masked half of the square);
- torch.utils.flop_counter.FlopCounterMode over a real forward of transformers' LlamaForCausalLM and of our LLaVA
  model with FastV, both with eager attention, which computes the full square: counted = ours + the masked half.
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from llava.bench.flops import LlamaShape, layer_flops, prefill_flops

# hidden 8, 2 query heads of 4, one KV head (GQA), MLP 16, vocabulary 10
TINY = LlamaShape(hidden=8, layers=3, heads=2, kv_heads=1, head_dim=4, mlp=16, vocab=10)
# LLaVA-1.5-7B's Vicuna-7B: hidden 4096, intermediate 11008, 32 layers, 32 heads of 128, no GQA, 32000 tokens
SHAPE_7B = LlamaShape(hidden=4096, layers=32, heads=32, kv_heads=32, head_dim=128, mlp=11008, vocab=32000)
TEXT = 64  # text tokens of a LLaVA-1.5 VQA prompt (system + question), as llava.bench.efficiency uses


def test_one_layer_of_the_tiny_shape_by_hand():
    # n = 3 tokens. Multiply-adds (MACs) of each matmul, then x 2.
    q = 3 * 8 * (2 * 4)  # 3 tokens x hidden 8 -> 2 heads x 4 = 192 MACs
    k = 3 * 8 * (1 * 4)  # one KV head: 96
    v = 3 * 8 * (1 * 4)  # 96
    o = 3 * (2 * 4) * 8  # 192
    gate, up, down = 3 * 8 * 16, 3 * 8 * 16, 3 * 16 * 8  # 384 each
    scores = 2 * 4 * (1 + 2 + 3)  # QK^T: per head, query i dots i + 1 keys of 4 values: 48
    weighted = 2 * 4 * (1 + 2 + 3)  # AV: the same count: 48
    macs = q + k + v + o + gate + up + down + scores + weighted
    assert macs == 1824
    assert layer_flops(TINY, 3) == 2 * macs == 3648


def test_prefill_of_the_tiny_shape_by_hand():
    head = 2 * 8 * 10  # LM head on the last position: 160
    assert prefill_flops(TINY, 3) == 3 * 3648 + head == 11104
    # two tokens: projections 2 x 8 x (8 + 4 + 4) + 2 x 8 x 8 = 384 MACs, MLP 3 x 2 x 8 x 16 = 768, attention
    # 2 x (2 x 4 x (1 + 2)) = 48; x 2 FLOPs
    assert layer_flops(TINY, 2) == 2 * (384 + 768 + 48) == 2400
    # pruning before the LLM: every layer sees the 2 kept tokens
    assert prefill_flops(TINY, 3, 2) == 3 * 2400 + head == 7360
    # FastV with K = 1: layer 1 on all 3 tokens, layers 2-3 on 2, plus the ranking row (the last query against
    # the 3 keys of each of the 2 heads: 2 x 4 x 3 = 24 MACs)
    assert prefill_flops(TINY, 3, 2, full_layers=1) == 3648 + 2 * 2400 + 2 * 24 + head == 8656
    assert prefill_flops(TINY, 3, 2, full_layers=2) == 2 * 3648 + 2400 + 2 * 24 + head == 9904


def layer_7b(n: int) -> int:
    d, m = 4096, 11008
    projections = 2 * n * d * d * 4  # q, k, v, o: each d x d (32 heads x 128, 32 KV heads)
    mlp = 2 * n * d * m * 3  # gate and up (d -> m), down (m -> d)
    attention = 2 * 2 * d * n * (n + 1) // 2  # QK^T and AV over the causal triangle, all heads: d per key
    return projections + mlp + attention


def test_llava_7b_layers_and_prefill():
    full, kept = 576 + TEXT, 58 + TEXT  # 640 and 122 tokens
    assert layer_7b(full) == 262_400_901_120 and layer_7b(kept) == 49_502_470_144
    assert layer_flops(SHAPE_7B, full) == layer_7b(full)
    assert layer_flops(SHAPE_7B, kept) == layer_7b(kept)
    head = 2 * 4096 * 32000
    assert prefill_flops(SHAPE_7B, full) == 32 * layer_7b(full) + head == 8_397_090_979_840
    assert prefill_flops(SHAPE_7B, full, kept) == 32 * layer_7b(kept) + head == 1_584_341_188_608
    # FastV K = 2: layers 1-2 on 640 tokens, 3-32 on 122, plus the ranking row at layer 2 (32 heads x 128 x 640)
    ranking = 2 * 4096 * full
    assert prefill_flops(SHAPE_7B, full, kept, full_layers=2) == (2 * layer_7b(full) + 30 * layer_7b(kept) + ranking
                                                                 + head) == 2_010_143_293_440


def fastv_paper_layer(n: int, d: int, m: int) -> int:
    """FastV's per-layer theoretical FLOPs (multiply-adds, two-matrix MLP, full attention square)."""
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


@pytest.mark.parametrize("n", [1, 122, 640])
def test_relation_to_fastvs_formula(n):
    d, m = 4096, 11008
    assert layer_flops(SHAPE_7B, n) == 2 * fastv_paper_layer(n, d, m) + 2 * n * d * m - 2 * d * n * (n - 1)


def masked_half(shape: LlamaShape, n: int) -> int:
    """FLOPs eager attention spends on the masked keys: QK^T and AV over n^2 - n(n+1)/2 pairs, per query head."""
    return 2 * 2 * shape.heads * shape.head_dim * (n * n - n * (n + 1) // 2)


def test_transformers_llama_counted_by_torch():
    config = LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=3, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=4, vocab_size=10, attn_implementation="eager")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    shape = LlamaShape.from_config(config)
    assert shape == TINY
    for n in (3, 7):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.randint(0, 10, (1, n)), logits_to_keep=1)
        assert counter.get_total_flops() == prefill_flops(shape, n) + 3 * masked_half(shape, n)


@pytest.fixture(scope="module")
def tiny_llava():
    from llava.bench.synthetic import build_synthetic_model, synthetic_inputs

    model = build_synthetic_model("tiny", attn_implementation="eager")
    return model, synthetic_inputs(model, "cpu", torch.float32)


@pytest.mark.parametrize("method, full_layers", [("fastervlm", 0), ("fastv", 2), ("fastv", 1)])
def test_our_llava_prefill_counted_by_torch(tiny_llava, method, full_layers):
    """The LLM prefill of our model (visual tokens already spliced) with pruning before the LLM (FasterVLM) or inside
    it (FastV, K = full_layers), 58 visual tokens kept of 576."""
    model, inputs = tiny_llava
    model.set_pruning(model.pruning.replace(method=method, visual_token_num=58, llm_layer=max(full_layers, 1)))
    shape = LlamaShape.from_config(model.config)
    with torch.no_grad():
        mm = model.prepare_multimodal_inputs(inputs.ids, None, inputs.pixels, None)
        model.start_llm_pruning(mm)
        prompt = mm.inputs_embeds.shape[1]
        with FlopCounterMode(display=False) as counter:
            model(inputs_embeds=mm.inputs_embeds, use_cache=True, logits_to_keep=1)
    text = prompt - mm.v_token_num[0]
    kept = text + 58
    if full_layers:
        assert prompt == text + 576
        expected = prefill_flops(shape, prompt, kept, full_layers)
        eager_extra = full_layers * masked_half(shape, prompt) + (shape.layers - full_layers) * masked_half(shape, kept)
    else:
        assert prompt == kept
        expected = prefill_flops(shape, kept)
        eager_extra = shape.layers * masked_half(shape, kept)
    assert counter.get_total_flops() == expected + eager_extra
