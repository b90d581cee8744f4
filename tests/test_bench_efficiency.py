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


# --- video (Video-LLaVA through apply_pruning) -------------------------------------------------------------------
VIDEO_METHODS = ("fastervlm", "fastv", "visionzip", "vispruner", "random", "uniform")


def test_video_shape_is_transformers_video_llava_7b():
    """`video-7b` is transformers' own VideoLlavaConfig defaults (Video-LLaVA-7B-hf: CLIP ViT-L/14 at 224 px,
    LLaVA-1.5-7B's Llama), with the -hf checkpoint's 32,064 embedding rows."""
    from transformers import LlamaConfig, VideoLlavaConfig

    from llava.bench.video import VIDEO_SHAPES, video_llava_config

    ours, reference, llama = video_llava_config(VIDEO_SHAPES["video-7b"]), VideoLlavaConfig(), LlamaConfig()
    for key in ("image_token_index", "video_token_index", "vision_feature_layer", "vision_feature_select_strategy",
                "image_seq_length", "video_seq_length"):
        assert getattr(ours, key) == getattr(reference, key), key
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size"):
        assert getattr(ours.vision_config, key) == getattr(reference.vision_config, key), key
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
        assert getattr(ours.text_config, key) == getattr(llama, key), key
    assert ours.text_config.vocab_size == 32064 and reference.video_seq_length == 8 * (16 * 16 + 1)


def test_video_rows_token_counts_flops_and_kv_cache(tmp_path):
    """Video-LLaVA on the tiny video shape (8 frames of 224 px, patch 14: 256 patches + [CLS] per frame), every
    method at 256 / 64 / 26 per frame. Expected by hand: transformers feeds each frame's [CLS] row with its K kept
    patches, 8 x (K + 1); VisionZip's budget counts that row, 8 x K; FastV keeps 8 x K after its layer 2."""
    from llava.bench.efficiency import main

    rows = main(["--synthetic", "video-tiny", "--methods", ",".join(VIDEO_METHODS), "--budgets", "256,64,26",
                 "--new-tokens", "3", "--repeats", "1", "--warmup", "0", "--device", "cpu",
                 "--output-dir", str(tmp_path)])
    with open(tmp_path / "efficiency_synthetic-video-tiny.csv") as f:
        by_case = {(r["method"], int(r["budget"])): r for r in csv.DictReader(f)}
    assert len(rows) == len(by_case) == 1 + len(VIDEO_METHODS) * 3
    text, full = 35 + 29, 8 * 257  # the prompt's text tokens; the unpruned video's placeholders
    kept = {(m, k): 8 * (k if m in ("visionzip", "fastv") else k + 1) for m in VIDEO_METHODS for k in (256, 64, 26)}
    kept[("unpruned", 256)] = full
    for (method, k), n in kept.items():
        row = by_case[(method, k)]
        assert int(row["kept_visual"]) == n and int(row["llm_tokens"]) == text + n, (method, k)
        assert int(row["prompt_len"]) == text + (full if method in ("fastv", "unpruned") else n), (method, k)

    # tiny Llama: hidden 64, 4 layers, 4 heads of 16, 2 KV heads, MLP 128, 1000 + 64 vocabulary rows; float32 cache
    def layer(n):  # 2 FLOPs per multiply-add: q, k, v, o; gate, up, down; causal QK^T and AV
        return 2 * n * 64 * (64 + 32 + 32 + 64) + 2 * n * 64 * 128 * 3 + 2 * 64 * n * (n + 1)

    head = 2 * 64 * 1064
    gflops = {case: float(row["prefill_gflops"]) * 1e9 for case, row in by_case.items()}
    assert gflops[("unpruned", 256)] == pytest.approx(4 * layer(2120) + head, rel=1e-12)
    assert gflops[("fastervlm", 64)] == pytest.approx(4 * layer(64 + 520) + head, rel=1e-12)
    assert gflops[("visionzip", 26)] == pytest.approx(4 * layer(64 + 208) + head, rel=1e-12)
    fastv = 2 * layer(2120) + 2 * layer(64 + 512) + 2 * 64 * 2120 + head  # K = 2 full layers + the ranking row
    assert gflops[("fastv", 64)] == pytest.approx(fastv, rel=1e-12)
    assert float(by_case[("random", 26)]["flops_bound"]) == pytest.approx(
        (4 * layer(2120) + head) / (4 * layer(64 + 216) + head), rel=1e-12)
    # the cache after 3 new tokens holds the prompt + 2: 2 (K, V) x 2 KV heads x 16 x 4 B per token and layer
    per_token = 2 * 2 * 16 * 4
    kv = {case: float(row["kv_cache_mb"]) * 2**20 for case, row in by_case.items()}
    assert kv[("unpruned", 256)] == pytest.approx(4 * per_token * (2120 + 2), rel=1e-12)
    assert kv[("uniform", 64)] == pytest.approx(4 * per_token * (64 + 520 + 2), rel=1e-12)
    assert kv[("fastv", 26)] == pytest.approx(per_token * (2 * (2120 + 2) + 2 * (64 + 208 + 2)), rel=1e-12)


def test_video_unpruned_case_is_the_unmodified_model():
    """The unpruned row runs transformers' Video-LLaVA as built: no handle, no wrapped forward / generate."""
    import torch

    from llava.bench.measure import BASELINE, Case
    from llava.bench.video import VideoSubject, build_video_model, video_inputs

    model = build_video_model("video-tiny")
    subject = VideoSubject(model, video_inputs(model, "cpu", torch.float32))
    subject.set_case(Case("fastervlm", 64), fastv_layer=2)
    assert model.fastervlm.pruning.visual_token_num == 64 and "forward" in model.__dict__
    subject.set_case(Case(BASELINE, 256), fastv_layer=2)
    assert not {"fastervlm", "forward", "generate"} & set(model.__dict__)
