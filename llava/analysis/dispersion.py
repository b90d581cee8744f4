"""The attention-dispersion analysis (paper §3): per sample, the vision encoder's [CLS] attention and the last
prompt token's attention at one LLM layer over the image tokens; its figure (cumulative distribution, histograms)
and summary (the share held by the top fraction of tokens).
Command line: `python -m llava.eval.analyze_attn_dispersion`.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from llava.analysis.capture import LAST
from llava.analysis.driver import AnalysisSpec
from llava.analysis.statistics import cumulative_shares, normalised_scores, top_count, top_share
from llava.atomic import atomic_path

NAME = "attn_dispersion"
KINDS = ("cls", "last")
HIST_BINS = 100
# The histograms share an x axis that ends a little past this quantile of both kinds' normalised scores, so a few
# attention-sink outliers (normalised score 1) do not squeeze the bulk into one bin; the share cut off is printed.
HIST_QUANTILE = 0.99


class DispersionAccumulator:
    """Per-sample [CLS] and last-token attention rows, kept as they are (n x P floats)."""

    def __init__(self, layer: int):
        self.layer = layer  # 0-based
        self.rows: dict[str, list[torch.Tensor]] = {k: [] for k in KINDS}
        self.ids: list = []

    def add(self, sample_id, cls_attn: torch.Tensor, blocks: dict[int, torch.Tensor]) -> None:
        self.rows["cls"].append(cls_attn.float().cpu())
        self.rows["last"].append(blocks[self.layer][-1].float().cpu())
        self.ids.append(sample_id)

    def stats(self) -> dict:
        out = {k: torch.stack(v) for k, v in self.rows.items()}
        out.update(layer=self.layer + 1, num_samples=len(self.ids), sample_ids=list(self.ids))
        return out


def merge(parts: list[dict]) -> dict:
    layers = {p["layer"] for p in parts}
    if len(layers) != 1:
        raise ValueError(f"cannot merge chunks analysed at different LLM layers: {sorted(layers)}")
    out = {k: torch.cat([p[k] for p in parts]) for k in KINDS}
    out.update(layer=parts[0]["layer"], num_samples=sum(p["num_samples"] for p in parts),
               sample_ids=[i for p in parts for i in p["sample_ids"]])
    return out


# --------------------------------------------------------------------------- figure


def _draw_cdf(ax, stats: dict, num_image: int, k: int) -> None:
    """Mean cumulative share held by the top x% of tokens, [CLS] vs the last token; dashed at the top k."""
    labels = {"cls": "[CLS] attn", "last": f"last attn (LLM layer {stats['layer']})"}
    x = np.arange(num_image + 1) / num_image * 100
    for kind in KINDS:
        ax.plot(x, cumulative_shares(stats[kind]) * 100, label=labels[kind], linewidth=2)
    ax.plot([0, 100], [0, 100], color="grey", linestyle=":", label="uniform")
    ax.axvline(100 * k / num_image, color="black", linewidth=0.8, linestyle="--")
    ax.set_title("Cumulative Distribution", fontsize=17)
    ax.set_xlabel("Token Proportion (%)", fontsize=14)
    ax.set_ylabel("Cumulative Attention (%)", fontsize=14)
    ax.grid(alpha=0.4)
    ax.legend(fontsize=12, loc="lower right")


def _draw_histograms(axes, stats: dict) -> None:
    """Per kind, the share of max-normalised scores per bin (log scale), on one x axis cut near HIST_QUANTILE."""
    values = {kind: normalised_scores(stats[kind]) for kind in KINDS}
    x_max = min(1.0, 1.1 * max(float(np.quantile(v, HIST_QUANTILE)) for v in values.values()))
    edges = np.linspace(0, x_max, HIST_BINS + 1)
    proportions = {kind: np.histogram(v, bins=edges)[0] / v.size for kind, v in values.items()}
    floor = min(p[p > 0].min() for p in proportions.values()) / 2
    for ax, kind in zip(axes, KINDS):
        ax.stairs(proportions[kind], edges, fill=True, color="#4472b4", baseline=floor)
        ax.set_yscale("log")
        ax.set_ylim(floor, 1)
        ax.set_xlim(-0.01 * x_max, x_max)
        beyond = float((values[kind] > x_max).mean())
        if beyond:
            ax.text(0.98, 0.96, f"{beyond:.2%} of scores > {x_max:.2f} (not shown)", ha="right", va="top",
                    transform=ax.transAxes, fontsize=11)
        layer = stats["layer"]
        title = "[CLS] Attention Distribution" if kind == "cls" else f"Last Attention Distribution (layer {layer})"
        ax.set_title(title, fontsize=17)
        ax.set_xlabel("Attention Score (normalized to the max)", fontsize=14)
        ax.set_ylabel("Proportion", fontsize=14)


def plot(stats: dict, folder: str, args) -> list[str]:
    from matplotlib.figure import Figure  # optional extra: only drawing needs matplotlib

    num_samples, num_image = stats["cls"].shape
    k = top_count(num_image, args.top_fraction)
    fig = Figure(figsize=(19, 5.8))
    cdf, *hists = fig.subplots(1, 3)
    _draw_cdf(cdf, stats, num_image, k)
    _draw_histograms(hists, stats)
    fig.suptitle(f"Attention dispersion over {num_image} image tokens ({stats['model']}, {num_samples} samples; "
                 f"dashed: the top {k} tokens, {args.top_fraction:.0%})", fontsize=15)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    path = os.path.join(folder, f"{NAME}.png")
    os.makedirs(folder, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    return [path]


# --------------------------------------------------------------------------- summary


def summarize(stats: dict, args) -> tuple[dict, str]:
    """The share of attention held by the top `--top-fraction` of image tokens, for [CLS] and the last token."""
    num_samples, num_image = stats["cls"].shape
    fraction = args.top_fraction
    k = top_count(num_image, fraction)
    shares = {kind: top_share(stats[kind], fraction) for kind in KINDS}
    summary = {
        "analysis": "attention dispersion",
        "num_samples": num_samples,
        "image_tokens": num_image,
        "llm_layer": stats["layer"],
        "top_fraction": fraction,
        "top_tokens": k,
        "uniform_top_share": round(k / num_image, 6),
        "cls_top_share": round(shares["cls"], 6),
        "last_top_share": round(shares["last"], 6),
        "top_share_at": {f"{p}%": {kind: round(top_share(stats[kind], p / 100), 6) for kind in KINDS}
                         for p in (1, 5, 10, 20, 50)},
    }
    headline = (f"[attn_dispersion] {num_samples} samples: the top {fraction:.0%} of image tokens ({k} of "
                f"{num_image}) hold {shares['cls']:.1%} of [CLS] attention vs {shares['last']:.1%} of the last "
                f"token's attention at LLM layer {stats['layer']} (uniform: {k / num_image:.1%})")
    return summary, headline


def _layers(args, num_layers: int) -> list[int]:
    if not 1 <= args.layer <= num_layers:
        raise ValueError(f"--layer {args.layer} is out of range: the model has {num_layers} LLM layers (1-based)")
    return [args.layer - 1]


def _accumulator(args, model) -> DispersionAccumulator:
    return DispersionAccumulator(args.layer - 1)


SPEC = AnalysisSpec(name=NAME, queries=LAST, layers=_layers, accumulator=_accumulator, merge=merge, plot=plot,
                    summarize=summarize)
