"""The efficiency benchmark: a smoke run on the tiny synthetic shape that writes its CSV and plot, with its FLOPs and
KV-cache columns checked exactly against the arithmetic written out here (the formulas themselves: tests/test_flops.py).
No timing is asserted (timings of a shared CPU mean nothing in a test)."""

import csv

import pytest


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
    # synthetic "tiny": hidden 64, 4 layers, 4 heads of 16, 2 KV heads, MLP 128, vocabulary 1000; float32 cache
    def layer(n):  # 2 FLOPs per multiply-add: q, k, v, o; gate, up, down; causal QK^T and AV
        return 2 * n * 64 * (64 + 32 + 32 + 64) + 2 * n * 64 * 128 * 3 + 2 * 64 * n * (n + 1)

    head = 2 * 64 * 1000
    full, kept = text + 576, text + 58
    assert float(base["prefill_gflops"]) * 1e9 == pytest.approx(4 * layer(full) + head, rel=1e-12)
    assert float(by_case[("fastervlm", 58)]["prefill_gflops"]) * 1e9 == pytest.approx(4 * layer(kept) + head, rel=1e-12)
    fastv = 2 * layer(full) + 2 * layer(kept) + 2 * 64 * full + head  # K = 2, plus the ranking row
    assert float(by_case[("fastv", 58)]["prefill_gflops"]) * 1e9 == pytest.approx(fastv, rel=1e-12)
    assert float(by_case[("fastervlm", 58)]["flops_bound"]) == pytest.approx((4 * layer(full) + head)
                                                                             / (4 * layer(kept) + head), rel=1e-12)
    # measured on the cache after 3 new tokens (the last generated token is not fed back): 2 x 2 KV heads x 16 x 4 B
    per_token = 2 * 2 * 16 * 4
    assert float(base["kv_cache_mb"]) * 2**20 == pytest.approx(4 * per_token * (full + 2), rel=1e-12)
    assert float(by_case[("fastv", 58)]["kv_cache_mb"]) * 2**20 == pytest.approx(
        per_token * (2 * (full + 2) + 2 * (kept + 2)), rel=1e-12)
