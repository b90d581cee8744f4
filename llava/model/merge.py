"""The merge stage of the image path, as pure functions over kept patch indices (testable without a model):
how the kept tokens of an anyres (LLaVA-1.6) image's grid crops are laid out as one sequence.

- `merge_grid_paper`:    the original FasterVLM order (raster order over the stitched grid, no unpadding);
- `merge_grid_upstream`: upstream LLaVA-1.6's `spatial_unpad` (drop the padding window, `image_newline` per row);
- `unpad_window`:        which rows/columns of the stitched grid hold the image, with LLaVA's or transformers'
                         rounding (`UNPAD_RULES`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GridLayout:
    """Where the grid crops of one LLaVA-1.6 image sit: `cols` x `rows` crops of `side` x `side` patches."""

    cols: int
    rows: int
    side: int


# ---------------------------------------------------------------------------------------------------------------
# merge: pure functions over kept indices, so they can be tested without a model
# ---------------------------------------------------------------------------------------------------------------
def grid_positions(keep: torch.Tensor, layout: GridLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Global (row, col) on the stitched patch grid of each kept token of the grid crops.

    keep: (n_grid, k) patch indices per grid crop, crops in raster order. Returns two (n_grid * k,) tensors.
    """
    n_grid, k = keep.shape
    crop = torch.arange(n_grid, device=keep.device).unsqueeze(1).expand(n_grid, k)
    row = (crop // layout.cols) * layout.side + keep // layout.side
    col = (crop % layout.cols) * layout.side + keep % layout.side
    return row.reshape(-1), col.reshape(-1)


UNPAD_RULES = ("llava", "transformers")


def _scaled_side(value: float, rule: str) -> int:
    """The unpadded side length: LLaVA-1.6's own code truncates (`int(x)`); transformers' llava_next first rounds to 7
    decimals (`int(round(x, 7))`), which differs when the float product falls just below an integer."""
    if rule == "llava":
        return int(value)
    if rule == "transformers":
        return int(round(value, 7))
    raise ValueError(f"unknown unpad rule {rule!r} (llava.model.merge.unpad_window); expected one of {UNPAD_RULES}")


def unpad_window(image_size: tuple[int, int], height: int, width: int,
                 rule: str = "llava") -> tuple[int, int, int, int]:
    """Rows [r0, r1) and columns [c0, c1) of a (height, width) patch grid that hold the image and not the padding
    added when it was fitted to the grid resolution. image_size is (w, h).

    rule "llava": haotian-liu/LLaVA's `unpad_image` (llava/model/llava_arch.py), the code the LLaVA-1.6 checkpoints
    ran with: the scaled side is truncated, so a wide 188x47 image on a 12x4 grid keeps rows [1, 3) (47 * 12 / 188
    is 2.9999999999999996 in floating point). rule "transformers": transformers' llava_next `unpad_image`, whose
    processor counts placeholders that way (rows [0, 4) for the same image); used for llava-hf models (llava.hf).
    """
    orig_w, orig_h = image_size
    if orig_w / orig_h > width / height:
        new_h = _scaled_side(orig_h * (width / orig_w), rule)
        pad = (height - new_h) // 2
        return pad, height - pad, 0, width
    new_w = _scaled_side(orig_w * (height / orig_h), rule)
    pad = (width - new_w) // 2
    return 0, height, pad, width - pad


def merge_grid_paper(grid_embeds: torch.Tensor, keep: torch.Tensor, layout: GridLayout) -> torch.Tensor:
    """Original FasterVLM order for the grid crops: kept tokens in raster order over the stitched grid (a whole
    patch row across all crops of a crop row, then the next). grid_embeds (n_grid, k, D) -> (n_grid * k, D)."""
    row, col = grid_positions(keep, layout)
    order = (row * layout.cols * layout.side + col).argsort()
    return grid_embeds.reshape(-1, grid_embeds.shape[-1])[order]


def merge_grid_upstream(
    grid_embeds: torch.Tensor, keep: torch.Tensor, layout: GridLayout, image_size: tuple[int, int],
    newline: torch.Tensor, rule: str = "llava",
) -> torch.Tensor:
    """Upstream LLaVA-1.6 `spatial_unpad`: drop tokens in the padding (`unpad_window` with `rule`), raster order,
    `newline` (D,) after every remaining patch row. Newlines are never pruned.
    grid_embeds (n_grid, k, D) -> (kept_in_window + rows, D)."""
    height, width = layout.rows * layout.side, layout.cols * layout.side
    r0, r1, c0, c1 = unpad_window(image_size, height, width, rule)
    row, col = grid_positions(keep, layout)
    inside = (row >= r0) & (row < r1) & (col >= c0) & (col < c1)
    tokens = grid_embeds.reshape(-1, grid_embeds.shape[-1])[inside]
    # Sort key: a row's newline comes after every column of that row.
    token_key = row[inside] * (width + 1) + col[inside]
    rows = torch.arange(r0, r1, device=keep.device)
    newline_key = rows * (width + 1) + width
    sequence = torch.cat([tokens, newline.to(tokens.dtype).expand(len(rows), -1)])
    return sequence[torch.cat([token_key, newline_key]).argsort()]
