"""The image path of our model (`llava.model.pipeline.VisualTokenPipeline`, its input checks and the typed
`LlavaConfig`), against values that do not come from that code:

- kept indices: plain `torch.topk` over the [CLS] attention that transformers' own eager CLIP computes
  (tests/oracle_llava.py `cls_attention_and_features`), sorted ascending (FasterVLM's boolean-mask readback);
- token counts: written out by hand from the tiny geometry (32 px crops, 8 px patches: a 4 x 4 patch grid, 16 patches
  per crop; pinpoints 32x64, 64x32, 64x64, 96x32, 32x96 (w x h));
- refusals: the image's crop grid under each anyres rule, worked out by hand in each test's docstring.
"""

import pytest
import torch

import llava.model.pipeline as pipeline_module
from llava.mm_utils import process_images
from llava.model.image_checks import check_image_sizes
from llava.model.language_model.llava_llama import LlavaConfig
from llava.model.merge import GridLayout
from tests.conftest import pil_image
from tests.hf_helpers import hf_model
from tests.oracle_llava import cls_attention_and_features, eager_clip
from tests.test_model import prompt_ids

BUDGET = 5
PATCHES = 16  # 4 x 4 patches per 32 px crop, written out (not imported from the code under test)


@pytest.fixture(scope="module")
def v16_tower(v16_dir, clip_dir):
    """transformers' eager CLIPVisionModel holding the v1.6 checkpoint's own fine-tuned tower."""
    return hf_model("llava_next", v16_dir, clip_dir)[0].model.vision_tower


def oracle_keep(cls_attn: torch.Tensor, k: int) -> torch.Tensor:
    """(N, P) -> (N, k): the k highest-attention patches, in raster order."""
    return cls_attn.topk(k, dim=1).indices.sort(dim=1).values


# --- the typed result ----------------------------------------------------------------------------------------------
def test_v15_keep_is_topk_of_the_oracle_cls_attention(v15_dir, clip_dir, load):
    _, model, proc, _ = load(v15_dir, visual_token_num=BUDGET)
    pixels = process_images([pil_image(40, 24, seed=1), pil_image(24, 40, seed=2)], proc, model.config)
    expected_attn, _ = cls_attention_and_features(eager_clip(clip_dir), pixels)
    with torch.no_grad():
        visual = model.visual(pixels)
    assert [k.tolist() for k in visual.keep] == [[row] for row in oracle_keep(expected_attn, BUDGET).tolist()]
    torch.testing.assert_close(torch.cat(visual.cls_attn), expected_attn, atol=1e-6, rtol=1e-5)
    assert visual.counts == [BUDGET, BUDGET]  # one crop per image


@pytest.mark.parametrize("size,crops", [((24, 24), 1 + 4), ((32, 16), 1 + 2), ((30, 70), 1 + 2)])
def test_v16_paper_keep_and_counts(v16_dir, v16_tower, load, size, crops):
    """Paper rule (best fill of the canvas), by hand: 24x24 fills 64x64 (2x2 grid); 32x16 fills 64x32 exactly
    (2x1); 30x70 fits as 27x64 in 32x64: fill 0.84, beating 32x96's 32x74 (0.77) (1x2)."""
    _, model, proc, _ = load(v16_dir, visual_token_num=BUDGET, anyres_mode="paper")
    pixels = process_images([pil_image(*size, seed=4)], proc, model.config, anyres_mode="paper")
    assert pixels.shape[1] == crops
    expected_attn, _ = cls_attention_and_features(v16_tower, pixels[0])
    with torch.no_grad():
        visual = model.visual(pixels, [size])
    assert torch.equal(visual.keep[0], oracle_keep(expected_attn, BUDGET))
    assert visual.counts == [BUDGET * crops]


# --- our model's placeholder count (upstream mode) -----------------------------------------------------------------
def test_v16_upstream_count_by_hand(v16_dir, load):
    """64x16 (w x h): upstream picks 64x32 (all of its 1024 px fit; least waste) -> a 2x1 grid, an 8 x 4 patch canvas.
    The image fills 64x16 of it: patch rows 0 and 3 are padding, rows 1-2 stay (LLaVA: int(16 * 8 / 64) = 2 rows,
    pad (4 - 2) // 2 = 1). So per image: the base crop's tokens + the grid's kept patches in rows 1-2, i.e. patch
    index 4..11 of each grid crop, + one newline per kept row (2)."""
    size = (64, 16)
    tok, full_model, proc, _ = load(v16_dir, anyres_mode="upstream")
    pixels = process_images([pil_image(*size, seed=5)], proc, full_model.config, anyres_mode="upstream")
    assert pixels.shape[1] == 3
    with torch.no_grad():
        out = full_model(prompt_ids(tok), images=pixels, image_sizes=[size])
    assert out.v_token_num == [16 + 2 * 8 + 2]
    assert full_model.visual.full_tokens(size) == 16 + 2 * (8 + 1)

    _, model, _, _ = load(v16_dir, visual_token_num=BUDGET, anyres_mode="upstream")
    with torch.no_grad():
        visual = model.visual(pixels, [size])
    grid_keep = visual.keep[0][1:]
    in_window = int(((grid_keep >= 4) & (grid_keep < 12)).sum())
    assert visual.counts == [BUDGET + in_window + 2]


# --- a model refuses crops made with the other anyres rule ---------------------------------------------------------
def upstream_model_and_paper_pixels(v16_dir, load, size):
    _, model, proc, _ = load(v16_dir, anyres_mode="upstream")
    return model, process_images([pil_image(*size, seed=6)], proc, model.config, anyres_mode="paper")


def test_paper_crops_with_another_count_are_refused(v16_dir, load):
    """24x24: paper fills 64x64 best (2x2, 4 grid crops); upstream: 32x64 and 64x32 both hold all 576 px with the
    same waste, the first wins (1x2, 2 grid crops)."""
    model, pixels = upstream_model_and_paper_pixels(v16_dir, load, (24, 24))
    assert pixels.shape[1] == 1 + 4
    with pytest.raises(ValueError, match=r"1x2 crop grid but 4 grid crops.*anyres_mode=model\.pruning\.anyres_mode"):
        model.visual(pixels, [(24, 24)])


def test_paper_crops_with_the_same_count_but_another_layout_are_refused(v16_dir, load):
    """32x16: paper fills 64x32 exactly (2x1); upstream: 32x64 and 64x32 both hold all 512 px with the same waste,
    the first wins (1x2). Two grid crops either way, so only the crops' padding tells."""
    model, pixels = upstream_model_and_paper_pixels(v16_dir, load, (32, 16))
    assert pixels.shape[1] == 1 + 2
    with pytest.raises(ValueError, match=r"do not hold the image.*\(1x2 crops\).*anyres_mode=model\.pruning"):
        model.visual(pixels, [(32, 16)])


def test_swapped_image_size_is_refused(v16_dir, load):
    """30x70 (tall): upstream's 32x96 holds all 2100 px (1x3 grid); (70, 30) would get 96x32 (3x1): same count,
    and the crops' padding bands fit the tall size only."""
    _, model, proc, _ = load(v16_dir, anyres_mode="upstream")
    pixels = process_images([pil_image(30, 70, seed=7)], proc, model.config, anyres_mode="upstream")
    with pytest.raises(ValueError, match=r"looks like \(height, width\)"):
        model.visual(pixels, [(70, 30)])


# --- LlavaConfig ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [("tokenizer_padding_side", "middle"), ("mm_projector_type", "conv"),
                                         ("mm_projector_type", "mlp0x_gelu"), ("mm_vision_select_feature", "cls"),
                                         ("image_aspect_ratio", "crop")])
def test_config_refuses_unknown_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"LlavaConfig: unknown {field} '{value}'"):
        LlavaConfig(**{field: value})


@pytest.mark.parametrize("field,value", [("mm_hidden_size", "32"), ("mm_vision_select_layer", True),
                                         ("mm_use_im_start_end", 1), ("mm_vision_tower", 3)])
def test_config_refuses_wrong_types_naming_the_field(field, value):
    with pytest.raises(TypeError, match=rf"LlavaConfig: {field} must be"):
        LlavaConfig(**{field: value})


@pytest.mark.parametrize("pinpoints", [None, [], [[32, 64], [64]], [[32, 0]], [[32.0, 64]], [[True, 64]]])
def test_anyres_needs_pinpoints(pinpoints):
    with pytest.raises(ValueError, match="image_grid_pinpoints must be a non-empty list"):
        LlavaConfig(image_aspect_ratio="anyres", image_grid_pinpoints=pinpoints)


def test_config_flags_by_hand():
    assert LlavaConfig(image_aspect_ratio="anyres", image_grid_pinpoints=[[32, 64]]).is_anyres is True
    assert LlavaConfig(image_aspect_ratio="pad").is_anyres is False
    assert LlavaConfig().is_anyres is False
    assert LlavaConfig().is_multimodal is False
    assert LlavaConfig(mm_hidden_size=32).is_multimodal is True
    with pytest.raises(ValueError, match="mm_hidden_size must be positive"):
        LlavaConfig(mm_hidden_size=0)


def test_size_whose_grid_only_fits_swapped_is_refused():
    """A grid rule of our own (wide images 3x1, others 1x2): 1 + 2 crops given with size (70, 30) fit the 1x2 grid
    of (30, 70) only, so the size was given as (height, width)."""
    def rule(size):
        return GridLayout(cols=3, rows=1, side=4) if size[0] > size[1] else GridLayout(cols=1, rows=2, side=4)

    crops = torch.zeros(1 + 2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"image_sizes\[0\] = \(70, 30\) looks like \(height, width\)"):
        check_image_sizes([crops], [(70, 30)], rule)


def test_a_selector_keeping_the_wrong_count_is_caught(v15_dir, load, monkeypatch):
    """The budget is 5 per crop: a selector that keeps 4 must not reach the LLM unnoticed."""
    _, model, proc, _ = load(v15_dir, visual_token_num=BUDGET)
    pixels = process_images([pil_image(40, 24, seed=1)], proc, model.config)
    monkeypatch.setattr(pipeline_module, "get_selector",
                        lambda method: lambda feats, attn, k, seed: attn.topk(k - 1).indices.sort().values)
    with pytest.raises(RuntimeError, match=r"4 visual tokens after pruning, expected 5 \(5 per crop x 1 crops\)"):
        model.visual(pixels)


def test_text_only_batch_generate_uses_the_padding_mask(v15_dir, load):
    """Two text prompts of different lengths, left-padded: each row must equal its prompt generated alone."""
    tok, model, _, _ = load(v15_dir)
    prompts = [tok("USER: hello there, how are you today? ASSISTANT:").input_ids, tok("USER: hi ASSISTANT:").input_ids]
    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    batch, counts, _ = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert counts == [0, 0]
    for row, p in zip(batch, prompts):
        alone, _, _ = model.generate(torch.tensor([p]), max_new_tokens=4, do_sample=False)
        assert row[:alone.shape[1]].tolist() == alone[0].tolist()
