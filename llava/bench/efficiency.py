"""Efficiency benchmark: what each pruning method buys at each visual-token budget.

    python -m llava.bench.efficiency --synthetic 7b --methods fastervlm,fastv,visionzip,vispruner \\
        --budgets 576,144,58,29 --new-tokens 32
    python -m llava.bench.efficiency --model-path DIR [--vision-tower-path DIR] ...
    python -m llava.bench.efficiency --synthetic tiny --repeats 1 --warmup 0     # smoke run

For one image and one LLaVA-style prompt, each (method, budget) is run end to end with greedy decoding of
`--new-tokens` tokens, and these are reported as the median over `--repeats` runs after `--warmup` runs (repeats are
interleaved over all cases, so drift in machine speed hits every case alike):

  vision_ms       the vision tower with [CLS] attention (ours), next to the same layers without it (vision_plain_ms);
                  3 alternating pairs per pass
  ttft_ms         time to first token: tower + selection + projector + splice + LLM prefill (+ argmax)
  prefill_ms      the LLM prefill alone
  decode_tok_s    tokens per second of the decode steps after the first token
  e2e_ms          time to first token + the decode steps
  prefill_gflops  analytic LLM prefill FLOPs (llava.bench.flops), and flops_bound = unpruned FLOPs / these
  kv_cache_mb     bytes held by the KV cache after generation (measured on the cache; FastV keeps K full layers)
  peak_mem_mb     peak memory above the weights during one run: CUDA allocator peak on GPU, process RSS peak on CPU
                  (sampled every 2 ms: coarse, the allocator keeps freed memory)

Every row also has its ratio to the unpruned model (`<metric>_ratio`), measured in the same session: FasterVLM at
the full budget keeps every token, which is vanilla LLaVA plus the [CLS] row. `prefill_speedup` is unpruned
prefill_ms / this prefill_ms, and `speedup_over_bound` = prefill_speedup / flops_bound (1 = as fast as FLOPs allow).
Timing uses CUDA events on GPU, `time.perf_counter` on CPU. Writes `<output-dir>/efficiency_<model>.csv` and `.png`.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llava.atomic import atomic_path, atomic_write
from llava.bench.flops import LlamaShape, prefill_flops
from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.pruning import METHODS, get_llm_pruner

BASELINE = "unpruned"
DEFAULT_METHODS = "fastervlm,fastv,visionzip,vispruner"
DEFAULT_BUDGETS = "576,144,58,29"
TOWER_PAIRS = 3  # (with [CLS], plain) tower timings per pass
PROMPT_BEFORE, PROMPT_AFTER = 35, 29  # text tokens around <image> in a LLaVA-1.5 VQA prompt (system + question)


# ---------------------------------------------------------------------------------------------------------------
# timing and memory
# ---------------------------------------------------------------------------------------------------------------
class Clock:
    """Timestamps: CUDA events on GPU (read after one synchronize), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end)
        return (end - start) * 1000.0


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


class PeakMemory:
    """Peak memory above the level at entry, in bytes: the CUDA allocator's peak, or sampled process RSS."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.peak: float = float("nan")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            return self
        self.start = _rss_bytes()
        self._max = self.start or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self._max = max(self._max, _rss_bytes() or 0)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = float(torch.cuda.max_memory_allocated() - self.start)
            return False
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, _rss_bytes() or 0)
        if self.start is not None:
            self.peak = float(self._max - self.start)
        return False


def cache_bytes(cache) -> int:
    """Keys + values held by a transformers Cache (each layer may have its own length)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


# ---------------------------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    method: str
    budget: int  # visual tokens per crop

    @property
    def label(self) -> str:
        return f"{self.method}@{self.budget}"


@dataclass
class Sample:
    prepare_ms: float
    prefill_ms: float
    decode_ms: float
    kept: int  # visual tokens the LLM keeps (after FastV's layer K for FastV)
    prompt_len: int  # tokens of the prompt the LLM receives (before any in-LLM pruning)
    text_len: int  # its text tokens
    kv_bytes: int


@dataclass
class Inputs:
    ids: torch.Tensor  # (1, L) with IMAGE_TOKEN_INDEX
    pixels: torch.Tensor
    image_sizes: list | None


@torch.inference_mode()
def run_once(model, inputs: Inputs, new_tokens: int, clock: Clock) -> Sample:
    """encode -> select -> project -> splice, prefill, then `new_tokens - 1` greedy decode steps with the cache."""
    t0 = clock.mark()
    mm = model.prepare_multimodal_inputs(inputs.ids, None, inputs.pixels, inputs.image_sizes)
    kept = model.start_llm_pruning(mm) or mm.v_token_num
    t1 = clock.mark()
    out = model(inputs_embeds=mm.inputs_embeds, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
    t2 = clock.mark()
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    for _ in range(new_tokens - 1):
        out = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
    t3 = clock.mark()
    prompt_len = mm.inputs_embeds.shape[1]
    return Sample(clock.ms(t0, t1), clock.ms(t1, t2), clock.ms(t2, t3), int(kept[0]), prompt_len,
                  prompt_len - int(mm.v_token_num[0]), cache_bytes(cache))


@torch.inference_mode()
def time_tower(model, pixels: torch.Tensor, clock: Clock, plain_first: bool = False) -> tuple[float, float]:
    """(with [CLS] attention, plain) ms: our tower vs the same layers without the [CLS] row (features only)."""
    tower = model.get_vision_tower()
    crops = [pixels] if isinstance(pixels, torch.Tensor) else list(pixels)
    pixels = torch.cat([c.flatten(0, -4) for c in crops]).to(device=tower.device, dtype=tower.dtype)  # (N, 3, S, S)

    def plain():
        hidden = tower.embed(pixels)
        for layer in tower.layers()[: tower.attn_layer + 1]:
            hidden = tower.run_layer(layer, hidden)
        return hidden[:, 1:]

    runs = [("plain", plain), ("cls", lambda: tower(pixels))]
    times = {}
    for name, fn in runs if plain_first else runs[::-1]:
        start = clock.mark()
        fn()
        times[name] = clock.ms(start, clock.mark())
    return times["cls"], times["plain"]


def set_case(model, case: Case, fastv_layer: int) -> None:
    per_crop = model.get_vision_tower().num_patches
    if case.method == BASELINE:
        pruning = model.pruning.replace(method="fastervlm", visual_token_num=per_crop)
    else:
        pruning = model.pruning.replace(method=case.method, visual_token_num=case.budget, llm_layer=fastv_layer)
    model.set_pruning(pruning)


# ---------------------------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Result:
    case: Case
    samples: list[Sample] = field(default_factory=list)
    peak_bytes: float = float("nan")


def median(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def benchmark(model, inputs: Inputs, cases: list[Case], new_tokens: int, repeats: int, warmup: int,
              fastv_layer: int = 2, log=print) -> tuple[list[Result], dict]:
    """Run every case `warmup + repeats` times, interleaved (each pass starts one case later, and the two tower
    variants swap order, so slow drifts and order effects spread over all cases); then one run per case for peak
    memory."""
    device = model.device
    clock = Clock(device)
    results = {c.label: Result(c) for c in cases}
    tower = {"vision_ms": [], "vision_plain_ms": []}
    for rep in range(warmup + repeats):
        timed = rep >= warmup
        for pair in range(TOWER_PAIRS):  # the tower alone is cheap next to a case: time it more often
            with_cls, plain = time_tower(model, inputs.pixels, clock, plain_first=(rep + pair) % 2 == 1)
            if timed:
                tower["vision_ms"].append(with_cls)
                tower["vision_plain_ms"].append(plain)
        shift = rep % len(cases)
        for case in cases[shift:] + cases[:shift]:
            set_case(model, case, fastv_layer)
            sample = run_once(model, inputs, new_tokens, clock)
            if timed:
                results[case.label].samples.append(sample)
        log(f"  pass {rep + 1}/{warmup + repeats} ({'timed' if timed else 'warm-up'}) done")
    for case in cases:
        set_case(model, case, fastv_layer)
        with PeakMemory(device) as peak:
            run_once(model, inputs, new_tokens, clock)
        results[case.label].peak_bytes = peak.peak
    set_case(model, Case(BASELINE, 0), fastv_layer)
    return list(results.values()), {k: median(v) for k, v in tower.items()}


def summarize(results: list[Result], tower: dict, shape: LlamaShape, fastv_layer: int, new_tokens: int,
              device_name: str, model_name: str) -> list[dict]:
    """One row per case with medians, analytic FLOPs and ratios to the unpruned case."""
    rows = []
    for r in results:
        s = r.samples
        prepare = median([x.prepare_ms for x in s])
        prefill = median([x.prefill_ms for x in s])
        decode = median([x.decode_ms for x in s])
        ttft = median([x.prepare_ms + x.prefill_ms for x in s])
        e2e = median([x.prepare_ms + x.prefill_ms + x.decode_ms for x in s])
        first = s[0]
        llm_tokens = first.text_len + first.kept  # what the (last) decoder layers see
        in_llm = get_llm_pruner(r.case.method) is not None if r.case.method != BASELINE else False
        flops = prefill_flops(shape, first.prompt_len, llm_tokens, fastv_layer if in_llm else 0)
        rows.append({
            "model": model_name, "device": device_name, "method": r.case.method, "budget": r.case.budget,
            "kept_visual": first.kept, "prompt_len": first.prompt_len, "llm_tokens": llm_tokens,
            "vision_ms": tower["vision_ms"], "vision_plain_ms": tower["vision_plain_ms"],
            "cls_overhead_pct": 100.0 * (tower["vision_ms"] / tower["vision_plain_ms"] - 1.0),
            "prepare_ms": prepare, "prefill_ms": prefill, "ttft_ms": ttft,
            "decode_tok_s": (new_tokens - 1) / (decode / 1000.0) if new_tokens > 1 and decode > 0 else float("nan"),
            "e2e_ms": e2e, "prefill_gflops": flops / 1e9, "kv_cache_mb": first.kv_bytes / 2**20,
            "peak_mem_mb": r.peak_bytes / 2**20, "repeats": len(s), "new_tokens": new_tokens,
        })
    base = next(row for row in rows if row["method"] == BASELINE)
    for row in rows:
        for key in ("ttft_ms", "prefill_ms", "decode_tok_s", "e2e_ms", "prefill_gflops", "kv_cache_mb", "peak_mem_mb"):
            row[f"{key}_ratio"] = _ratio(row[key], base[key])
        row["flops_bound"] = _ratio(base["prefill_gflops"], row["prefill_gflops"])
        row["prefill_speedup"] = _ratio(base["prefill_ms"], row["prefill_ms"])
        row["speedup_over_bound"] = _ratio(row["prefill_speedup"], row["flops_bound"])
    return rows


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------------------------
TABLE = [  # header, key, format, ratio key
    ("method", "method", "{}", None), ("budget", "budget", "{}", None), ("LLM tok", "llm_tokens", "{}", None),
    ("TTFT ms", "ttft_ms", "{:.1f}", "ttft_ms_ratio"), ("prefill ms", "prefill_ms", "{:.1f}", "prefill_ms_ratio"),
    ("speedup", "prefill_speedup", "{:.2f}x", None), ("FLOPs bound", "flops_bound", "{:.2f}x", None),
    ("meas/bound", "speedup_over_bound", "{:.2f}", None),
    ("decode tok/s", "decode_tok_s", "{:.1f}", "decode_tok_s_ratio"), ("e2e ms", "e2e_ms", "{:.1f}", "e2e_ms_ratio"),
    ("GFLOPs", "prefill_gflops", "{:.1f}", None), ("KV MB", "kv_cache_mb", "{:.2f}", "kv_cache_mb_ratio"),
    ("peak MB", "peak_mem_mb", "{:.1f}", "peak_mem_mb_ratio"),
]


def _cell(row: dict, key: str, fmt: str, ratio: str | None) -> str:
    value = row[key]
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    text = fmt.format(value)
    if ratio is not None and not math.isnan(row[ratio]):
        text += f" ({row[ratio]:.2f}x)"
    return text


def format_table(rows: list[dict]) -> str:
    cells = [[h for h, *_ in TABLE]] + [[_cell(r, k, f, q) for _, k, f, q in TABLE] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE))]
    lines = ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    r = rows[0]
    head = (f"model: {r['model']}   device: {r['device']}   new tokens: {r['new_tokens']}   "
            f"median of {r['repeats']} runs\n"
            f"vision tower: {r['vision_ms']:.1f} ms with [CLS] attention vs {r['vision_plain_ms']:.1f} ms without "
            f"({r['cls_overhead_pct']:+.1f}%)\n"
            f"(x): ratio to the unpruned model (first row); speedup = unpruned prefill / prefill; "
            f"FLOPs bound = unpruned FLOPs / FLOPs")
    return head + "\n" + "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next(r for r in rows if r["method"] == BASELINE)
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != BASELINE]
    budgets = sorted({r["budget"] for r in rows if r["method"] != BASELINE}, reverse=True)
    x = {b: i for i, b in enumerate(budgets)}
    panels = [("ttft_ms", "time to first token (ms)"), ("prefill_speedup", "LLM prefill speedup (x)"),
              ("decode_tok_s", "decode (tokens/s)"), ("kv_cache_mb", "KV cache (MB)")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (key, title) in zip(axes.flat, panels):
        for i, m in enumerate(methods):
            mine = [r for r in rows if r["method"] == m]
            line, = ax.plot([x[r["budget"]] for r in mine], [r[key] for r in mine], "o-", label=m)
            if key == "prefill_speedup":
                ax.plot([x[r["budget"]] for r in mine], [r["flops_bound"] for r in mine], ":",
                        color=line.get_color(), label=f"{m} FLOPs bound")
        if key != "prefill_speedup":
            ax.axhline(base[key], color="gray", ls="--", label="unpruned")
        ax.set_title(title)
        ax.set_xticks(range(len(budgets)), [str(b) for b in budgets])
        ax.set_xlabel("visual tokens kept per crop")
        ax.grid(alpha=0.3)
    axes.flat[1].legend(fontsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{base['model']} on {base['device']}: median of {base['repeats']} runs, "
                 f"{base['new_tokens']} new tokens", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # the temporary name keeps the extension: savefig picks the format from it
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# model and inputs
# ---------------------------------------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"CPU {cpu}, {threads} thread{'s' if threads != 1 else ''}"


def synthetic_inputs(model, device, dtype) -> Inputs:
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    before = torch.randint(3, vocab, (PROMPT_BEFORE - 1,), generator=gen)
    after = torch.randint(3, vocab, (PROMPT_AFTER,), generator=gen)
    ids = torch.cat([torch.tensor([1]), before, torch.tensor([IMAGE_TOKEN_INDEX]), after])[None].to(device)
    size = model.get_vision_tower().config.image_size
    pixels = torch.randn(1, 3, size, size, generator=gen).to(device=device, dtype=dtype)
    return Inputs(ids, pixels, None)


def checkpoint_inputs(model, tokenizer, processor, device, dtype, image_path: str | None) -> Inputs:
    import numpy as np
    from PIL import Image

    from llava.conversation import conv_templates
    from llava.mm_utils import load_image, process_images, tokenizer_image_token

    if image_path:
        image = load_image(image_path)
    else:
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat is shown in this image? Answer in detail.")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None].to(device)
    pixels = process_images([image], processor, model.config)
    pixels = pixels.to(device=device, dtype=dtype) if isinstance(pixels, torch.Tensor) else \
        [p.to(device=device, dtype=dtype) for p in pixels]
    return Inputs(ids, pixels, [image.size])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-path", help="a LLaVA checkpoint directory (liuhaotian layout)")
    source.add_argument("--synthetic", choices=["7b", "13b", "small", "tiny"],
                        help="random weights in a LLaVA-1.5 shape (see llava.bench.synthetic)")
    parser.add_argument("--vision-tower-path", default=None)
    parser.add_argument("--image", default=None, help="image for --model-path (default: random pixels)")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated ({DEFAULT_METHODS})")
    parser.add_argument("--budgets", default=DEFAULT_BUDGETS, help=f"visual tokens per crop ({DEFAULT_BUDGETS})")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per run (greedy)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fastv-layer", type=int, default=2, help="FastV's K (PruningConfig.llm_layer)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None,
                        help="float16 / bfloat16 / float32 (default: fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--output-dir", default="outputs/efficiency")
    args = parser.parse_args(argv)
    if args.new_tokens < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--new-tokens and --repeats must be >= 1, --warmup >= 0")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; registered: {sorted(METHODS)}")
    budgets = [int(b) for b in args.budgets.split(",") if b.strip()]

    if args.synthetic:
        from llava.bench.synthetic import build_synthetic_model

        model_name = f"synthetic-{args.synthetic}"
        model = build_synthetic_model(args.synthetic, device, dtype, args.attn_implementation)
        inputs = synthetic_inputs(model, device, dtype)
    else:
        from llava.model.builder import load_pretrained_model

        model_name = Path(args.model_path).name
        tokenizer, model, processor, _ = load_pretrained_model(
            args.model_path, device=str(device), dtype=dtype, vision_tower_path=args.vision_tower_path,
            attn_implementation=args.attn_implementation)
        inputs = checkpoint_inputs(model, tokenizer, processor, device, dtype, args.image)
    per_crop = model.get_vision_tower().num_patches
    bad = [b for b in budgets if not 1 <= b <= per_crop]
    if bad:
        raise SystemExit(f"budgets {bad} out of range: 1..{per_crop} visual tokens per crop")

    cases = [Case(BASELINE, per_crop)] + [Case(m, b) for m in methods for b in budgets]
    name = device_name(device)
    print(f"{model_name} on {name}: {len(cases)} cases x ({args.warmup} warm-up + {args.repeats} timed) runs")
    results, tower = benchmark(model, inputs, cases, args.new_tokens, args.repeats, args.warmup, args.fastv_layer)
    rows = summarize(results, tower, LlamaShape.from_config(model.config), args.fastv_layer, args.new_tokens, name,
                     model_name)
    print(format_table(rows))
    out = Path(args.output_dir)
    csv_path, png_path = out / f"efficiency_{model_name}.csv", out / f"efficiency_{model_name}.png"
    write_csv(rows, csv_path)
    plot(rows, png_path)
    print(f"wrote {csv_path} and {png_path}")
    return rows


if __name__ == "__main__":
    main()
