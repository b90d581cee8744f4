"""scripts/gpu_check.sh on a CPU: it runs, says exactly what it skipped, exits 0, writes its summary, and the kept
sets it reports for (b) equal oracles computed here from transformers' own classes:
- FasterVLM in float32: the original recipe, eager CLIP with output_attentions, layer -2, head-mean [CLS] row, top-k;
- FasterVLM in bfloat16: the bf16 CLIP's hidden states, that layer's own layer_norm1 / q_proj / k_proj in bf16, and
  the [CLS] softmax written out here in float32 (the scoring precision llava's tower documents);
- FastV in float32: the public FastV rule (pkunlp-icler/FastV): eager attention of layer K (0-based K - 1), head
  mean of the last prompt token's row, top-k over the image tokens.
The judging rule of the script (near-tie vs not) is checked on hand-made scores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import gpu_check  # noqa: E402
from gpu_check import Kept, compare_kept  # noqa: E402

BUDGET, IMAGES, SEED = 58, 2, 0


# --------------------------------------------------------------------------- the judging rule, by hand
def kept(rows, scores=None):
    return Kept(torch.tensor(rows), None if scores is None else torch.tensor(scores))


REF_SCORES = [[0.40, 0.30, 0.2002, 0.2000, 0.05, 0.01]]  # top-3 {0, 1, 2}; boundary (0.2002 + 0.2000) / 2


def test_identical_sets_pass():
    assert compare_kept(kept([[0, 1, 2]], REF_SCORES), kept([[0, 1, 2]], REF_SCORES), 3)[0] == "PASS"


def test_a_swap_at_the_boundary_within_the_score_change_is_a_near_tie():
    test_scores = [[0.40, 0.30, 0.1999, 0.2001, 0.05, 0.01]]  # tokens 2 and 3 trade places
    status, numbers = compare_kept(kept([[0, 1, 2]], REF_SCORES), kept([[0, 1, 3]], test_scores), 3)
    assert status == "WARN"
    assert numbers["tokens_swapped"] == 1 and numbers["images_identical"] == 0
    assert numbers["swapped_score_change"] == pytest.approx(3e-4, rel=1e-4)  # token 2: 0.2002 -> 0.1999
    assert numbers["worst_distance_to_boundary"] == pytest.approx(1e-4, rel=1e-3)  # both sit 1e-4 from 0.2001


def test_a_swap_far_from_the_boundary_fails():
    # token 4 (0.05) kept instead of token 2 while no score moved by more than 1e-4: not rounding, a bug
    test_scores = [[0.40, 0.30, 0.2001, 0.2000, 0.0501, 0.01]]
    status, numbers = compare_kept(kept([[0, 1, 2]], REF_SCORES), kept([[0, 1, 4]], test_scores), 3)
    assert status == "FAIL"
    assert numbers["worst_distance_to_boundary"] == pytest.approx(0.2001 - 0.05, rel=1e-6)


def test_multi_stage_selectors_are_counted_not_judged():
    status, numbers = compare_kept(kept([[0, 1, 2], [0, 1, 2]]), kept([[0, 1, 2], [3, 4, 5]]), 3)
    assert (status, numbers["tokens_swapped"], numbers["images_identical"]) == ("INFO", 3, 1)


# --------------------------------------------------------------------------- the script on this CPU
@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out), "--budgets", str(BUDGET),
                           "--images", str(IMAGES), "--seed", str(SEED)],
                          capture_output=True, text=True, env=env, timeout=600)
    return proc, out


def test_the_cpu_run_says_what_it_skipped_and_exits_0(cpu_run):
    proc, out = cpu_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    for skipped in ("SKIP  (a) flash_attention_2 vs sdpa: no CUDA device (torch.cuda.is_available() is False)",
                    "SKIP  (c) efficiency --synthetic 7b: no CUDA device; 7B rows on a CPU would take hours",
                    "SKIP  (c) efficiency --synthetic onevision-7b: no CUDA device; 7B rows on a CPU would take hours",
                    "SKIP  (c) efficiency --synthetic qwen2.5-vl-7b: no CUDA device; 7B rows on a CPU would take hours",
                    "SKIP  (c) bench_vision_tower.py: no CUDA device; the CPU numbers are in README.md"):
        assert skipped in lines
    # bf16 is what a CPU runs; fp16 is left to the GPU (not asked for here, so not even a SKIP)
    assert not any("float16 vs" in line and "bfloat16" not in line for line in lines)
    summary = (out / "summary.md").read_text()
    for method in ("fastervlm", "visionzip", "vispruner", "fastv"):
        assert f"| (b) bfloat16 vs float32 {method}@{BUDGET} |" in summary
    log = (out / "log.txt").read_text()  # everything the python part printed; the wrapper adds its last line
    assert proc.stdout == log + f"summary: {out}/summary.md (exit status 0)\n"
    checks = json.loads((out / "results.json").read_text())["checks"]
    arithmetic = [c for c in checks if "selection arithmetic" in c["name"]]
    assert [c["status"] for c in arithmetic] == ["PASS"] * 3


def fastervlm_oracle_fp32(clip, pixels):
    """The public FasterVLM recipe: eager attentions of every layer, layer -2, heads averaged, [CLS] row."""
    clip.set_attn_implementation("eager")
    out = clip(pixels, output_attentions=True)
    cls_attn = out.attentions[-2][:, :, 0, 1:].mean(dim=1)  # (N, P)
    return cls_attn.topk(BUDGET, dim=-1).indices.sort(dim=-1).values


def fastervlm_oracle_low(clip, pixels):
    """bf16 hidden states and projections; the [CLS] softmax over keys in float32, heads averaged."""
    out = clip(pixels, output_hidden_states=True)
    layers = clip.encoder.layers  # transformers 5: CLIPVisionModel holds the encoder directly
    chosen = len(layers) - 2  # hidden_states[-2] is the output of this layer
    layer = layers[chosen]
    x = layer.layer_norm1(out.hidden_states[chosen])
    heads = layer.self_attn.num_heads
    n, t, c = x.shape
    q = layer.self_attn.q_proj(x)[:, :1].float().view(n, 1, heads, c // heads).transpose(1, 2)
    k = layer.self_attn.k_proj(x).float().view(n, t, heads, c // heads).transpose(1, 2)
    probs = ((q @ k.transpose(-1, -2)) * (c // heads) ** -0.5).softmax(dim=-1)  # (N, H, 1, T)
    cls_attn = probs.mean(dim=1)[:, 0, 1:]
    return cls_attn.topk(BUDGET, dim=-1).indices.sort(dim=-1).values


@torch.no_grad()
def test_reported_fastervlm_sets_equal_the_oracles(cpu_run):
    from llava.bench.synthetic import build_synthetic_model

    _, out = cpu_run
    stored = json.loads((out / "results.json").read_text())["b_bfloat16"][f"fastervlm@{BUDGET}"]
    reference = gpu_check.build_reference("tiny", torch.device("cpu"), SEED)  # the same weights as the run
    pixels = gpu_check.check_images(reference, IMAGES, SEED)  # and the same images
    expected_fp32 = fastervlm_oracle_fp32(reference.get_vision_tower().vision_tower, pixels)
    assert stored["reference"] == expected_fp32.tolist()
    low = build_synthetic_model("tiny", dtype=torch.bfloat16)
    low.load_state_dict(reference.state_dict())
    expected_bf16 = fastervlm_oracle_low(low.get_vision_tower().vision_tower, pixels.bfloat16())
    assert stored["test"] == expected_bf16.tolist()
    # and the run's verdict counts the same difference the oracles show
    swapped = sum(len(set(a.tolist()) - set(b.tolist())) for a, b in zip(expected_fp32, expected_bf16))
    check = next(c for c in json.loads((out / "results.json").read_text())["checks"]
                 if c["name"] == f"(b) bfloat16 vs float32 fastervlm@{BUDGET}")
    assert check["numbers"]["tokens_swapped"] == swapped


@torch.no_grad()
def test_reported_fastv_set_equals_the_public_rule(cpu_run):
    from llava.bench.synthetic import build_synthetic_model, synthetic_inputs

    _, out = cpu_run
    stored = json.loads((out / "results.json").read_text())["b_bfloat16"][f"fastv@{BUDGET}"]
    reference = gpu_check.build_reference("tiny", torch.device("cpu"), SEED)
    pixels = gpu_check.check_images(reference, IMAGES, SEED)
    eager = build_synthetic_model("tiny", attn_implementation="eager")  # no pruning: every visual token
    eager.load_state_dict(reference.state_dict())
    ids = synthetic_inputs(eager, "cpu", torch.float32).ids
    expected = []
    for image in pixels:
        mm = eager.prepare_multimodal_inputs(ids, None, image[None])
        attentions = eager(inputs_embeds=mm.inputs_embeds, output_attentions=True).attentions
        last_row = attentions[gpu_check.FASTV_LAYER - 1][0, :, -1, :].mean(dim=0)  # (L,)
        visual = mm.visual_mask[0].nonzero()[:, 0]
        expected.append(last_row[visual].topk(BUDGET).indices.sort().values.tolist())
    assert stored["reference"] == expected


# --------------------------------------------------------------------------- parts a GPU runs, exercised here
def tiny_args(**changes):
    import argparse

    return argparse.Namespace(**{"shape": "tiny", "images": IMAGES, "seed": SEED, "budgets": [BUDGET],
                                 "dtypes": ["bfloat16"], **changes})


def test_a_selector_that_ranks_in_the_model_dtype_is_caught(monkeypatch):
    """(b)(1) must be able to fail: a selector scoring in bf16 keeps other tokens than on the same values in fp32."""
    from llava.model.pruning import METHODS

    def bf16_scoring(features, cls_attn, budget, seed=0):  # [CLS] attention x feature norm, in the features' dtype
        score = cls_attn.to(features.dtype) * features.norm(dim=-1)
        return score.topk(budget, dim=-1).indices.sort(dim=-1).values

    monkeypatch.setitem(METHODS, "bf16_scoring", bf16_scoring)
    monkeypatch.setattr(gpu_check, "TOWER_METHODS", ("fastervlm", "bf16_scoring"))
    reference = gpu_check.build_reference("tiny", torch.device("cpu"), SEED)
    pixels = gpu_check.check_images(reference, 4, SEED)
    low = gpu_check.low_precision_copy(reference, "tiny", torch.bfloat16, torch.device("cpu"), SEED)
    budgets = [29, 58, 144]
    report = gpu_check.Report()
    gpu_check.arithmetic_checks(report, "bfloat16", gpu_check.tower_kept(low, pixels, budgets)[0],
                                gpu_check.tower_kept(low, pixels, budgets, upcast=True)[0])
    assert [(c.name.split(", ")[1], c.status) for c in report.checks] == [("fastervlm", "PASS"),
                                                                          ("bf16_scoring", "FAIL")]


def test_the_flash_path_runs_with_eager_standing_in(monkeypatch):
    """(a) only runs on a GPU with flash-attn; its code runs here with eager attention in flash's place, so a slip in
    it shows before GPU time is spent. Eager and sdpa compute the same attention: the logits must pass the rule."""
    import functools

    monkeypatch.setattr(gpu_check, "flash_attention_missing", lambda device: None)
    monkeypatch.setattr(gpu_check, "flash_vs_sdpa", functools.partial(gpu_check.flash_vs_sdpa,
                                                                      implementation="eager"))
    report, results = gpu_check.Report(), {}
    gpu_check.run_precision_checks(report, tiny_args(), torch.device("cpu"), results)
    status = {c.name: c for c in report.checks}
    for budget in (576, BUDGET):
        check = status[f"(a) bfloat16 eager vs sdpa logits, fastervlm@{budget}"]
        assert check.status == "PASS", check.detail
    assert status[f"(a) bfloat16 eager vs sdpa fastervlm@{BUDGET}"].status in ("PASS", "WARN")
    assert status["(a) bfloat16 fastv"].status == "SKIP"
    assert results["a_bfloat16"][f"fastervlm@{BUDGET}"]["reference"] == results["b_bfloat16"][
        f"fastervlm@{BUDGET}"]["test"]  # (a)'s reference is (b)'s bf16 sdpa run
