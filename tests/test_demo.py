"""`python -m llava.demo` end to end on a freshly built tiny model, and its kept-patch mask against top-k."""

import contextlib
import io

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from llava.demo.budgets import kept_mask
from llava.demo.cli import main as demo_main
from llava.demo.model import SPEC_FILE, TOWER_SUBDIR, ensure_tiny_model
from llava.demo.report import format_table
from llava.mm_utils import load_image, load_image_processor, process_images
from llava.model.tiny import CLIP_MEAN
from llava.model.multimodal_encoder.clip_encoder import TowerOutput
from tests.conftest import pil_image
from tests.oracle_llava import cls_attention_and_features, eager_clip

BUDGETS = [576, 37]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("demo")
    image = tmp / "wide.png"
    pil_image(80, 48, seed=3).save(image)  # not square: the padding shows in the figure
    output = tmp / "out" / "demo.png"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = demo_main(["--random-weights", "--model-dir", str(tmp / "model"), "--output", str(output),
                            "--image", str(image),
                            "--budgets", ",".join(map(str, BUDGETS)), "--max-new-tokens", "2", "--device", "cpu"])
    return result, output, printed.getvalue(), image


def test_demo_writes_figure_and_reports_budgets(run):
    result, output, _, _ = run
    assert output.is_file() and output.stat().st_size > 20_000
    with Image.open(output) as png:
        assert png.format == "PNG" and png.width > 800 and png.height > 400
    assert [r.budget for r in result.rows] == BUDGETS
    assert [r.kept for r in result.rows] == BUDGETS  # v_token_num from generate
    assert [round(r.reduction, 1) for r in result.rows] == [0.0, 93.6]
    text_tokens = {r.prompt_len - r.kept for r in result.rows}
    assert len(text_tokens) == 1 and text_tokens.pop() > 10
    assert result.random_weights and result.image.shape == (336, 336, 3)
    # what the tower saw: the 80x48 image padded to 80x80 with LLaVA's background, int(255 * CLIP mean). Its 16
    # background rows above and below become 16 * 336 / 80 = 67 output rows, less the bicubic filter's reach of 2
    # source rows (8.4 output rows): the first and last 58 rows are exactly that colour (up to the 8-bit round trip)
    background = np.array([int(255 * m) for m in CLIP_MEAN])
    for band in (result.image[:58], result.image[-58:]):
        assert np.abs(band.astype(int) - background).max() <= 1
    assert np.abs(result.image[80:256].astype(int) - background).max() > 50  # the picture itself


def test_drawn_patches_are_the_top_k_of_the_eager_cls_attention(run):
    """The [CLS] attention drawn and the kept patches outlined are those of transformers' eager CLIPVisionModel read
    from the demo's tower directory (layer -2 maps, head mean), top-k per budget."""
    result, _, _, image_path = run
    tower_dir = result.model_path / TOWER_SUBDIR
    pixels = process_images([load_image(image_path)], load_image_processor(tower_dir),
                            SimpleNamespace(image_aspect_ratio="pad"))
    expected, _ = cls_attention_and_features(eager_clip(tower_dir), pixels)
    torch.testing.assert_close(result.cls_attn, expected[0], atol=1e-6, rtol=1e-5)
    for row in result.rows:
        mask = torch.zeros(576, dtype=torch.bool)
        mask[expected[0].topk(row.budget).indices] = True
        assert torch.equal(row.mask, mask) and row.kept == row.budget


def test_kept_mask_matches_topk_directly(run):
    from llava.model.builder import load_pretrained_model

    result, _, _, _ = run
    _, model, _, _ = load_pretrained_model(str(result.model_path), None, None, device="cpu")
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(2, 576, generator=gen).softmax(-1)  # distinct values: top-k is unambiguous
    out = TowerOutput(features=torch.randn(2, 576, 32, generator=gen), cls_attn=scores)
    for k in (1, 29, 144, 575, 576):
        model.set_pruning(model.pruning.replace(visual_token_num=k))
        mask = kept_mask(model, out)
        expected = torch.zeros(576, dtype=torch.bool)
        expected[scores[0].topk(k).indices] = True
        assert torch.equal(mask, expected), k


def test_kept_mask_of_visionzip_holds_its_dominant_patches(run):
    """VisionZip needs the tower's keys and [CLS] token (the demo used to call its selector without them). Its mask is
    the dominant patches: budget - contextual - 1 ([CLS]) of the top [CLS] attention, contextual = round(k * 10 / 64)
    by hand: k = 64 -> 10 contextual, 53 patches; k = 29 -> 5 contextual, 23 patches."""
    from llava.model.builder import load_pretrained_model

    result, _, _, _ = run
    _, model, _, _ = load_pretrained_model(str(result.model_path), None, None, device="cpu",
                                           pruning_method="visionzip")
    gen = torch.Generator().manual_seed(1)
    scores = torch.rand(1, 576, generator=gen).softmax(-1)
    out = TowerOutput(features=torch.randn(1, 576, 32, generator=gen), cls_attn=scores,
                      keys=torch.randn(1, 576, 8, generator=gen), cls_token=torch.randn(1, 32, generator=gen))
    for k, patches in ((64, 53), (29, 23)):
        model.set_pruning(model.pruning.replace(visual_token_num=k))
        expected = torch.zeros(576, dtype=torch.bool)
        expected[scores[0].topk(patches).indices] = True
        assert torch.equal(kept_mask(model, out), expected), k


def test_printed_table_and_note(run):
    result, output, printed, _ = run
    lines = format_table(result.rows).splitlines()
    assert lines[0].split()[:4] == ["budget", "reduction", "kept", "LLM"]
    assert lines[2].split()[:3] == ["576", "0.0%", "576"] and lines[3].split()[:3] == ["37", "93.6%", "37"]
    assert all(line in printed for line in lines)
    assert "meaningless" in printed and f"figure: {output}" in printed


def test_cached_model_is_reused_and_foreign_dirs_are_kept(run, tmp_path):
    result, _, _, _ = run
    spec = result.model_path / SPEC_FILE
    before = spec.stat().st_mtime_ns
    assert ensure_tiny_model(result.model_path) == result.model_path
    assert spec.stat().st_mtime_ns == before
    (tmp_path / "mine.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="not a demo model directory"):
        ensure_tiny_model(tmp_path)
    assert (tmp_path / "mine.txt").is_file()


def test_bad_budgets_fail_before_running(run, tmp_path):
    result, _, _, _ = run
    with pytest.raises(ValueError, match="comma-separated"):
        demo_main(["--random-weights", "--model-dir", str(result.model_path), "--budgets", "576,half"])
    with pytest.raises(ValueError, match="out of range"):
        demo_main(["--random-weights", "--model-dir", str(result.model_path), "--budgets", "577",
                   "--output", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()


def test_budget_panel_darkens_exactly_the_pruned_patches():
    """A white 336 px image, 24 x 24 patches of 14 px, keep three hand-picked patches: drawn on an axes that fills a
    336 px canvas, a pruned patch's centre is white under 78% black (255 * 0.22 = 56), a kept one stays white."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from llava.demo.budgets import BudgetRow
    from llava.demo.figure import _budget_panel

    side, kept = 24, [(0, 0), (5, 17), (23, 23)]
    mask = torch.zeros(side * side, dtype=torch.bool)
    for r, c in kept:
        mask[r * side + c] = True
    row = BudgetRow(budget=3, reduction=99.5, kept=3, prompt_len=20, seconds=0.1, answer="a", mask=mask)
    fig = Figure(figsize=(3, 3), dpi=112)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    _budget_panel(ax, np.full((336, 336, 3), 255, dtype=np.uint8), row, side)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3].astype(int)  # (336, 336, 3)
    assert pixels.shape == (336, 336, 3)
    for r in range(side):
        for c in range(side):
            centre = pixels[r * 14 + 7, c * 14 + 7]
            expected = 255 if (r, c) in kept else 56
            assert np.abs(centre - expected).max() <= 1, (r, c, centre)


@pytest.mark.parametrize("budgets, visual_token_num, expected", [
    (None, None, None), ("64,16", None, [64, 16]), (None, 7, [7]), (" 5, ,3", None, [5, 3])])
def test_requested_budgets(budgets, visual_token_num, expected):
    from llava.demo.budgets import requested_budgets

    assert requested_budgets(budgets, visual_token_num) == expected


def test_budgets_and_visual_token_num_together_are_refused():
    from llava.demo.budgets import requested_budgets

    with pytest.raises(ValueError, match="pass one of them"):
        requested_budgets("64,16", 7)
