"""The README's token-budget table (llava/bench/token_budgets.py) against counts worked out by hand here, from the
published model shapes (patch sizes, crop grids, pooling, merger) written in the comments."""

import pytest

from llava.bench import token_budgets as tb


def test_llava15_336px():
    # CLIP ViT-L/14 at 336 px: 24 x 24 = 576 patches; 25 % of 576 = 144, 10 % = 57.6 -> 58, 5 % = 28.8 -> 29
    b = tb.llava15()
    assert (b.full, b.per_unit, b.units) == (576, 576, 1)
    assert [b.kept_per_unit(r) for r in tb.REDUCTIONS] == [144, 58, 29]
    assert [b.llm_tokens(r) for r in tb.REDUCTIONS] == [144, 58, 29]


def test_llava16_672px():
    # 672 x 672 on LLaVA-1.6's pinpoints: the 672 x 672 grid = 2 x 2 crops of 336 px, no padding (square);
    # base 576 + grid 48 x 48 = 2,304 + 48 row newlines = 2,928. Kept at K per crop: 5K + 48 (newlines stay).
    b = tb.llava16()
    assert (b.full, b.units, b.per_unit, b.extra) == (2928, 5, 576, 48)
    assert [b.llm_tokens(r) for r in tb.REDUCTIONS] == [5 * 144 + 48, 5 * 58 + 48, 5 * 29 + 48]


def test_onevision_1024px_image():
    # SigLIP 384 / 14: 27 x 27 = 729 per crop. 1024 x 1024 on the 384-multiple pinpoints: 1152 x 1152 (3 x 3) is the
    # smallest grid that keeps every pixel; unpadded 81 x 81 = 6,561 tokens, ratio sqrt(6561 / (9 x 729)) = 1.0
    # <= 1.1, so anyres_max_9 does not downsample; + 81 row newlines + the base crop's 729 = 7,371.
    # 25 % of 729 = 182.25 -> 182, 10 % = 72.9 -> 73, 5 % = 36.45 -> 36; LLM gets 10K + 81.
    b = tb.onevision_image()
    assert (b.full, b.units, b.per_unit, b.extra) == (7371, 10, 729, 81)
    assert [b.kept_per_unit(r) for r in tb.REDUCTIONS] == [182, 73, 36]
    assert [b.llm_tokens(r) for r in tb.REDUCTIONS] == [1901, 811, 441]


def test_onevision_8_frame_video():
    # each frame's 27 x 27 map pooled 2x2 -> ceil(27 / 2) = 14, 14 x 14 = 196; 8 x 196 + 1 newline = 1,569;
    # 25 % of 196 = 49, 10 % = 19.6 -> 20, 5 % = 9.8 -> 10
    b = tb.onevision_video()
    assert (b.full, b.units, b.per_unit) == (1569, 8, 196)
    assert [b.llm_tokens(r) for r in tb.REDUCTIONS] == [8 * 49 + 1, 8 * 20 + 1, 8 * 10 + 1]


def test_qwen25_vl_1024px_image():
    # round(1024 / 28) = 37 -> 1036 x 1036 = 1,073,296 px, inside [3,136, 12,845,056]: 74 x 74 patches of 14 px,
    # merged 2 x 2 -> 37 x 37 = 1,369 LLM tokens; 25 % = 342.25 -> 342, 10 % = 136.9 -> 137, 5 % = 68.45 -> 68
    b = tb.qwen_image()
    assert (b.full, b.units, b.per_unit) == (1369, 1, 1369)
    assert [b.kept_per_unit(r) for r in tb.REDUCTIONS] == [342, 137, 68]
    assert "1036x1036" in b.input


def test_qwen25_vl_image_above_max_pixels_is_scaled_down():
    # 3000 x 6000 (h x w) = 18 M px > 12,845,056 = 3584^2: beta = sqrt(18e6 / 12,845,056) = 1.18377...;
    # 3000 / beta = 2534.3 -> floor(90.5) x 28 = 2520, 6000 / beta = 5068.6 -> floor(181.0) x 28 = 5068;
    # 90 x 181 = 16,290 tokens (without the cap: round(3000 / 28) x round(6000 / 28) = 107 x 214 = 22,898)
    b = tb.qwen_image(3000, 6000)
    assert b.per_unit == 90 * 181 and "5068x2520" in b.input


def test_qwen25_vl_8_frame_448px_video():
    # 448 / 28 = 16 (448^2 = 200,704 px within 128..768 x 784 per frame): 16 x 16 = 256 tokens per temporal patch
    # of 2 frames; 8 frames -> 4 pairs -> 1,024; 10 % of 256 = 25.6 -> 26, 5 % = 12.8 -> 13
    b = tb.qwen_video()
    assert (b.full, b.units, b.per_unit) == (1024, 4, 256)
    assert [b.llm_tokens(r) for r in tb.REDUCTIONS] == [4 * 64, 4 * 26, 4 * 13]


def test_video_llava_8_frames():
    # CLIP ViT-L/14 at 224 px: 16 x 16 = 256 patches + the [CLS] row per frame, 8 x 257 = 2,056; LLM gets 8(K + 1)
    b = tb.video_llava()
    assert (b.full, b.units, b.per_unit, b.extra) == (2056, 8, 256, 8)
    assert [b.llm_tokens(r) for r in tb.REDUCTIONS] == [8 * 65, 8 * 27, 8 * 14]


def test_non_square_llava16_is_refused_not_miscounted():
    # 336 x 1008 (h x w) picks the 336 x 1008 grid (1 x 3 crops): no unpadding, 4 x 576 + 24 = 2,328 -> accepted;
    # 400 x 1000 also picks 336 x 1008 (0.84 x 1000 = 840 px wide beats 672), but its aspect 2.5 < 3 unpads the grid
    # to 24 x 60 columns (transformers: 1,440 + 24 + 576 = 2,040, not 2,328): the table refuses rather than miscount
    assert tb.llava16(336, 1008).full == 4 * 576 + 24
    with pytest.raises(ValueError, match="2040 placeholders.*token_budgets.py"):
        tb.llava16(400, 1000)


def test_markdown_table_rows():
    text = tb.markdown(tb.typical())
    lines = text.splitlines()
    assert len(lines) == 2 + 7
    assert "| LLaVA-OneVision | 1024x1024 image | 7,371 (10 x 729 + 81 row newlines) | crop | 729 | 182 | 73 | 36 | " \
           "1,901 | 811 | 441 |" in lines
