"""The efficiency benchmark: analytic FLOPs, and a smoke run on the tiny synthetic shape that writes its CSV and plot.
No timing is asserted (timings of a shared CPU mean nothing in a test)."""

import csv

import pytest

from llava.bench.flops import LlamaShape, kv_cache_bytes, layer_flops, prefill_flops

SHAPE_7B = LlamaShape(hidden=4096, layers=32, heads=32, kv_heads=32, head_dim=128, mlp=11008, vocab=32000)


def test_layer_flops_counts_projections_mlp_and_causal_attention():
    s = LlamaShape(hidden=8, layers=1, heads=2, kv_heads=1, head_dim=4, mlp=16, vocab=10)
    n = 3
    projections = 2 * n * 8 * (8 + 2 * 4) + 2 * n * 8 * 8  # q, k, v (one KV head of 4), o
    mlp = 2 * n * 3 * 8 * 16
    attention = 2 * 8 * n * (n + 1)  # QK^T and AV over 1 + 2 + 3 keys
    assert layer_flops(s, n) == projections + mlp + attention


def test_prefill_flops_pruning_before_and_inside_the_llm():
    full = prefill_flops(SHAPE_7B, 640)
    assert 8.2e12 < full < 8.6e12  # ~2 x 6.5e9 layer parameters x 640 tokens, plus attention
    pre = prefill_flops(SHAPE_7B, 122, 122)  # 64 text + 58 visual tokens
    fastv = prefill_flops(SHAPE_7B, 640, 122, full_layers=2)
    assert pre < fastv < full
    assert full / pre > 5  # the bound FasterVLM can approach at 58 tokens
    assert fastv == pytest.approx(2 / 32 * full + 30 / 32 * pre, rel=0.01)
    assert kv_cache_bytes(SHAPE_7B, [640] * 2 + [122] * 30, 2) == 2 * 4096 * 2 * (2 * 640 + 30 * 122)


def test_smoke_run_writes_csv_and_plot(tmp_path):
    from llava.bench.efficiency import main

    rows = main(["--synthetic", "tiny", "--methods", "fastervlm,fastv,visionzip,vispruner", "--budgets", "576,58,1",
                 "--new-tokens", "3", "--repeats", "1", "--warmup", "0", "--device", "cpu",
                 "--output-dir", str(tmp_path)])
    csv_file, png_file = tmp_path / "efficiency_synthetic-tiny.csv", tmp_path / "efficiency_synthetic-tiny.png"
    assert png_file.stat().st_size > 10_000
    with open(csv_file) as f:
        written = list(csv.DictReader(f))
    assert len(written) == len(rows) == 1 + 4 * 3
    by_case = {(r["method"], int(r["budget"])): r for r in written}
    base = by_case[("unpruned", 576)]
    assert int(base["kept_visual"]) == 576 and float(base["ttft_ms_ratio"]) == 1.0
    text = int(base["prompt_len"]) - 576
    for method in ("fastervlm", "fastv", "visionzip", "vispruner"):
        row = by_case[(method, 58)]
        assert int(row["kept_visual"]) == 58 and int(row["llm_tokens"]) == text + 58
        assert float(row["flops_bound"]) > 1 and float(row["kv_cache_mb"]) < float(base["kv_cache_mb"])
        for key in ("ttft_ms", "prefill_ms", "e2e_ms", "decode_tok_s", "vision_ms", "prefill_speedup"):
            assert float(row[key]) > 0, key
    # FastV runs its first K layers on every token: more FLOPs and more cache than pruning before the LLM
    assert float(by_case[("fastv", 58)]["prefill_gflops"]) > float(by_case[("fastervlm", 58)]["prefill_gflops"])
    assert float(by_case[("fastv", 58)]["kv_cache_mb"]) > float(by_case[("fastervlm", 58)]["kv_cache_mb"])
    assert int(by_case[("fastv", 58)]["prompt_len"]) == int(base["prompt_len"])
    assert int(by_case[("fastervlm", 1)]["kept_visual"]) == 1
