"""easy-vqa accuracy of the tiny real LLaVA for every registered pruning method at 0 / 75 / 90 / 95% reduction:

    python scripts/tiny/sweep_easyvqa.py                   # the 500-question subset, batch 16, 1 CPU thread
    python scripts/tiny/sweep_easyvqa.py --set easyvqa     # all 9,673 test questions

Every point is one `llava.eval.run_benchmark` run (the path `bash scripts/tiny/eval_easyvqa.sh TOKEN` takes), so the
answers land in <data root>/<set>/answers/tiny-llava-dinov2-smollm2/<method>/n_<tokens>.jsonl and reruns resume.
Methods are whatever `llava.model.pruning.METHODS` holds when it runs. With all 64 tokens kept no method prunes,
so that point is answered once and shared by every row. Prints a table next to the majority-answer baseline and
writes <out>/sweep_<set>.csv and <out>/sweep_<set>.png.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from llava.atomic import atomic_path, atomic_write  # noqa: E402  (after the path set-up above)

REDUCTIONS = (0, 75, 90, 95)  # percent of the visual tokens pruned
CKPT = "tiny-llava-dinov2-smollm2"


def budget(reduction: int, tokens_per_crop: int) -> int:
    """Tokens kept for a reduction in percent: 64 -> 64 / 16 / 6 / 3 (rounded, at least 1)."""
    return max(1, round(tokens_per_crop * (1 - reduction / 100)))


def run_point(bench: str, method: str, tokens: int, model_path: str, data_root: str, batch_size: int,
              quiet: bool) -> dict:
    from llava.eval import run_benchmark

    argv = ["--benchmark", bench, "--visual-token-num", str(tokens), "--ckpt", CKPT, "--model-path", model_path,
            "--data-root", data_root, "--method", method, "--batch-size", str(batch_size), "--device", "cpu"]
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
        return run_benchmark.main(argv)["metrics"]


def format_table(rows: list[dict], reductions, baseline: float, majority: str) -> str:
    header = ["method"] + [f"{r}%" for r in reductions]
    lines = [[row["method"]] + [f"{row[r]:.1f}" for r in reductions] for row in rows]
    lines.append([f"majority ({majority!r})"] + [f"{baseline:.1f}"] * len(reductions))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, lines)])


def plot(rows: list[dict], reductions, baseline: float, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = range(len(reductions))  # evenly spaced: 90% and 95% would crowd on a linear axis
    others = iter(["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"])
    markers, dashes = iter("sDv^<>ph"), iter([(4, 2), (1, 1), (6, 2, 1, 2), (3, 1, 1, 1), (2, 2), (8, 2)])
    for row in rows:  # methods that coincide stay visible: each has its own marker and dash pattern
        if row["method"] == "fastervlm":
            style = dict(lw=3, color="#d62728", marker="o", ms=7, zorder=1)
        else:
            style = dict(lw=1.5, color=next(others), marker=next(markers), ms=5, dashes=next(dashes), zorder=2)
        ax.plot(xs, [row[r] for r in reductions], label=row["method"], **style)
    ax.axhline(baseline, color="gray", ls="--", lw=1, label="majority answer")
    ax.set_xticks(list(xs), [f"{r}%\n(keep {b})" for r, b in zip(reductions, rows[0]["budgets"])])
    ax.set_xlabel("visual tokens pruned (of 64)")
    ax.set_ylabel("easy-vqa accuracy (%)")
    ax.set_ylim(30, 100)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left", ncol=3)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # the temporary name keeps the .png extension savefig reads the format from
        fig.savefig(tmp)


def main(argv=None) -> list[dict]:
    from llava.eval.tasks import DEFAULT_DATA_ROOT

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", default="easyvqa_500", choices=["easyvqa_500", "easyvqa"])
    p.add_argument("--methods", default=None, help="comma-separated subset of the registered methods (default: all)")
    p.add_argument("--data-root", default=os.environ.get("DATA_ROOT") or DEFAULT_DATA_ROOT)
    p.add_argument("--model-path", default=None, help="default: the tiny real LLaVA, built if needed")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core box)")
    p.add_argument("--out", default="outputs/tiny_easyvqa", help="where the CSV and PNG go (%(default)s)")
    p.add_argument("--verbose", action="store_true", help="show each run's own output")
    args = p.parse_args(argv)

    import torch

    from llava.model import tiny_real
    from llava.model.pruning import METHODS

    torch.set_num_threads(args.threads)
    methods = list(METHODS) if args.methods is None else [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; registered: {sorted(METHODS)}")
    model_path = args.model_path or str(tiny_real.ensure_tiny_llava(log=lambda m: print(m, file=sys.stderr)))
    if not (Path(args.data_root) / args.set / f"llava_{args.set}_test.jsonl").is_file():
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from export_easyvqa import export

        export(args.data_root)
    from llava.model.multimodal_encoder.builder import tokens_per_crop
    from llava.model.checkpoint import read_llava_config

    per_crop = tokens_per_crop(Path(read_llava_config(Path(model_path)).mm_vision_tower))
    budgets = [budget(r, per_crop) for r in REDUCTIONS]

    start = time.perf_counter()
    print(f"[sweep] {args.set}: {len(methods)} methods x {budgets} tokens of {per_crop}", file=sys.stderr)
    full = run_point(args.set, "fastervlm", per_crop, model_path, args.data_root, args.batch_size, not args.verbose)
    rows = []
    for method in methods:
        row = {"method": method, "budgets": budgets}
        for reduction, tokens in zip(REDUCTIONS, budgets):
            if tokens == per_crop:
                row[reduction] = full["accuracy"]
                continue
            t0 = time.perf_counter()
            metrics = run_point(args.set, method, tokens, model_path, args.data_root, args.batch_size,
                                not args.verbose)
            row[reduction] = metrics["accuracy"]
            print(f"[sweep] {method:>10} keep {tokens:>2}: {metrics['accuracy']:.1f}%  "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        rows.append(row)

    n = full["report"]["n_matched"]
    print(f"easy-vqa test accuracy (%), {args.set}: {n} questions, tiny real LLaVA (DINOv2-S/14 + SmolLM2-135M), "
          f"{per_crop} visual tokens per image, greedy")
    print(format_table(rows, REDUCTIONS, full["majority_baseline"], full["majority_answer"]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / f"sweep_{args.set}.csv", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method"] + [f"reduction_{r}" for r in REDUCTIONS])
        writer.writerow(["tokens_kept"] + budgets)
        for row in rows:
            writer.writerow([row["method"]] + [f"{row[r]:.2f}" for r in REDUCTIONS])
        writer.writerow([f"majority:{full['majority_answer']}"] + [f"{full['majority_baseline']:.2f}"] * len(REDUCTIONS))
    plot(rows, REDUCTIONS, full["majority_baseline"], out / f"sweep_{args.set}.png",
         f"tiny real LLaVA on easy-vqa ({args.set}: {n} test questions)")
    print(f"wrote {out / f'sweep_{args.set}.csv'} and {out / f'sweep_{args.set}.png'} "
          f"({(time.perf_counter() - start) / 60:.1f} min)")
    return rows


if __name__ == "__main__":
    main()
