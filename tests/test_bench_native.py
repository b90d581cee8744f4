"""The efficiency benchmark on LLaVA-OneVision and Qwen2.5-VL (llava/bench/native.py).

Sources of truth: the released checkpoints' parameter counts (hub pages: llava-hf/llava-onevision-qwen2-7b-ov-hf
8.03 B, Qwen/Qwen2.5-VL-7B-Instruct 8,292,166,656 = its safetensors index's total_size 16,584,333,312 bytes / 2 in
bf16) and transformers' own config defaults for the 7B shapes; token counts, FLOPs and KV-cache bytes of the tiny
rows worked out by hand in the comments. No timing is asserted."""

import math

import pytest
import torch
from transformers import LlavaOnevisionConfig, Qwen2_5_VLConfig

from llava.bench.flops import LlamaShape
from llava.bench.measure import BASELINE, Case, benchmark
from llava.bench.native import NATIVE_SHAPES, build_native_model, build_native_subject, qwen_config
from llava.bench.report import format_table, summarize


@pytest.mark.parametrize("name, params, rel", [("onevision-7b", 8.03e9, 1e-3), ("qwen2.5-vl-7b", 8_292_166_656, 0)])
def test_7b_shapes_have_the_released_parameter_counts(name, params, rel):
    model = build_native_model(name, device="meta", dtype=torch.bfloat16)  # no memory: shapes only
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=rel, abs=0)


def test_7b_towers_are_transformers_defaults():
    """OneVision: transformers' LlavaOnevisionConfig vision defaults (SigLIP-so400m, 26 layers) and anyres_max_9.
    Qwen2.5-VL: transformers' vision defaults but for the width (1280 in the 7B checkpoint), M-RoPE 16/24/24."""
    ours = build_native_model("onevision-7b", device="meta").config
    reference = LlavaOnevisionConfig()
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                "patch_size"):
        assert getattr(ours.vision_config, key) == getattr(reference.vision_config, key), key
    assert (ours.vision_aspect_ratio, ours.image_grid_pinpoints) == ("anyres_max_9", reference.image_grid_pinpoints)
    qwen, qref = qwen_config(NATIVE_SHAPES["qwen2.5-vl-7b"]), Qwen2_5_VLConfig()
    for key in ("depth", "intermediate_size", "num_heads", "patch_size", "spatial_merge_size", "window_size",
                "out_hidden_size"):
        assert getattr(qwen.vision_config, key) == getattr(qref.vision_config, key), key
    assert list(qwen.vision_config.fullatt_block_indexes) == list(qref.vision_config.fullatt_block_indexes)
    assert qwen.vision_config.hidden_size == 1280
    assert qwen.text_config.rope_parameters["mrope_section"] == [16, 24, 24]


# tiny Qwen2 decoder: width 64, 4 layers, 4 heads of 16, 2 KV heads, MLP 128, 1000 vocabulary rows; float32 cache
def layer(n):  # 2 FLOPs per multiply-add: q, k, v, o; gate, up, down; causal QK^T and AV
    return 2 * n * 64 * (64 + 32 + 32 + 64) + 2 * n * 64 * 128 * 3 + 2 * 64 * n * (n + 1)


HEAD = 2 * 64 * 1000
PER_TOKEN = 2 * 2 * 16 * 4  # K and V x 2 KV heads x 16 x 4 bytes, per layer
TEXT = 35 + 29

# shape -> (text tokens, unpruned placeholders, budgets (full, 75 % fewer), visual tokens random keeps at the second)
CASES = {
    # 384 x 384 picks the 384 x 384 pinpoint: base crop 729 + a 1 x 1 grid 729 + 27 row newlines = 1,485;
    # random keeps 182 of each crop's 729 (25 % = 182.25) and every newline: 2 x 182 + 27
    "onevision-tiny": (TEXT, 1485, (729, 182), 2 * 182 + 27),
    # 8 frames of 27 x 27 pooled 2x2 to 14 x 14 = 196 + one newline per video = 1,569; 49 kept per frame + newline
    "onevision-video-tiny": (TEXT, 1569, (196, 49), 8 * 49 + 1),
    # 672 x 672 = 48 x 48 patches of 14 px, merged 2 x 2 -> 576; + <|vision_start|>, <|vision_end|> as text
    "qwen2.5-vl-tiny": (TEXT + 2, 576, (576, 144), 144),
    # 8 frames of 448 x 448: 4 frame pairs x 16 x 16 = 1,024; 64 kept per frame pair
    "qwen2.5-vl-video-tiny": (TEXT + 2, 1024, (256, 64), 4 * 64),
}


def rows_of(subject, cases, fastv_layer=2, new_tokens=3) -> dict:
    """One timed pass of `cases` (no CSV / plot), summarised as the CLI does: {(method, budget): row}."""
    results, tower = benchmark(subject, cases, new_tokens, 1, 0, fastv_layer, log=lambda *_: None)
    rows = summarize(results, tower, LlamaShape.from_config(subject.llm_config), fastv_layer, new_tokens, "cpu", "t")
    return {(r["method"], r["budget"]): r for r in rows}


@pytest.mark.parametrize("name", list(CASES))
def test_tiny_rows_token_counts_flops_and_kv_cache(name):
    text, full, (per_unit, budget), kept = CASES[name]
    subject = build_native_subject(name, "cpu", torch.float32)
    rows = rows_of(subject, [Case(BASELINE, per_unit), Case("random", budget)]
                   + [Case("fastv", budget)] * (name == "onevision-tiny"))
    base, pruned = rows[(BASELINE, per_unit)], rows[("random", budget)]
    assert (base["kept_visual"], base["llm_tokens"], base["prompt_len"]) == (full, text + full, text + full)
    assert (pruned["kept_visual"], pruned["llm_tokens"], pruned["prompt_len"]) == (kept, text + kept, text + kept)
    assert base["prefill_gflops"] * 1e9 == pytest.approx(4 * layer(text + full) + HEAD, rel=1e-12)
    assert pruned["prefill_gflops"] * 1e9 == pytest.approx(4 * layer(text + kept) + HEAD, rel=1e-12)
    assert pruned["flops_bound"] == pytest.approx((4 * layer(text + full) + HEAD) / (4 * layer(text + kept) + HEAD),
                                                  rel=1e-12)
    # the cache after 3 new tokens holds the prompt + 2 tokens in each of the 4 layers
    assert base["kv_cache_mb"] * 2**20 == pytest.approx(4 * PER_TOKEN * (text + full + 2), rel=1e-12)
    assert pruned["kv_cache_mb"] * 2**20 == pytest.approx(4 * PER_TOKEN * (text + kept + 2), rel=1e-12)
    assert math.isnan(base["vision_plain_ms"]) and base["vision_ms"] > 0
    assert "forward" not in subject.model.__dict__  # benchmark ends with the model as built: no handle left
    assert "no [CLS] row" in format_table(list(rows.values()))
    if name == "onevision-tiny":
        check_fastv(rows[("fastv", budget)], text + full)


def test_cli_cases_default_to_methods_without_cls_and_75_90_95_percent_budgets():
    """`--synthetic onevision-video-tiny` with no --methods / --budgets: the unpruned row, then every method that
    needs no [CLS] at 196 per frame and 75 / 90 / 95 % fewer: 49 (196 / 4), 20 (19.6), 10 (9.8)."""
    from llava.bench.efficiency import build_subject, parse_args, parse_cases

    args = parse_args(["--synthetic", "onevision-video-tiny", "--device", "cpu"])
    _, subject = build_subject(args, torch.device("cpu"), torch.float32)
    cases = [(c.method, c.budget) for c in parse_cases(args, subject)]
    methods = ("fastv", "divprune", "attention_received", "random")
    assert cases == [(BASELINE, 196)] + [(m, b) for m in methods for b in (196, 49, 20, 10)]


def check_fastv(fastv: dict, full: int) -> None:
    """FastV (K = 2): the prompt is unpruned (`full` tokens for layers 0-1), its KV cache holds them in 2 layers and
    the kept ones in the other 2; FLOPs = 2 full layers + 2 pruned + the ranking row."""
    kept = TEXT + fastv["kept_visual"]
    assert fastv["prompt_len"] == full and fastv["llm_tokens"] == kept
    assert fastv["prefill_gflops"] * 1e9 == pytest.approx(2 * layer(full) + 2 * layer(kept) + 2 * 64 * full + HEAD,
                                                          rel=1e-12)
    assert fastv["kv_cache_mb"] * 2**20 == pytest.approx(PER_TOKEN * (2 * (full + 2) + 2 * (kept + 2)), rel=1e-12)


def test_unpruned_case_is_the_unmodified_model():
    """The unpruned row runs transformers' model as built: no handle, no wrapped forward / generate."""
    subject = build_native_subject("qwen2.5-vl-tiny", "cpu", torch.float32)
    subject.set_case(Case("random", 144), fastv_layer=2)
    assert subject.model.fastervlm.pruning.visual_token_num == 144 and "forward" in subject.model.__dict__
    subject.set_case(Case(BASELINE, 576), fastv_layer=2)
    assert not {"fastervlm", "forward", "generate"} & set(subject.model.__dict__)
