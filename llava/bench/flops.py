"""Analytic cost of the LLM prefill: FLOPs of a Llama decoder over a prompt, with or without pruning.

Counted: every matmul of every layer (q/k/v/o projections, the gated MLP, causal attention scores and values) at
2 FLOPs per multiply-add, plus the LM head on the last position (generation keeps only that one). Norms, RoPE,
softmax and the embeddings are left out (< 1% for LLaVA shapes). Causal attention: query i reads i + 1 keys, so
QK^T and AV together cost 2 * 2 * hidden * n(n+1)/2.

FastV (Chen et al., arXiv 2403.06764, Sec. 4) gives a layer's theoretical FLOPs as 4nd^2 + 2n^2 d + 2ndm: one per
multiply-add, a two-matrix MLP of width m, the full n x n attention square. This module follows the usual hardware
convention instead (2 per multiply-add, Llama's three MLP matrices, the causal triangle a kernel actually computes);
for multi-head attention the two are related exactly by ours = 2 * FastV's + 2ndm - 2dn(n - 1)
(tests/test_flops.py). The ratios the benchmark reports barely move: 640 vs 122 tokens of LLaVA-1.5-7B (576 vs 58
visual + 64 text) is 5.30x per layer here, 5.39x by FastV's formula.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LlamaShape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    vocab: int

    @classmethod
    def from_config(cls, config) -> "LlamaShape":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
                   config.num_key_value_heads, head_dim, config.intermediate_size, config.vocab_size)


def layer_flops(shape: LlamaShape, n: int) -> float:
    """One decoder layer over n tokens (causal, no cache)."""
    q_out, kv_out = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    projections = 2 * n * shape.hidden * (q_out + 2 * kv_out) + 2 * n * q_out * shape.hidden
    mlp = 2 * n * 3 * shape.hidden * shape.mlp
    attention = 2 * q_out * n * (n + 1)  # QK^T + AV over the causal triangle
    return float(projections + mlp + attention)


def prefill_flops(shape: LlamaShape, prompt_len: int, kept_len: int | None = None, full_layers: int = 0) -> float:
    """Prefill FLOPs: `full_layers` layers over the whole prompt, the rest over `kept_len` tokens (FastV); with
    `full_layers=0` every layer sees `kept_len` tokens (pruning before the LLM). kept_len None = no pruning."""
    kept_len = prompt_len if kept_len is None else kept_len
    total = full_layers * layer_flops(shape, prompt_len) + (shape.layers - full_layers) * layer_flops(shape, kept_len)
    if full_layers:  # FastV's ranking: one query row against the prompt's keys at layer K
        total += 2 * shape.heads * shape.head_dim * prompt_len
    return total + 2 * shape.hidden * shape.vocab
