"""LLaVA-1.6 crop merging on hand-built index tensors (no model)."""

import torch

from llava.model.merge import GridLayout, merge_grid_paper, merge_grid_upstream, unpad_window


def labelled(keep):
    """Embeddings whose single feature is 100 * crop + patch, so the output order can be read off."""
    crops = torch.arange(keep.shape[0]).unsqueeze(1)
    return (100 * crops + keep).float().unsqueeze(-1)  # (n_grid, k, 1)


def test_paper_order_is_raster_over_the_stitched_grid():
    # 2 crops side by side, 2x2 patches each. Crop 0 keeps patches 0, 3; crop 1 keeps 1, 2.
    keep = torch.tensor([[0, 3], [1, 2]])
    out = merge_grid_paper(labelled(keep), keep, GridLayout(cols=2, rows=1, side=2))
    # stitched positions: c0p0 (0,0), c0p3 (1,1), c1p1 (0,3), c1p2 (1,2) -> row 0: c0p0, c1p1; row 1: c0p3, c1p2
    assert out.squeeze(-1).tolist() == [0, 101, 3, 102]


def test_paper_order_two_by_two_grid():
    keep = torch.tensor([[3], [2], [1], [0]])  # one token per crop of a 2x2 grid of 2x2-patch crops
    out = merge_grid_paper(labelled(keep), keep, GridLayout(cols=2, rows=2, side=2))
    # c0p3 (1,1), c1p2 (1,2), c2p1 (2,1), c3p0 (2,2): rows 1 then 2
    assert out.squeeze(-1).tolist() == [3, 102, 201, 300]


def test_unpad_window():
    assert unpad_window((80, 20), height=4, width=8) == (1, 3, 0, 8)  # wide image: rows padded
    assert unpad_window((20, 80), height=8, width=4) == (0, 8, 1, 3)  # tall image: columns padded
    assert unpad_window((40, 20), height=4, width=8) == (0, 4, 0, 8)  # exact fit
    # 47 * (12 / 188) is 2.9999999999999996 in floating point: LLaVA-1.6's own unpad_image truncates (int) to 2
    # image rows, so (4 - 2) // 2 = 1 padding row each side; transformers rounds to 7 decimals first (3 rows, pad 0).
    assert unpad_window((188, 47), height=4, width=12) == (1, 3, 0, 12)
    assert unpad_window((47, 188), height=12, width=4) == (0, 12, 1, 3)
    assert unpad_window((188, 47), height=4, width=12, rule="transformers") == (0, 4, 0, 12)
    assert unpad_window((47, 188), height=12, width=4, rule="transformers") == (0, 12, 0, 4)


def test_upstream_drops_padding_and_ends_every_row_with_a_newline():
    layout = GridLayout(cols=2, rows=1, side=4)
    keep = torch.arange(16).repeat(2, 1)
    newline = torch.tensor([-1.0])
    out = merge_grid_upstream(labelled(keep), keep, layout, (80, 20), newline).squeeze(-1).tolist()
    row1 = [4, 5, 6, 7, 104, 105, 106, 107]
    row2 = [8, 9, 10, 11, 108, 109, 110, 111]
    assert out == row1 + [-1] + row2 + [-1]


def test_upstream_newlines_survive_pruning():
    layout = GridLayout(cols=2, rows=1, side=4)
    keep = torch.tensor([[0, 5], [9, 15]])  # c0p0 sits in the padding row 0; c1p15 in padding row 3
    out = merge_grid_upstream(labelled(keep), keep, layout, (80, 20), torch.tensor([-1.0])).squeeze(-1).tolist()
    assert out == [5, -1, 109, -1]
