"""Image preprocessing, anyres grids, prompt tokenization and stopping criteria (CPU, tiny sizes)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.image_geometry import (
    divide_to_patches,
    expand2square,
    get_anyres_image_grid_shape,
    resize_and_pad_image,
    select_best_resolution,
)
from llava.image_io import load_image, load_images
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    get_model_name_from_path,
    load_image_processor,
    process_anyres_image,
    process_images,
    tokenizer_image_token,
)
from tests.helpers_tokenizer import make_llama_tokenizer_dir

# LLaVA-1.6 pinpoints, [width, height].
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
# The same layout at 1/10.5 scale (crop 32 instead of 336), for fast pixel tests.
SMALL_PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# preprocessor_config.json of openai/clip-vit-large-patch14-336 (old feature-extractor format).
CLIP_336_CONFIG = {
    "crop_size": 336, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(CLIP_MEAN),
    "image_std": list(CLIP_STD), "resample": 3, "size": 336,
}


def _processor(side, **overrides):
    settings = {"size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side}, **overrides}
    return load_image_processor(settings)


def _raw_processor(side):
    """Rescale only (no normalisation): pixel values are colour / 255."""
    return _processor(side, do_normalize=False)


def _random_image(width, height, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _blocks(colours, block):
    """Image made of ``block``-pixel squares; ``colours`` is a grid (rows of RGB tuples)."""
    rows = [np.concatenate([np.full((block, block, 3), c, np.uint8) for c in row], axis=1) for row in colours]
    return Image.fromarray(np.concatenate(rows, axis=0))


def _mean_colour(pixels):
    """[3, H, W] tensor in [0, 1] → mean RGB in 0..255."""
    return tuple(round(v) for v in (pixels.mean(dim=(1, 2)) * 255).tolist())


RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# ------------------------------------------------------------------------- select_best_resolution


@pytest.mark.parametrize("rule", ["paper", "upstream"])
def test_500x500_gets_2x2_grid_under_both_rules(rule):
    # Fitted sizes: 336x672 → 336x336, 672x336 → 336x336, 672x672 → 672x672, 1008x336 and
    # 336x1008 → 336x336.
    # paper: fill 0.5, 0.5, 1.0, 0.33, 0.33 → 672x672.
    # upstream: effective = min(fitted, 250000): 112896, 112896, 250000, 112896, 112896 → 672x672.
    assert select_best_resolution((500, 500), PINPOINTS, rule) == (672, 672)


def test_small_square_image_paper_vs_upstream():
    # 300x300: every fitted area ≥ 300*300, so upstream's effective area is 90000 everywhere;
    # the least wasted canvas is 336x672 (wasted 135792; 672x336 ties and comes later).
    # paper: 672x672 is the only canvas filled completely (fill 1.0).
    assert select_best_resolution((300, 300), PINPOINTS, "upstream") == (336, 672)
    assert select_best_resolution((300, 300), PINPOINTS, "paper") == (672, 672)


@pytest.mark.parametrize("rule", ["paper", "upstream"])
def test_wide_1000x500_gets_672x336(rule):
    # scale to 672x336 is 0.672 → fitted 672x336 fills it exactly (fill 1.0; effective 225792,
    # wasted 0). 672x672 and 1008x336 fit the same 672x336 image but waste more.
    assert select_best_resolution((1000, 500), PINPOINTS, rule) == (672, 336)


def test_tall_300x700_paper_vs_upstream():
    # 336x672: scale min(1.12, 0.96) = 0.96 → 288x672 = 193536, fill 193536/225792 = 0.857.
    # 336x1008: scale min(1.12, 1.44) = 1.12 → 336x784 = 263424, fill 263424/338688 = 0.778,
    #           but upstream's effective area min(263424, 300*700 = 210000) = 210000 > 193536.
    # 672x336 / 1008x336: scale 0.48 → 144x336 = 48384. 672x672: 193536, fill 0.43.
    assert select_best_resolution((300, 700), PINPOINTS, "paper") == (336, 672)
    assert select_best_resolution((300, 700), PINPOINTS, "upstream") == (336, 1008)


def test_pinpoints_as_string_and_unknown_rule():
    assert select_best_resolution((1000, 500), str(PINPOINTS), "upstream") == (672, 336)
    with pytest.raises(ValueError, match="anyres rule"):
        select_best_resolution((10, 10), PINPOINTS, "nearest")


def test_grid_shape_is_width_then_height():
    # 300x700 → canvas 336 wide, 1008 tall under upstream → 1 crop across, 3 down.
    assert get_anyres_image_grid_shape((300, 700), PINPOINTS, 336, "upstream") == (1, 3)
    assert get_anyres_image_grid_shape((300, 700), PINPOINTS, 336, "paper") == (1, 2)
    assert get_anyres_image_grid_shape((1000, 500), str(PINPOINTS), 336) == (2, 1)


# ------------------------------------------------------------------------- geometry


def test_expand2square_centres_and_fills():
    fill = (122, 116, 104)
    wide = np.asarray(expand2square(Image.new("RGB", (40, 20), RED), fill))
    assert wide.shape == (40, 40, 3)
    assert (wide[10:30] == RED).all() and (wide[:10] == fill).all() and (wide[30:] == fill).all()
    tall = np.asarray(expand2square(Image.new("RGB", (21, 40), BLUE), fill))
    # (40 - 21) // 2 = 9 columns of fill on the left, 10 on the right.
    assert (tall[:, 9:30] == BLUE).all() and (tall[:, :9] == fill).all() and (tall[:, 30:] == fill).all()
    square = Image.new("RGB", (8, 8), GREEN)
    assert expand2square(square, fill) is square


def test_resize_and_pad_image_keeps_aspect_on_black():
    # 100x45 into 64x64: width bound (scale 0.64) → 64 x ceil(28.8) = 64x29, pasted at y = 17.
    out = np.asarray(resize_and_pad_image(Image.new("RGB", (100, 45), WHITE), (64, 64)))
    assert out.shape == (64, 64, 3)
    assert (out[17:46] == WHITE).all() and (out[:17] == 0).all() and (out[46:] == 0).all()
    # 30x70 into 32x64: height bound (scale 64/70) → ceil(27.43) = 28 wide, pasted at x = 2.
    out = np.asarray(resize_and_pad_image(Image.new("RGB", (30, 70), WHITE), (32, 64)))
    assert (out[:, 2:30] == WHITE).all() and (out[:, :2] == 0).all() and (out[:, 30:] == 0).all()


def test_divide_to_patches_raster_order():
    image = _blocks([[RED, GREEN, BLUE], [WHITE, (9, 9, 9), (7, 7, 7)]], 8)
    patches = divide_to_patches(image, 8)
    colours = [tuple(np.asarray(p)[0, 0]) for p in patches]
    assert colours == [RED, GREEN, BLUE, WHITE, (9, 9, 9), (7, 7, 7)]


# ------------------------------------------------------------------------- processor


def test_processor_matches_numpy_reference():
    side = 24
    image = _random_image(50, 37)
    # Reference: PIL bicubic resize of the shortest edge to 24 (long edge int(24 * 50 / 37) = 32),
    # centre crop at ((32 - 24) // 2, 0), x / 255, (x - mean) / std in float32.
    resized = np.asarray(image.resize((32, 24), Image.Resampling.BICUBIC))
    crop = resized[:, 4:28].astype(np.float64) * (1 / 255)
    crop = crop.astype(np.float32)
    expected = (crop - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    expected = torch.from_numpy(expected).permute(2, 0, 1)
    processor = _processor(side)
    assert processor.backend == "pil"
    got = processor.preprocess(image, return_tensors="pt")["pixel_values"][0]
    assert got.shape == (3, side, side)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_load_image_processor_from_clip_dir_is_pil(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(CLIP_336_CONFIG))
    processor = load_image_processor(tmp_path)
    assert processor.backend == "pil"
    assert processor.size["shortest_edge"] == 336 and processor.crop_size["height"] == 336
    assert tuple(int(x * 255) for x in processor.image_mean) == (122, 116, 104)
    # Handing it back (or any processor) keeps the PIL backend.
    assert load_image_processor(processor) is processor


def test_load_image_processor_converts_other_backends_to_pil():
    from transformers import CLIPImageProcessorPil

    class TorchvisionLike(CLIPImageProcessorPil):  # stands in for the torchvision CLIPImageProcessor
        @property
        def backend(self):
            return "torchvision"

    other = TorchvisionLike(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48}, image_mean=[0.5] * 3)
    processor = load_image_processor(other)
    assert type(processor) is CLIPImageProcessorPil and processor.backend == "pil"
    assert processor.size["shortest_edge"] == 48 and processor.image_mean == (0.5, 0.5, 0.5)


def test_load_image_processor_from_vision_config():
    processor = load_image_processor(SimpleNamespace(image_size=16))
    assert processor.backend == "pil" and processor.crop_size["height"] == 16


# ------------------------------------------------------------------------- process_images


def test_process_images_pad_matches_manual_pipeline():
    processor = _processor(32)
    images = [_random_image(40, 20, 1), _random_image(20, 50, 2)]
    cfg = SimpleNamespace(image_aspect_ratio="pad")
    out = process_images(images, processor, cfg)
    assert out.shape == (2, 3, 32, 32)
    manual = processor.preprocess(expand2square(images[0], (122, 116, 104)), return_tensors="pt")
    torch.testing.assert_close(out[0], manual["pixel_values"][0], rtol=0, atol=0)


def test_process_images_default_is_resize_and_centre_crop():
    processor = _processor(32)
    images = [_random_image(40, 20, 1)]
    out = process_images(images, processor, SimpleNamespace(image_aspect_ratio="square"))
    torch.testing.assert_close(out, processor(images, return_tensors="pt")["pixel_values"])


def _manual_anyres(image, processor, canvas, fitted):
    """Oracle, upstream LLaVA's `process_anyres_image` (haotian-liu/LLaVA llava/mm_utils.py) written out with PIL:
    the image resized to the hand-computed `fitted` (w, h) and pasted centred on a black `canvas` (w, h), cut into
    crops in raster order, after the whole image squashed to one crop; each crop through the CLIP processor."""
    side = processor.crop_size["height"]
    padded = Image.new("RGB", canvas, (0, 0, 0))
    padded.paste(image.resize(fitted, Image.Resampling.BICUBIC),
                 ((canvas[0] - fitted[0]) // 2, (canvas[1] - fitted[1]) // 2))
    crops = [padded.crop((x, y, x + side, y + side)) for y in range(0, canvas[1], side)
             for x in range(0, canvas[0], side)]
    base = image.resize((processor.size["shortest_edge"],) * 2, Image.Resampling.BICUBIC)
    return torch.stack([processor.preprocess(c, return_tensors="pt")["pixel_values"][0] for c in [base, *crops]])


def test_process_images_anyres_square_uses_paper_rule_by_default():
    processor = _processor(32)
    image = _random_image(20, 20)
    cfg = SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints=SMALL_PINPOINTS)
    # A 20x20 image (smaller than a crop): paper → 64x64 canvas, filled (scale 3.2), 2x2 grid, 1 + 4 crops.
    expected = _manual_anyres(image, processor, (64, 64), (64, 64))
    torch.testing.assert_close(process_images([image], processor, cfg)[0], expected, rtol=0, atol=1e-6)
    # Upstream → 32x64 canvas (least waste): 32x32 fitted, 16 black rows above and below; 1x2 grid, 1 + 2 crops.
    expected = _manual_anyres(image, processor, (32, 64), (32, 32))
    torch.testing.assert_close(process_images([image], processor, cfg, anyres_mode="upstream")[0], expected, rtol=0,
                               atol=1e-6)


def test_process_images_anyres_real_size_with_string_pinpoints(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(CLIP_336_CONFIG))
    processor = load_image_processor(tmp_path)
    cfg = SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints=str(PINPOINTS))
    assert process_images([_random_image(500, 500)], processor, cfg).shape == (1, 5, 3, 336, 336)


def test_process_images_anyres_mixed_grids_give_a_list():
    processor = _processor(32)
    cfg = SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints=SMALL_PINPOINTS)
    images = [_random_image(64, 64), _random_image(100, 50)]
    out = process_images(images, processor, cfg)
    assert isinstance(out, list) and len(out) == 2
    # 64x64 fills the 64x64 canvas as is; 100x50 fits 64x32 exactly (scale 0.64): 2x2 and 2x1 grids.
    torch.testing.assert_close(out[0], _manual_anyres(images[0], processor, (64, 64), (64, 64)), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1], _manual_anyres(images[1], processor, (64, 32), (64, 32)), rtol=0, atol=1e-6)


def test_anyres_crop_order_is_base_then_raster():
    processor = _raw_processor(32)
    # 64x64 quadrants; the 64x64 canvas needs no resize, so each crop is one flat colour.
    image = _blocks([[RED, GREEN], [BLUE, WHITE]], 32)
    crops = process_anyres_image(image, processor, SMALL_PINPOINTS, "paper")
    assert crops.shape == (5, 3, 32, 32)
    assert [_mean_colour(c) for c in crops[1:]] == [RED, GREEN, BLUE, WHITE]
    # The base crop is the whole image squashed to 32x32: its mean is the mean of the four.
    assert _mean_colour(crops[0]) == pytest.approx((128, 128, 128), abs=2)


def test_anyres_non_square_grids_follow_width_height():
    processor = _raw_processor(32)
    wide = process_anyres_image(_blocks([[RED, GREEN]], 32), processor, SMALL_PINPOINTS, "paper")
    assert [_mean_colour(c) for c in wide[1:]] == [RED, GREEN]  # 64x32 canvas: 2 across
    tall = process_anyres_image(_blocks([[RED], [BLUE]], 32), processor, SMALL_PINPOINTS, "paper")
    assert [_mean_colour(c) for c in tall[1:]] == [RED, BLUE]  # 32x64 canvas: 2 down


# ------------------------------------------------------------------------- image loading


def test_load_image_converts_to_rgb(tmp_path):
    path = tmp_path / "rgba.png"
    Image.new("RGBA", (5, 3), (1, 2, 3, 4)).save(path)
    image = load_image(str(path))
    assert image.mode == "RGB" and image.size == (5, 3)
    assert [im.size for im in load_images([path, path])] == [(5, 3), (5, 3)]


def test_load_image_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing.jpg"
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        load_image(missing)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match="corrupt.png"):
        load_image(corrupt)
    with pytest.raises(ValueError, match="offline"):
        load_image("https://example.com/cat.jpg")


# ------------------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(make_llama_tokenizer_dir(tmp_path_factory.mktemp("tok")))


def test_helper_tokenizer_is_llama_with_bos(tokenizer):
    assert type(tokenizer).__name__ == "LlamaTokenizer"
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    ids = tokenizer("USER: hi").input_ids
    assert ids[0] == 1 and ids[-1] != 2


def test_tokenizer_image_token_single_image(tokenizer):
    conv = get_conv_template("vicuna_v1")
    conv.append_message("USER", "<image>\nWhat is this?")
    conv.append_message("ASSISTANT", None)
    prompt = conv.get_prompt()
    before, after = prompt.split("<image>")
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")
    assert ids.dtype == torch.long and ids.dim() == 1
    expected = tokenizer(before).input_ids + [IMAGE_TOKEN_INDEX] + tokenizer(after).input_ids[1:]
    assert ids.tolist() == expected
    assert ids.tolist().count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist() == [len(tokenizer(before).input_ids)]


def test_tokenizer_image_token_two_images_and_leading_image(tokenizer):
    ids = tokenizer_image_token("<image>\nleft <image> right", tokenizer)
    first, middle, last = (tokenizer(c).input_ids for c in ["", "\nleft ", " right"])
    assert first == [1]
    assert ids == [1, IMAGE_TOKEN_INDEX] + middle[1:] + [IMAGE_TOKEN_INDEX] + last[1:]
    assert ids.count(1) == 1


def test_tokenizer_image_token_without_bos(tmp_path):
    tok = AutoTokenizer.from_pretrained(make_llama_tokenizer_dir(tmp_path), add_bos_token=False)
    ids = tokenizer_image_token("a <image> b", tok)
    assert ids == tok("a ").input_ids + [IMAGE_TOKEN_INDEX] + tok(" b").input_ids
    with pytest.raises(ValueError, match="Unsupported"):
        tokenizer_image_token("a", tok, return_tensors="np")


def test_get_model_name_from_path():
    assert get_model_name_from_path("/ckpts/liuhaotian/llava-v1.5-7b/") == "llava-v1.5-7b"
    assert get_model_name_from_path("runs/llava-lora/checkpoint-500") == "llava-lora_checkpoint-500"
    assert get_model_name_from_path("llava-v1.6-vicuna-7b") == "llava-v1.6-vicuna-7b"


# ------------------------------------------------------------------------- stopping criteria


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


def test_keywords_stopping_is_per_sample_on_new_tokens_only(tokenizer):
    eos = tokenizer.eos_token_id
    stop = KeywordsStoppingCriteria(["</s>"], tokenizer, torch.tensor([[1, 5, 6]]))
    rows = [_ids(tokenizer, " a cat") + [eos], _ids(tokenizer, " a cat") + [5]]
    width = max(map(len, rows))
    output_ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    done = stop(output_ids, None)
    assert done.dtype == torch.bool and done.tolist() == [True, False]


def test_keywords_stopping_matches_decoded_text(tokenizer):
    stop = KeywordsStoppingCriteria(["###"], tokenizer, torch.tensor([[1]]))
    hit = _ids(tokenizer, "red ###")
    miss = _ids(tokenizer, "red ##")
    width = max(len(hit), len(miss))
    output_ids = torch.tensor([[3] * (width - len(hit)) + hit, [3] * (width - len(miss)) + miss])
    assert stop(output_ids, None).tolist() == [True, False]


def test_keywords_stopping_ignores_the_prompt_prefix(tokenizer):
    # The prompt ends with the keyword, so a window reaching back into it would stop at once.
    prompt = torch.tensor([[1] + _ids(tokenizer, "USER: hi ###")])
    stop = KeywordsStoppingCriteria(["###"], tokenizer, prompt)
    # generate() with input_ids returns prompt + new tokens: the prompt's "###" must not count.
    with_prefix = torch.cat([prompt, torch.tensor([_ids(tokenizer, " a")])], dim=1)
    assert stop(with_prefix, None).tolist() == [False]
    with_prefix = torch.cat([prompt, torch.tensor([_ids(tokenizer, " a ###")])], dim=1)
    assert stop(with_prefix, None).tolist() == [True]
    # generate() with inputs_embeds returns new tokens only.
    assert stop(torch.tensor([_ids(tokenizer, " ###")]), None).tolist() == [True]
