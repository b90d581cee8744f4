"""The demo's figure: the input as the tower saw it, its [CLS] attention, and one panel per budget with the kept
patches outlined and the pruned ones darkened, under a header naming the model, method and question.

matplotlib is imported inside `draw_figure`: it is an optional extra (`.[demo]`) that only drawing needs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from llava.atomic import atomic_path
from llava.demo.budgets import BudgetRow, DemoResult
from llava.demo.model import RANDOM_WEIGHTS_NOTE
from llava.demo.report import printable

# Layout in inches: a header, then rows of square panels, each with a title above and a caption below.
SIDE_IN, GAP_X, MARGIN, TITLE_H, CAPTION_H, GAP_Y, HEADER_H = 3.0, 0.22, 0.22, 0.48, 0.28, 0.12, 1.3
TITLE_SIZE = 9.5
KEPT_COLOUR = "#7CFC00"


def _outline_segments(mask: torch.Tensor, side: int, patch: float) -> list:
    """Edges of every kept patch, each edge once, in image pixel coordinates."""
    grid = mask.view(side, side).tolist()
    segs = set()
    for r in range(side):
        for c in range(side):
            if grid[r][c]:
                x0, y0, x1, y1 = c * patch, r * patch, (c + 1) * patch, (r + 1) * patch
                segs.update({((x0, y0), (x1, y0)), ((x0, y1), (x1, y1)), ((x0, y0), (x0, y1)),
                             ((x1, y0), (x1, y1))})
    return sorted(segs)


def _grid(panels: int) -> tuple[int, int, float, float]:
    """(columns, rows, width in, height in) of the figure for `panels` square panels."""
    cols = panels if panels <= 4 else 3 if panels <= 6 else 4
    rows = math.ceil(panels / cols)
    width = 2 * MARGIN + cols * SIDE_IN + (cols - 1) * GAP_X
    height = HEADER_H + rows * (TITLE_H + SIDE_IN + CAPTION_H) + (rows - 1) * GAP_Y + 0.08
    return cols, rows, width, height


def _panel_axes(fig, panels: int, cols: int, width: float, height: float) -> list:
    """One bare (no ticks, no frame) axes per panel, row by row."""
    axes = []
    for i in range(panels):
        r, c = divmod(i, cols)
        top_in = HEADER_H + r * (TITLE_H + SIDE_IN + CAPTION_H + GAP_Y) + TITLE_H
        x_in = MARGIN + c * (SIDE_IN + GAP_X)
        axes.append(fig.add_axes((x_in / width, 1 - (top_in + SIDE_IN) / height, SIDE_IN / width, SIDE_IN / height)))
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    return axes


def _caption(ax, text: str) -> None:
    ax.text(0.5, -0.03, text, transform=ax.transAxes, ha="center", va="top", fontsize=8, style="italic",
            color="#333333")


def _input_panel(ax, result: DemoResult, side: int) -> None:
    """The (S, S, 3) image the tower saw, with its patch grid in the title."""
    size = result.image.shape[0]
    ax.imshow(result.image, extent=(0, size, size, 0))
    ax.set_title(f"Input, as the tower sees it\n{size}×{size} px → {side}×{side} = {side * side} patches",
                 fontsize=TITLE_SIZE)
    _caption(ax, result.image_note)


def _attention_panel(fig, ax, result: DemoResult, side: int) -> None:
    """The (side, side) [CLS] attention on a log scale over the greyed image, with a colour bar and how concentrated
    it is (share held by the top 10% of patches)."""
    from matplotlib.colors import LogNorm  # optional extra (`.[demo]`): only drawing needs it

    image, size, num_patches = result.image, result.image.shape[0], side * side
    extent = (0, size, size, 0)
    attn = result.cls_attn.float().view(side, side).numpy()
    ax.imshow(image.mean(axis=2), cmap="gray", extent=extent, vmin=0, vmax=255)
    floor = max(float(attn.max()) * 1e-3, float(attn[attn > 0].min()) if (attn > 0).any() else 1e-12)
    heat = ax.imshow(np.clip(attn, floor, None), cmap="inferno", norm=LogNorm(vmin=floor, vmax=float(attn.max())),
                     alpha=0.68, extent=extent, interpolation="nearest")
    ranks = "the score FasterVLM ranks patches by" if result.method == "fastervlm" else f"(unused by {result.method})"
    ax.set_title(f"[CLS] attention ({side}×{side}, log scale)\n{ranks}", fontsize=TITLE_SIZE)
    bar = fig.colorbar(heat, cax=ax.inset_axes((0.04, 0.035, 0.92, 0.035)), orientation="horizontal")
    bar.ax.tick_params(labelsize=6, colors="white", length=2, pad=1)
    bar.outline.set_edgecolor("white")
    bar.ax.xaxis.set_ticks_position("top")
    top_share = float(np.sort(attn.ravel())[::-1][: max(1, num_patches // 10)].sum() / attn.sum())
    _caption(ax, f"top 10% of patches hold {100 * top_share:.0f}% of the attention")


def _budget_panel(ax, image: np.ndarray, row: BudgetRow, side: int) -> None:
    """The image with the pruned patches of `row.mask` ((P,) bool) darkened and the kept ones outlined."""
    from matplotlib.collections import LineCollection  # optional extra (`.[demo]`): only drawing needs it

    size, num_patches = image.shape[0], side * side
    extent = (0, size, size, 0)
    shade = np.zeros((side, side, 4), dtype=np.float32)
    shade[..., 3] = ~row.mask.view(side, side).numpy() * 0.78
    ax.imshow(image, extent=extent)
    ax.imshow(shade, extent=extent, interpolation="nearest")
    lw = 0.45 if row.mask.sum() > num_patches // 3 else 0.8
    ax.add_collection(LineCollection(_outline_segments(row.mask, side, size / side), colors=KEPT_COLOUR,
                                     linewidths=lw, alpha=0.95))
    ax.set_xlim(0, size)
    ax.set_ylim(size, 0)
    pruned_txt = "no pruning" if row.budget >= num_patches else f"{row.reduction:.1f}% pruned"
    ax.set_title(f"keep {row.budget} of {num_patches} · {pruned_txt}\n"
                 f"LLM sees {row.kept} visual + {row.prompt_len - row.kept} text tokens", fontsize=TITLE_SIZE)
    _caption(ax, f"A: {printable(row.answer, 44)!r}  ({row.seconds:.2f} s)")


def _header(fig, result: DemoResult, query: str, model_label: str, width: float, height: float) -> None:
    """Title, then model and method, the question (and expected answer), and the random-weights warning."""
    fig.text(0.5, 1 - 0.15 / height, "FasterVLM: visual tokens ranked by [CLS] attention, pruned before the LLM",
             ha="center", va="top", fontsize=13, weight="bold")
    lines = [(f"{model_label}  ·  method: {result.method}  ·  kept patches outlined, pruned patches darkened",
              dict(color="#333333")),
             (f"Q: {printable(query, max(20, int(width * 13)))}"
              + (f"   (expected: {result.expected})" if result.expected else ""), dict(color="#333333"))]
    if result.random_weights:
        lines.append(("Tiny model with " + RANDOM_WEIGHTS_NOTE + ".", dict(color="#b22222", style="italic")))
    for i, (text, style) in enumerate(lines):
        fig.text(0.5, 1 - (0.5 + 0.22 * i) / height, text, ha="center", va="top", fontsize=8.5, **style)


def draw_figure(result: DemoResult, query: str, model_label: str, path: Path) -> Path:
    """Input, [CLS] attention, and the patches each budget keeps, as one PNG at `path` (written atomically)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional extra (`.[demo]`): only drawing needs it
    from matplotlib.figure import Figure

    side = math.isqrt(result.cls_attn.numel())
    panels = 2 + len(result.rows)
    cols, _, width, height = _grid(panels)
    fig = Figure(figsize=(width, height), dpi=130, facecolor="white")
    FigureCanvasAgg(fig)
    axes = _panel_axes(fig, panels, cols, width, height)
    _input_panel(axes[0], result, side)
    _attention_panel(fig, axes[1], result, side)
    for ax, row in zip(axes[2:], result.rows):
        _budget_panel(ax, result.image, row, side)
    _header(fig, result, query, model_label, width, height)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, facecolor="white")
    return path
