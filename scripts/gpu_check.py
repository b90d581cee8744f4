"""GPU checks of what the CPU test suite cannot reach; run through `bash scripts/gpu_check.sh` (one command).

    (a) flash_attention_2 vs sdpa, in bf16 and fp16, same weights: kept sets of the tower-side methods (fastervlm,
        visionzip, vispruner) and the LLaVA logits (max abs diff, judged against sdpa's own distance from float32,
        plus the next token). FastV is not run under flash_attention_2: it needs sdpa or eager.
    (b) bf16 / fp16 vs float32: (1) selection arithmetic: each selector, given the low-precision tower outputs, keeps
        exactly what it keeps given the same values in float32; (2) the whole model in bf16 / fp16 vs in float32 on the
        same images and weights: kept sets of fastervlm, visionzip, vispruner and FastV.
    (c) `python -m llava.bench.efficiency --synthetic 7b` rows (and the LLaVA-OneVision-7B / Qwen2.5-VL-7B rows of
        `--synthetic onevision-7b / qwen2.5-vl-7b`) and `scripts/bench_vision_tower.py` on the GPU, their CSV / PNG
        written under the output directory.

The model is `llava.bench.synthetic`'s LLaVA-1.5-shaped model with random weights (`--shape`: the real 7B shape on a
GPU, `tiny` on a CPU), its matrices redrawn larger (as llava/model/tiny.py does) so attention is peaked and a ranking
is decided by the weights, not by rounding. Between two models (other dtype, other kernel) the tower's outputs differ
by rounding, so a top-k set may differ at near-ties. A top-k set (fastervlm, FastV) that is not identical is judged
against its scores: WARN if every token that changed sides lies within twice the largest score change of those
tokens from the reference's k-th/k+1-th boundary (a near-tie), FAIL otherwise. visionzip / vispruner select in
stages that depend on the order of all the pruned tokens (VisPruner's alternate A/B split, VisionZip's contextual
targets), so between two models only their count of changed tokens is reported (INFO); their dtype handling is
judged exactly by (b)(1).

Whatever cannot run here (no CUDA, no flash-attn, fp16 on a CPU torch without the kernels) is a SKIP line naming the
reason; (b) runs on a CPU in bf16. Writes <out>/results.json (every number), <out>/summary.md (one line per check),
<out>/efficiency/ and <out>/bench_vision_tower.*; exit status 1 if a check failed or errored, else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers.utils import is_flash_attn_2_available

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llava.bench.synthetic import build_synthetic_model, synthetic_inputs  # noqa: E402
from llava.model.tiny import spread_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOWER_METHODS = ("fastervlm", "visionzip", "vispruner")
LLM_METHODS = ("fastv",)
BUDGETS = (192, 128, 64, 144, 58, 29)  # the paper budgets of LLaVA-1.5 (VisionZip / VisPruner, and FasterVLM)
LOW_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
SPREAD = 1.5  # weight std x sqrt(fan-in) after redrawing (llava.model.tiny.spread_weights)
FASTV_LAYER = 2


# ---------------------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Check:
    name: str
    status: str  # PASS, WARN, FAIL, SKIP, ERROR
    detail: str
    numbers: dict = field(default_factory=dict)


class Report:
    def __init__(self):
        self.checks: list[Check] = []

    def add(self, name: str, status: str, detail: str, **numbers) -> Check:
        check = Check(name, status, detail, numbers)
        self.checks.append(check)
        print(f"{status:5s} {name}: {detail}", flush=True)
        return check

    def failed(self) -> bool:
        return any(c.status in ("FAIL", "ERROR") for c in self.checks)


# ---------------------------------------------------------------------------------------------------------------
# model and kept sets
# ---------------------------------------------------------------------------------------------------------------
def build_reference(shape: str, device: torch.device, seed: int):
    """The float32 sdpa model every other run is compared with (weights spread), without pruning."""
    model = build_synthetic_model(shape, device, torch.float32, "sdpa", seed=seed)
    spread_weights(model, seed, SPREAD, skip="embed")
    return model


def low_precision_copy(reference, shape: str, dtype: torch.dtype, device: torch.device, seed: int):
    """The reference's weights in a model built in `dtype`, as a checkpoint loads (buffers such as RoPE's inverse
    frequencies stay as transformers makes them, not cast down with the weights)."""
    model = build_synthetic_model(shape, device, dtype, "sdpa", seed=seed)
    model.load_state_dict(reference.state_dict())
    return model


def set_attention(model, implementation: str) -> None:
    """Switch the decoder and the CLIP tower to `implementation` (both are transformers models)."""
    model.set_attn_implementation(implementation)
    model.get_vision_tower().vision_tower.set_attn_implementation(implementation)
    got = {model.config._attn_implementation, model.get_vision_tower().vision_tower.config._attn_implementation}
    if got != {implementation}:
        raise RuntimeError(f"asked for {implementation} attention, the model runs {sorted(got)}")


def check_images(model, count: int, seed: int) -> torch.Tensor:
    """`count` random images at the tower's input size, float32 on the CPU (cast per run): (count, 3, S, S)."""
    size = model.get_vision_tower().config.image_size
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


@dataclass
class Kept:
    keep: torch.Tensor  # (N, k) kept patch indices, ascending
    scores: torch.Tensor | None  # (N, P) float32 scores the ranking used (top-k methods), else None


@torch.inference_mode()
def tower_kept(model, pixels: torch.Tensor, budgets, upcast: bool = False) -> tuple[dict, torch.Tensor]:
    """Kept sets of the tower-side methods at each budget, and the [CLS] attention (N, P) they ranked by. With
    `upcast` the selectors get the tower's outputs converted to float32 (the same values, float32 arithmetic)."""
    out = model.visual.encode(pixels.to(device=model.device, dtype=model.dtype))
    signals = {"features": out.features, "cls_attn": out.cls_attn, "keys": out.keys, "cls_token": out.cls_token}
    if upcast:
        signals = {name: value.float() for name, value in signals.items()}
    result = {}
    for method in TOWER_METHODS:
        for budget in budgets:
            model.set_pruning(model.pruning.replace(method=method, visual_token_num=budget))
            selection = model.visual.select(**signals)
            scores = out.cls_attn.float().cpu() if method == "fastervlm" else None
            result[(method, budget)] = Kept(selection.keep.sort(dim=-1).values.cpu(), scores)
    return result, out.cls_attn.float().cpu()


@torch.inference_mode()
def fastv_kept(model, pixels: torch.Tensor, ids: torch.Tensor, budgets) -> dict:
    """FastV's kept visual tokens (patch indices) per image at each budget, ranked by its layer-K attention."""
    result = {}
    for budget in budgets:
        model.set_pruning(model.pruning.replace(method="fastv", visual_token_num=budget, llm_layer=FASTV_LAYER))
        keeps, scores = [], []
        for image in pixels:  # batch 1: the prompt is the same, the ranking is per image
            mm = model.prepare_multimodal_inputs(ids, None, image[None].to(device=model.device, dtype=model.dtype))
            model.start_llm_pruning(mm)
            model(inputs_embeds=mm.inputs_embeds, attention_mask=mm.attention_mask, logits_to_keep=1)
            visual = mm.visual_mask[0].nonzero()[:, 0]  # (P,) positions of the patches, in raster order
            kept = model.llm_pruner.kept[0]
            keeps.append(torch.isin(visual, kept).nonzero()[:, 0].cpu())
            scores.append(model.llm_pruner.last_attention[0, visual].float().cpu())
        result[("fastv", budget)] = Kept(torch.stack(keeps), torch.stack(scores))
    model.set_pruning(model.pruning.replace(method="fastervlm", visual_token_num=model.get_vision_tower().num_patches))
    return result


@torch.inference_mode()
def prefill_logits(model, pixels: torch.Tensor, ids: torch.Tensor, budget: int) -> torch.Tensor:
    """float32 logits (N, L, V) of the whole prompt, one sequence per image, FasterVLM keeping `budget` tokens."""
    model.set_pruning(model.pruning.replace(method="fastervlm", visual_token_num=budget))
    images = pixels.to(device=model.device, dtype=model.dtype)
    mm = model.prepare_multimodal_inputs(ids.expand(len(images), -1), None, images)
    return model(inputs_embeds=mm.inputs_embeds, attention_mask=mm.attention_mask).logits.float().cpu()


# ---------------------------------------------------------------------------------------------------------------
# comparisons
# ---------------------------------------------------------------------------------------------------------------
def compare_kept(ref: Kept, test: Kept, budget: int) -> tuple[str, dict]:
    """Judge a kept set against the reference one (the module docstring says how). PASS: identical; WARN: every
    token that changed sides is within 2 E of the reference's k-th/k+1-th boundary, E the largest score change of
    those tokens (a swap of a and b needs ref[a] - ref[b] <= |change a| + |change b|); FAIL: some token is farther.
    Without scores (multi-stage selectors): INFO with the count."""
    changed = [sorted(set(a.tolist()) ^ set(b.tolist())) for a, b in zip(ref.keep, test.keep)]
    numbers = {"images": len(changed), "images_identical": sum(not c for c in changed),
               "tokens_swapped": sum(len(c) for c in changed) // 2}  # a swap moves one token out, one in
    if numbers["tokens_swapped"] == 0:
        return "PASS", numbers
    if ref.scores is None or test.scores is None:
        return "INFO", numbers
    worst, error = 0.0, 0.0
    for image, tokens in enumerate(changed):
        if tokens:
            ranked = ref.scores[image].sort(descending=True).values
            boundary = (ranked[budget - 1] + ranked[budget]).item() / 2
            worst = max(worst, max(abs(ref.scores[image, t].item() - boundary) for t in tokens))
            error = max(error, (ref.scores[image, tokens] - test.scores[image, tokens]).abs().max().item())
    numbers.update(swapped_score_change=error, worst_distance_to_boundary=worst)
    return ("WARN" if worst <= 2 * error else "FAIL"), numbers


def describe(status: str, numbers: dict) -> str:
    text = f"{numbers['images_identical']}/{numbers['images']} images identical"
    if numbers["tokens_swapped"]:
        text += f", {numbers['tokens_swapped']} token(s) swapped"
        if "worst_distance_to_boundary" in numbers:
            reason = "near-ties" if status == "WARN" else "NOT explained by the score change"
            text += (f" ({reason}: farthest from the k-th boundary {numbers['worst_distance_to_boundary']:.2e}, "
                     f"largest score change of a swapped token {numbers['swapped_score_change']:.2e})")
        else:
            text += " (multi-stage selection: any rank change among the pruned tokens can move it; not judged)"
    return text


def kept_checks(report: Report, label: str, ref: dict, test: dict) -> dict:
    """One check per (method, budget); returns the kept indices of both sides for results.json."""
    stored = {}
    for (method, budget), ref_kept in ref.items():
        if (method, budget) not in test:
            continue
        status, numbers = compare_kept(ref_kept, test[(method, budget)], budget)
        report.add(f"{label} {method}@{budget}", status, describe(status, numbers), **numbers)
        stored[f"{method}@{budget}"] = {"reference": ref_kept.keep.tolist(),
                                         "test": test[(method, budget)].keep.tolist()}
    return stored


def arithmetic_checks(report: Report, name: str, low: dict, upcast: dict) -> None:
    """Per method: the selection on the low-precision tower outputs equals the selection on the same values in
    float32, exactly, at every budget (the selectors must not rank in the model's dtype)."""
    for method in TOWER_METHODS:
        cases = [(b, torch.equal(low[(m, b)].keep, upcast[(m, b)].keep)) for m, b in low if m == method]
        differ = [b for b, same in cases if not same]
        report.add(f"(b) {name} selection arithmetic, {method}", "FAIL" if differ else "PASS",
                   f"kept sets from {name} tower outputs equal those from the same values in float32 at "
                   f"{len(cases) - len(differ)}/{len(cases)} budgets" + (f"; differ at {differ}" if differ else ""),
                   budgets_differing=differ)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ---------------------------------------------------------------------------------------------------------------
# the checks
# ---------------------------------------------------------------------------------------------------------------
def dtype_usable(dtype: torch.dtype, device: torch.device) -> str | None:
    """None if a tower + decoder forward runs in `dtype` on `device`, else why not."""
    try:
        conv = torch.nn.Conv2d(3, 4, 2).to(device=device, dtype=dtype)
        norm = torch.nn.LayerNorm(4).to(device=device, dtype=dtype)
        x = norm(conv(torch.randn(1, 3, 4, 4, device=device, dtype=dtype)).flatten(2).transpose(1, 2))
        torch.nn.functional.scaled_dot_product_attention(x, x, x)
        return None
    except (RuntimeError, NotImplementedError) as err:
        return f"{str(dtype).removeprefix('torch.')} does not run on {device.type} with this torch: {err}"


def flash_attention_missing(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "no CUDA device (torch.cuda.is_available() is False)" if not torch.cuda.is_available() else \
            "--device cpu was given"
    if not is_flash_attn_2_available():
        return "flash-attn is not installed (transformers.utils.is_flash_attn_2_available() is False)"
    return None


def run_precision_checks(report: Report, args, device: torch.device, results: dict) -> None:
    """(a) and (b): one float32 reference, then per low dtype: sdpa kept sets vs float32; flash vs sdpa."""
    ref_model = build_reference(args.shape, device, args.seed)
    pixels = check_images(ref_model, args.images, args.seed)
    ids = synthetic_inputs(ref_model, device, torch.float32).ids
    patches = ref_model.get_vision_tower().num_patches
    budgets = [b for b in args.budgets if b < patches]
    ref_kept, ref_cls = tower_kept(ref_model, pixels, budgets)
    ref_kept.update(fastv_kept(ref_model, pixels, ids, budgets))
    ref_logits = {b: prefill_logits(ref_model, pixels, ids, b) for b in (patches, min(budgets))}
    results["reference"] = {"shape": args.shape, "images": args.images, "patches": patches, "budgets": budgets}
    flash_skip = flash_attention_missing(device)
    if flash_skip:
        report.add("(a) flash_attention_2 vs sdpa", "SKIP", flash_skip)
    for name in args.dtypes:
        dtype = LOW_DTYPES[name]
        why_not = dtype_usable(dtype, device)
        if why_not:
            report.add(f"(b) {name} vs float32", "SKIP", why_not)
            continue
        model = low_precision_copy(ref_model, args.shape, dtype, device, args.seed)
        sdpa_kept, sdpa_cls = tower_kept(model, pixels, budgets)
        arithmetic_checks(report, name, sdpa_kept, tower_kept(model, pixels, budgets, upcast=True)[0])
        sdpa_kept.update(fastv_kept(model, pixels, ids, budgets))
        report.add(f"(b) {name} vs float32 [CLS] attention", "INFO",
                   f"max abs diff {max_abs(sdpa_cls, ref_cls):.2e} (scores sum to 1 over {patches} patches)",
                   max_abs_diff=max_abs(sdpa_cls, ref_cls))
        results[f"b_{name}"] = kept_checks(report, f"(b) {name} vs float32", ref_kept, sdpa_kept)
        if not flash_skip:
            try:  # a flash-attn / kernel problem must not cost the other dtype's checks
                results[f"a_{name}"] = flash_vs_sdpa(report, model, name, pixels, ids, budgets, sdpa_kept, sdpa_cls,
                                                     ref_logits)
            except Exception as err:
                report.add(f"(a) {name} flash_attention_2 vs sdpa", "ERROR", f"{type(err).__name__}: {err}")
                results[f"a_{name}_traceback"] = traceback.format_exc()
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def flash_vs_sdpa(report: Report, model, name: str, pixels, ids, budgets, sdpa_kept, sdpa_cls, ref_logits,
                  implementation: str = "flash_attention_2") -> dict:
    """(a) in one dtype: the same weights under flash_attention_2 (`implementation`: another kernel, for a CPU test
    of this function); kept sets vs sdpa, logits vs sdpa and float32."""
    kernel = "flash" if implementation == "flash_attention_2" else implementation
    sdpa_logits = {b: prefill_logits(model, pixels, ids, b) for b in ref_logits}
    set_attention(model, implementation)
    try:
        flash_kept, flash_cls = tower_kept(model, pixels, budgets)
        flash_logits = {b: prefill_logits(model, pixels, ids, b) for b in ref_logits}
    finally:
        set_attention(model, "sdpa")
    report.add(f"(a) {name} {kernel} vs sdpa [CLS] attention", "INFO",
               f"max abs diff {max_abs(flash_cls, sdpa_cls):.2e}", max_abs_diff=max_abs(flash_cls, sdpa_cls))
    stored = kept_checks(report, f"(a) {name} {kernel} vs sdpa", sdpa_kept, flash_kept)
    report.add(f"(a) {name} fastv", "SKIP", "FastV runs on sdpa / eager only (llava/model/pruning/fastv.py)")
    for budget, ref in ref_logits.items():
        flash_sdpa = max_abs(flash_logits[budget], sdpa_logits[budget])
        flash_ref, sdpa_ref = max_abs(flash_logits[budget], ref), max_abs(sdpa_logits[budget], ref)
        same_next = bool(torch.equal(flash_logits[budget][:, -1].argmax(-1), sdpa_logits[budget][:, -1].argmax(-1)))
        # flash is close if it is about as far from float32 as sdpa in the same dtype is
        ok = flash_ref <= 2 * sdpa_ref + 1e-3 * ref.abs().max().item()
        status = "FAIL" if not ok else "PASS" if same_next else "WARN"  # a near-tie argmax may flip in bf16
        report.add(f"(a) {name} {kernel} vs sdpa logits, fastervlm@{budget}", status,
                   f"max abs diff {flash_sdpa:.3e} ({kernel} vs float32 {flash_ref:.3e}, "
                   f"sdpa vs float32 {sdpa_ref:.3e}, "
                   f"|logits| <= {ref.abs().max().item():.1f}); next token {'same' if same_next else 'DIFFERS'}",
                   max_abs_diff=flash_sdpa, flash_vs_fp32=flash_ref, sdpa_vs_fp32=sdpa_ref, same_next_token=same_next)
    return stored


NATIVE_7B = ("onevision-7b", "qwen2.5-vl-7b")  # transformers' LLaVA-OneVision / Qwen2.5-VL at 7B (bench/native.py)


def run_benchmarks(report: Report, args, device: torch.device, out: Path) -> None:
    """(c): the efficiency rows of the 7B shape and the vision tower benchmark, each in its own process."""
    if device.type != "cuda":
        reason = "no CUDA device" if not torch.cuda.is_available() else "--device cpu was given"
        for shape in ("7b",) + NATIVE_7B:
            report.add(f"(c) efficiency --synthetic {shape}", "SKIP", f"{reason}; 7B rows on a CPU would take hours")
        report.add("(c) bench_vision_tower.py", "SKIP", f"{reason}; the CPU numbers are in README.md")
        return
    runs = {
        "(c) efficiency --synthetic 7b": (
            [sys.executable, "-m", "llava.bench.efficiency", "--synthetic", "7b", "--device", "cuda",
             "--methods", "fastervlm,fastv,visionzip,vispruner", "--budgets", "576,192,128,64,144,58,29",
             "--new-tokens", "32", "--repeats", str(args.repeats), "--warmup", "1",
             "--output-dir", str(out / "efficiency")],
            out / "efficiency" / "efficiency_synthetic-7b.csv"),
        **{f"(c) efficiency --synthetic {shape}": (  # the methods without [CLS], 75/90/95% fewer (the defaults)
            [sys.executable, "-m", "llava.bench.efficiency", "--synthetic", shape, "--device", "cuda",
             "--new-tokens", "32", "--repeats", str(args.repeats), "--warmup", "1",
             "--output-dir", str(out / "efficiency")],
            out / "efficiency" / f"efficiency_synthetic-{shape}.csv") for shape in NATIVE_7B},
        "(c) bench_vision_tower.py": (
            [sys.executable, str(REPO / "scripts" / "bench_vision_tower.py"), "--device", "cuda", "--batch", "1",
             "--repeats", "20", "--csv", str(out / "bench_vision_tower.csv"),
             "--plot", str(out / "bench_vision_tower.png")],
            out / "bench_vision_tower.csv"),
    }
    for name, (command, product) in runs.items():
        log = out / (name.split()[-1].replace(".py", "") + ".log")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        start = time.perf_counter()
        try:
            with open(log, "w") as f:
                rc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                    timeout=args.bench_timeout).returncode
        except subprocess.TimeoutExpired:
            report.add(name, "ERROR", f"did not finish in {args.bench_timeout} s; its output so far: {log}")
            continue
        seconds = time.perf_counter() - start
        if rc != 0 or not product.exists():
            report.add(name, "ERROR", f"exit code {rc}; see {log}")
        else:
            report.add(name, "PASS", f"{product} ({seconds:.0f} s; log {log})", seconds=seconds)


# ---------------------------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "device": str(device), "cuda": torch.version.cuda}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import flash_attn  # optional extra (CUDA only): its version is reported when it is installed

        env["flash_attn"] = flash_attn.__version__
    except ImportError:
        env["flash_attn"] = None
    return env


def write_summary(report: Report, env: dict, args, out: Path, seconds: float) -> Path:
    counts = {s: sum(c.status == s for c in report.checks) for s in ("PASS", "WARN", "FAIL", "ERROR", "SKIP")}
    lines = [f"# GPU check ({time.strftime('%Y-%m-%d %H:%M')}, {seconds:.0f} s)", "",
             "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), "",
             f"Model: llava.bench.synthetic `{args.shape}` shape, random weights (spread), "
             f"{args.images} random images; "
             f"float32 sdpa is the reference.", "",
             "Result: " + ", ".join(f"{n} {s}" for s, n in counts.items()), "",
             "| check | status | detail |", "|---|---|---|"]
    lines += [f"| {c.name} | {c.status} | {c.detail} |" for c in report.checks]
    lines += ["", "A kept set between two models: PASS identical; WARN only near-ties changed sides "
              "(within twice their score change of the budget's boundary); FAIL a token farther than that changed "
              "sides; INFO visionzip / vispruner, counted, not judged (their stages depend on the whole ranking).",
              "Numbers and kept indices: results.json. Benchmarks: efficiency/, bench_vision_tower.*"]
    path = out / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu_check"))
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--shape", default=None, help="synthetic shape (default: 7b on a GPU, tiny on a CPU)")
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated low precisions to check (default: bfloat16,float16 on a GPU, bfloat16 "
                             "on a CPU)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="visual tokens kept per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of the efficiency benchmark")
    parser.add_argument("--bench-timeout", type=int, default=240, help="seconds allowed to each benchmark in (c)")
    parser.add_argument("--skip-benchmarks", action="store_true", help="leave out (c)")
    args = parser.parse_args(argv)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here; running the CPU part", file=sys.stderr)
    device = torch.device("cuda" if cuda else "cpu")
    args.shape = args.shape or ("7b" if cuda else "tiny")
    args.dtypes = (args.dtypes or ("bfloat16,float16" if cuda else "bfloat16")).split(",")
    unknown = [d for d in args.dtypes if d not in LOW_DTYPES]
    if unknown:
        raise SystemExit(f"--dtypes: unknown {unknown}; choose from {sorted(LOW_DTYPES)}")
    args.budgets = [int(b) for b in args.budgets.split(",") if b.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report, env = Report(), environment(device)
    print(f"gpu_check on {env.get('gpu', 'CPU')}: shape {args.shape}, low precisions {args.dtypes}, out {args.out}")
    results: dict = {"environment": env}
    try:
        run_precision_checks(report, args, device, results)
    except Exception as err:  # keep going: the benchmarks and the summary still get written
        report.add("(a)/(b) precision checks", "ERROR", f"{type(err).__name__}: {err}")
        results["traceback"] = traceback.format_exc()
    if args.skip_benchmarks:
        report.add("(c) benchmarks", "SKIP", "--skip-benchmarks")
    else:
        run_benchmarks(report, args, device, args.out)
    seconds = time.perf_counter() - start
    results["checks"] = [c.__dict__ for c in report.checks]
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    summary = write_summary(report, env, args, args.out, seconds)
    print(f"wrote {summary} and {args.out / 'results.json'} ({seconds:.0f} s)")
    return 1 if report.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
