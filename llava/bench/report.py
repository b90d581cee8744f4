"""The efficiency benchmark's results: one row per case (medians, analytic FLOPs, ratios to the unpruned model),
the printed table, the CSV and the plot. The measurements come from `llava.bench.measure`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from llava.atomic import atomic_path, atomic_write
from llava.bench.flops import LlamaShape, prefill_flops
from llava.bench.measure import BASELINE, Result, median
from llava.model.pruning import get_llm_pruner


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
            f"{_tower_line(r)}\n"
            f"(x): ratio to the unpruned model (first row); speedup = unpruned prefill / prefill; "
            f"FLOPs bound = unpruned FLOPs / FLOPs")
    return head + "\n" + "\n".join(lines)


def _tower_line(r: dict) -> str:
    if math.isnan(r["vision_plain_ms"]):  # a tower without [CLS] (llava.bench.native): nothing to compare
        return f"vision encoder: {r['vision_ms']:.1f} ms (tower + projector; no [CLS] row)"
    return (f"vision tower: {r['vision_ms']:.1f} ms with [CLS] attention vs {r['vision_plain_ms']:.1f} ms without "
            f"({r['cls_overhead_pct']:+.1f}%)")


def write_csv(rows: list[dict], path: Path) -> None:
    with atomic_write(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib  # optional extra: only the plot needs it, and it is slow to import

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
        ax.set_xlabel("visual tokens kept per crop (video: per frame)")
        ax.grid(alpha=0.3)
    axes.flat[1].legend(fontsize=7)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{base['model']} on {base['device']}: median of {base['repeats']} runs, "
                 f"{base['new_tokens']} new tokens", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # the temporary name keeps the extension: savefig picks the format from it
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
