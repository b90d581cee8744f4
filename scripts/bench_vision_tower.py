"""Benchmark: CLIP vision tower with [CLS] attention vs. the ways LLaVA / vLLM / the original FasterVLM run it.

One ViT-L/14-336-sized CLIPVisionModel (random weights) is built once; all four variants share its weights (the
attention backend is switched on the shared config between variants, outside the timed region):

  (a) plain            transformers CLIPVisionModel, SDPA, output_hidden_states=True, hidden_states[-2]
                       (what LLaVA does; runs all layers)
  (b) plain-truncated  SDPA, only the layers up to the selected one (what vLLM does): the fair lower bound
  (c) ours             llava CLIPVisionTower: features + [CLS] attention of the selected layer
  (d) original         eager attention, output_attentions=True + output_hidden_states=True over all layers,
                       then attentions[-2] head-mean [CLS] row (the public FasterVLM)

Repeats are interleaved (each repeat runs every variant once, in a rotating order) so drift in machine speed
hits all variants alike. Reported: median and IQR per variant in ms, and each median's ratio to (a) and (b);
plus the max abs difference between (c)'s and (d)'s cls_attn and whether their top-k sets agree.

    python scripts/bench_vision_tower.py --batch 1 --repeats 10 --threads 2
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm
from transformers import CLIPVisionConfig, CLIPVisionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower  # noqa: E402

SELECT_LAYER = -2  # LLaVA's mm_vision_select_layer
TOP_K = 58  # FasterVLM's 90% reduction keeps 58 of 576 tokens

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def vit_l_14_336() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=336,
        patch_size=14,
    )


def tiny_config() -> CLIPVisionConfig:
    # 8 x 8 = 64 patches, so top-58 is still a real selection
    return CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        image_size=112,
        patch_size=14,
    )


@dataclass
class Variant:
    key: str
    label: str
    attn_implementation: str
    layers_run: int
    fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]  # pixels -> (features, cls_attn)


def build_variants(model: CLIPVisionModel) -> list[Variant]:
    n_layers = model.config.num_hidden_layers
    tower = CLIPVisionTower(model, select_layer=SELECT_LAYER, select_feature="patch")  # wraps, does not copy
    n_run = tower.attn_layer + 1  # layers up to and including the selected one
    truncated_layers = model.encoder.layers[:n_run]

    def plain(pixels):
        out = model(pixels, output_hidden_states=True)
        return out.hidden_states[SELECT_LAYER][:, 1:], None

    def plain_truncated(pixels):
        hidden = model.pre_layrnorm(model.embeddings(pixels))
        for layer in truncated_layers:
            hidden = layer(hidden, None)
        return hidden[:, 1:], None

    def ours(pixels):
        out = tower(pixels)
        return out.features, out.cls_attn

    def original(pixels):
        out = model(pixels, output_attentions=True, output_hidden_states=True)
        features = out.hidden_states[SELECT_LAYER][:, 1:]
        cls_attn = out.attentions[SELECT_LAYER][:, :, 0, 1:].mean(dim=1)  # (N, H, T, T) -> (N, P)
        return features, cls_attn

    return [
        Variant("plain", "(a) plain: sdpa, all layers", "sdpa", n_layers, plain),
        Variant("plain-truncated", "(b) plain-truncated: sdpa", "sdpa", n_run, plain_truncated),
        Variant("ours", "(c) ours: CLIPVisionTower", "sdpa", n_run, ours),
        Variant("original", "(d) original FasterVLM: eager", "eager", n_layers, original),
    ]


def set_attn(model: CLIPVisionModel, impl: str) -> None:
    if model.config._attn_implementation != impl:
        model.set_attn_implementation(impl)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call in ms; CUDA events (synchronized) on a GPU."""
    if device.type == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def topk_sets_identical(a: torch.Tensor, b: torch.Tensor, k: int) -> bool:
    ia = a.float().topk(k, dim=-1).indices.sort(dim=-1).values
    ib = b.float().topk(k, dim=-1).indices.sort(dim=-1).values
    return bool(torch.equal(ia, ib))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: float32 on cpu, float16 on cuda")
    p.add_argument("--tiny", action="store_true", help="small config for smoke runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--csv", type=Path, default=None, help="write results to this CSV")
    p.add_argument("--plot", type=Path, default=None, help="write a bar chart of medians (PNG) here")
    return p.parse_args(argv)


def write_plot(path: Path, rows: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"].replace(": ", ":\n", 1) for r in rows]
    med = np.array([r["median_ms"] for r in rows])
    err = np.array([[r["median_ms"] - r["q1_ms"] for r in rows], [r["q3_ms"] - r["median_ms"] for r in rows]])
    fig, ax = plt.subplots(figsize=(9, 5))
    bars = ax.bar(range(len(rows)), med, yerr=err, capsize=6, color=["#8c8c8c", "#4c72b0", "#55a868", "#c44e52"])
    for bar, r in zip(bars, rows):
        ax.annotate(
            f"{r['median_ms']:.1f} ms\n{r['ratio_vs_plain']:.2f}x (a)\n{r['ratio_vs_truncated']:.2f}x (b)",
            (bar.get_x() + bar.get_width() / 2, r["q3_ms"]),  # above the IQR whisker
            xytext=(0, 6),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_xticks(range(len(rows)), labels, fontsize=9)
    ax.set_ylabel("median time per call (ms), bars: IQR")
    ax.set_ylim(0, max(r["q3_ms"] for r in rows) * 1.3)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


CSV_FIELDS = [
    "variant", "label", "attn_implementation", "layers_run", "median_ms", "q1_ms", "q3_ms", "iqr_ms", "mean_ms", "min_ms",
    "ratio_vs_plain", "ratio_vs_truncated", "repeats", "warmup", "batch", "device", "dtype", "threads", "config",
    "features_max_abs_diff_vs_plain", "cls_attn_max_abs_diff_vs_original", "topk_k", "topk_identical_vs_original",
]


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    dtype = DTYPES[args.dtype or ("float16" if device.type == "cuda" else "float32")]

    torch.manual_seed(args.seed)
    config = tiny_config() if args.tiny else vit_l_14_336()
    model = CLIPVisionModel._from_config(config, attn_implementation="sdpa").to(device=device, dtype=dtype).eval()
    variants = build_variants(model)
    pixels = torch.randn(
        args.batch, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(args.seed)
    ).to(device=device, dtype=dtype)
    n_patches = (config.image_size // config.patch_size) ** 2
    k = min(TOP_K, n_patches)
    cfg_name = "tiny" if args.tiny else "ViT-L/14-336"
    cfg_desc = (
        f"{cfg_name} (hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
        f"{config.num_attention_heads} heads, {1 + n_patches} tokens)"
    )

    print(
        f"torch {torch.__version__}, transformers {__import__('transformers').__version__}, python "
        f"{platform.python_version()}; device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f" ({platform.processor() or platform.machine()})")
        + f", dtype {str(dtype).removeprefix('torch.')}, threads {torch.get_num_threads()}"
    )
    print(f"tower {cfg_desc}, random weights, select_layer {SELECT_LAYER}, batch {args.batch}")
    print(f"warmup {args.warmup}, repeats {args.repeats} (interleaved, rotating order)")

    times: dict[str, list[float]] = {v.key: [] for v in variants}
    outputs: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    with torch.inference_mode():
        for v in variants:
            set_attn(model, v.attn_implementation)
            for _ in range(args.warmup):
                v.fn(pixels)
            outputs[v.key] = v.fn(pixels)  # for the correctness columns; untimed
        if device.type == "cuda":
            torch.cuda.synchronize(device)

        load_before = os.getloadavg()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for r in tqdm(range(args.repeats), desc="repeats (all 4 variants each)", unit="rep"):
            for j in range(len(variants)):
                v = variants[(r + j) % len(variants)]
                set_attn(model, v.attn_implementation)  # untimed; a config field read at forward time
                times[v.key].append(time_call(lambda: v.fn(pixels), device))
        cpu_per_wall = (time.process_time() - cpu0) / max(time.perf_counter() - wall0, 1e-9)
        load_after = os.getloadavg()
    set_attn(model, "sdpa")

    # correctness
    ref_features = outputs["plain"][0].float()
    feat_diff = {key: (out[0].float() - ref_features).abs().max().item() for key, out in outputs.items()}
    ours_cls, orig_cls = outputs["ours"][1], outputs["original"][1]
    cls_diff = (ours_cls.float() - orig_cls.float()).abs().max().item()
    topk_same = topk_sets_identical(ours_cls, orig_cls, k)

    # stats
    rows = []
    for v in variants:
        t = np.asarray(times[v.key])
        q1, med, q3 = np.percentile(t, [25, 50, 75])
        rows.append({
            "variant": v.key, "label": v.label, "attn_implementation": v.attn_implementation,
            "layers_run": v.layers_run, "median_ms": float(med), "q1_ms": float(q1), "q3_ms": float(q3),
            "iqr_ms": float(q3 - q1), "mean_ms": float(t.mean()), "min_ms": float(t.min()), "repeats": len(t), "warmup": args.warmup,
            "batch": args.batch, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "config": cfg_name,
            "features_max_abs_diff_vs_plain": feat_diff[v.key],
            "cls_attn_max_abs_diff_vs_original": cls_diff if v.key == "ours" else "",
            "topk_k": k if v.key == "ours" else "",
            "topk_identical_vs_original": topk_same if v.key == "ours" else "",
        })
    base_a, base_b = rows[0]["median_ms"], rows[1]["median_ms"]
    for row in rows:
        row["ratio_vs_plain"] = row["median_ms"] / base_a
        row["ratio_vs_truncated"] = row["median_ms"] / base_b

    w = max(len(r["label"]) for r in rows)
    header = f"{'variant':<{w}}  {'layers':>6}  {'median ms':>10}  {'IQR ms':>8}  {'min ms':>9}  {'vs (a)':>7}  {'vs (b)':>7}  {'feat max|d| vs (a)':>18}"
    print()
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['label']:<{w}}  {row['layers_run']:>6}  {row['median_ms']:>10.2f}  {row['iqr_ms']:>8.2f}  {row['min_ms']:>9.2f}  "
            f"{row['ratio_vs_plain']:>6.2f}x  {row['ratio_vs_truncated']:>6.2f}x  {row['features_max_abs_diff_vs_plain']:>18.2e}"
        )
    print("-" * len(header))
    print("ratios are of medians; min ms is the least contended run of each variant")
    print(f"cls_attn (c) vs (d): max abs diff {cls_diff:.3e}; top-{k} sets identical: {topk_same} "
          f"(batch {args.batch}, {n_patches} patches)")
    # on a shared machine other work inflates and spreads the timings; this shows how much CPU we actually got
    print(f"host load (1-min avg) before/after timing: {load_before[0]:.2f}/{load_after[0]:.2f}; "
          f"this process's CPU time / wall time while timing: {cpu_per_wall:.2f} (threads {torch.get_num_threads()})")

    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")
    if args.plot is not None:
        title = (f"{cfg_desc}\nbatch {args.batch}, {device}, {str(dtype).removeprefix('torch.')}, "
                 f"{torch.get_num_threads()} threads, {args.repeats} repeats; max|d| cls_attn (c)-(d) {cls_diff:.1e}, "
                 f"top-{k} identical: {topk_same}")
        write_plot(args.plot, rows, title)
        print(f"wrote {args.plot}")

    return {"rows": rows, "cls_attn_max_abs_diff": cls_diff, "topk_identical": topk_same, "topk_k": k,
            "features_max_abs_diff_vs_plain": feat_diff}


if __name__ == "__main__":
    main()
