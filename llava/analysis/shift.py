"""The attention-shift analysis (paper §3): per LLM layer, the causally normalised attention each image token
receives from all / image / text / last tokens, averaged over samples, next to the vision encoder's [CLS] attention;
its figures (bars over token index, grid heat maps, tail shares per layer) and summary. Command line:
`python -m llava.eval.analyze_attn_shift`.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from llava.analysis.capture import FROM_IMAGE
from llava.analysis.driver import AnalysisSpec
from llava.analysis.statistics import shift_statistics, tail_share, top_count
from llava.atomic import atomic_path

NAME = "attn_shift"
KINDS = ("all", "image", "text", "last")
TITLES = {"cls": "[CLS] attention", "all": "All tokens \u2192 image", "image": "Image tokens \u2192 image",
          "text": "Text tokens \u2192 image", "last": "Last token \u2192 image"}


class ShiftAccumulator:
    """Running sums of the per-sample statistics; `stats()` gives the means over samples."""

    def __init__(self, num_layers: int, num_image: int):
        self.num_layers, self.num_image = num_layers, num_image
        self.sums = {k: torch.zeros(num_layers, num_image, dtype=torch.float64) for k in KINDS}
        self.cls = torch.zeros(num_image, dtype=torch.float64)
        self.counts = {k: 0 for k in KINDS}
        self.ids: list = []

    def add(self, sample_id, cls_attn: torch.Tensor, blocks: dict[int, torch.Tensor]) -> None:
        stacked = torch.stack([blocks[i] for i in range(self.num_layers)]).double()  # (layers, R, P)
        if stacked.shape[-1] != self.num_image:
            raise ValueError(f"sample {sample_id!r}: {stacked.shape[-1]} image tokens, expected {self.num_image}")
        for kind, values in shift_statistics(stacked, self.num_image).items():
            if values is not None:  # text: None when the last token is the only one after the image
                self.sums[kind] += values.cpu()
                self.counts[kind] += 1
        self.cls += cls_attn.double().cpu()
        self.ids.append(sample_id)

    def stats(self) -> dict:
        n = len(self.ids)
        out = {k: (self.sums[k] / self.counts[k]).float() for k in KINDS}  # 0/0 = nan for a kind never seen
        out.update(cls=(self.cls / n).float(), num_samples=n, counts=dict(self.counts), sample_ids=list(self.ids))
        return out


def merge(parts: list[dict]) -> dict:
    """Chunk statistics -> the statistics of all their samples (means weighted by each chunk's counts)."""
    out = {"num_samples": sum(p["num_samples"] for p in parts),
           "sample_ids": [i for p in parts for i in p["sample_ids"]]}
    out["counts"] = {k: sum(p["counts"][k] for p in parts) for k in KINDS}
    for k in KINDS:
        weighted = [p[k].double() * p["counts"][k] for p in parts if p["counts"][k]]
        out[k] = (sum(weighted) / out["counts"][k]).float() if weighted else parts[0][k]
    out["cls"] = (sum(p["cls"].double() * p["num_samples"] for p in parts) / out["num_samples"]).float()
    return out


# --------------------------------------------------------------------------- figures


def _figure_layer(stats: dict, layer: int) -> int:
    """1-based `--figure-layer` checked against the saved layers; returns the 0-based index."""
    num_layers = stats["last"].shape[0]
    if not 1 <= layer <= num_layers:
        raise ValueError(f"--figure-layer {layer} is out of range: the model has {num_layers} LLM layers (1-based)")
    return layer - 1


def draw_layer(stats: dict, layer: int, path: str, dpi: int = 100) -> str:
    """Bars over token index (top) and grid heat maps (bottom) of [CLS] and the four kinds at 0-based `layer`."""
    from matplotlib.figure import Figure  # optional extra: only drawing needs matplotlib

    side = int(stats["grid"])
    num_image = side * side
    panels = [("cls", stats["cls"])] + [(k, stats[k][layer]) for k in KINDS]
    fig = Figure(figsize=(5.2 * len(panels), 9.5))
    axes = fig.subplots(2, len(panels), gridspec_kw={"height_ratios": [1, 1.2]})
    edges = np.arange(num_image + 1) + 0.5
    for col, (kind, values) in enumerate(panels):
        v = values.numpy()
        bars, heat = axes[0, col], axes[1, col]
        bars.set_title(TITLES[kind], fontsize=15)
        heat.set_axis_off()
        if np.isnan(v).all():
            bars.text(0.5, 0.5, "no text tokens between\nthe image and the last token", ha="center",
                      transform=bars.transAxes)
            continue
        for row_end in range(side, num_image, side):  # grid-row boundaries, as in the paper's figure
            bars.axvline(row_end + 0.5, color="tab:red", linewidth=0.6, alpha=0.35, zorder=3)
        bars.stairs(v, edges, fill=True, color="#4472b4")
        bars.set_xlim(0.5, num_image + 0.5)
        bars.set_ylim(0, float(v.max()) * 1.08 or 1)
        bars.set_xlabel("Token index", fontsize=13)
        bars.set_ylabel("Attention score", fontsize=13)
        image = heat.imshow(v.reshape(side, side), cmap="viridis")
        fig.colorbar(image, ax=heat, fraction=0.046, pad=0.03)
    num_layers = stats["last"].shape[0]
    fig.suptitle(f"Attention each image token receives: LLM layer {layer + 1} of {num_layers} ({stats['model']}, "
                 f"mean of {stats['num_samples']} samples; heat maps: {side}\u00d7{side} image grid)", fontsize=16)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi)
    return path


def draw_tail_shares(stats: dict, fraction: float, path: str) -> str:
    """Per layer, the share of each kind's attention on the last `fraction` of image positions, vs [CLS]."""
    from matplotlib.figure import Figure  # optional extra: only drawing needs matplotlib
    from matplotlib.ticker import MaxNLocator

    num_layers, num_image = stats["last"].shape
    k = top_count(num_image, fraction)
    layers = np.arange(1, num_layers + 1)
    fig = Figure(figsize=(9, 5.5))
    ax = fig.subplots()
    for kind in KINDS:
        shares = tail_share(stats[kind].double(), fraction).numpy() * 100
        if not np.isnan(shares).all():
            ax.plot(layers, shares, marker="o", markersize=3, label=TITLES[kind])
    ax.axhline(float(tail_share(stats["cls"].double(), fraction)) * 100, color="black", linestyle="--",
               label=TITLES["cls"])
    ax.axhline(100 * k / num_image, color="grey", linestyle=":", label="uniform")
    ax.set_xlabel("LLM layer", fontsize=13)
    ax.set_ylabel(f"share on the last {k} of {num_image} image tokens (%)", fontsize=12)
    ax.set_title(f"Attention on the last {k} of {num_image} image positions ({fraction:.0%}: the bottom rows)",
                 fontsize=14)
    ax.set_xlim(0.5, num_layers + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    return path


def plot(stats: dict, folder: str, args) -> list[str]:
    figure_layer = _figure_layer(stats, args.figure_layer)
    os.makedirs(os.path.join(folder, "layers"), exist_ok=True)
    num_layers = stats["last"].shape[0]
    width = len(str(num_layers))
    paths = [draw_layer(stats, figure_layer, os.path.join(folder, f"{NAME}.png")),
             draw_tail_shares(stats, args.tail_fraction, os.path.join(folder, f"{NAME}_tail.png"))]
    for layer in range(num_layers):
        paths.append(draw_layer(stats, layer, os.path.join(folder, "layers", f"layer_{layer + 1:0{width}d}.png"),
                                dpi=72))
    return paths


# --------------------------------------------------------------------------- summary


def summarize(stats: dict, args) -> tuple[dict, str]:
    """The share of attention on the last `--tail-fraction` of image positions: per layer and kind, and [CLS]."""
    num_layers, num_image = stats["last"].shape
    fraction, layer = args.tail_fraction, _figure_layer(stats, args.figure_layer)
    k = top_count(num_image, fraction)
    per_layer = {kind: tail_share(stats[kind].double(), fraction) for kind in KINDS}
    cls_share = float(tail_share(stats["cls"].double(), fraction))

    def number(x) -> float | None:
        return None if np.isnan(float(x)) else round(float(x), 6)

    summary = {
        "analysis": "attention shift",
        "num_samples": stats["num_samples"],
        "llm_layers": num_layers,
        "image_tokens": num_image,
        "grid": [int(stats["grid"])] * 2,
        "tail_fraction": fraction,
        "tail_tokens": k,
        "uniform_tail_share": round(k / num_image, 6),
        "cls_tail_share": round(cls_share, 6),
        "last_tail_share_mean_over_layers": number(per_layer["last"].mean()),
        "figure_layer": layer + 1,
        "tail_share_at_figure_layer": {kind: number(v[layer]) for kind, v in per_layer.items()},
        "tail_share_mean_over_layers": {kind: number(v.mean()) for kind, v in per_layer.items()},
        "tail_share_per_layer": {kind: [number(x) for x in v] for kind, v in per_layer.items()},
    }
    last_mean, last_at = float(per_layer["last"].mean()), float(per_layer["last"][layer])
    headline = (f"[attn_shift] {stats['num_samples']} samples: the last token puts {last_mean:.1%} of its image "
                f"attention on the last {k} of {num_image} image positions ({fraction:.0%}; mean of {num_layers} "
                f"layers; {last_at:.1%} at layer {layer + 1}), [CLS] attention {cls_share:.1%} "
                f"(uniform: {k / num_image:.1%})")
    return summary, headline


def _layers(args, num_layers: int) -> list[int]:
    if not 1 <= args.figure_layer <= num_layers:  # checked before the samples run, not after
        raise ValueError(f"--figure-layer {args.figure_layer} is out of range: the model has {num_layers} LLM layers")
    return list(range(num_layers))


def _accumulator(args, model) -> ShiftAccumulator:
    return ShiftAccumulator(len(model.get_model().layers), model.get_vision_tower().num_patches)


SPEC = AnalysisSpec(name=NAME, queries=FROM_IMAGE, layers=_layers, accumulator=_accumulator, merge=merge,
                    plot=plot, summarize=summarize)
