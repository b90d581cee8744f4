"""Images that used to be corrupted or to exhaust memory, and bad inputs to the CLIs and the Python API (issue 13,
items 4, 12, 13, 14, 15, 18). Every expected value is computed by hand in the test or by a small oracle written here
from upstream LLaVA's code (`expand2square` + the CLIP processor, haotian-liu/LLaVA llava/mm_utils.py)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from llava.mm_utils import load_image, load_image_processor, process_images
from tests.conftest import pil_image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_BG = (122, 116, 104)  # int(x * 255) of CLIP's mean: the colour LLaVA pads with
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _raw_processor(side, mean=CLIP_MEAN):
    """A CLIP processor that only rescales (no normalisation): pixel value = colour / 255."""
    return load_image_processor({"size": {"shortest_edge": side}, "crop_size": {"height": side, "width": side},
                                 "do_normalize": False, "image_mean": list(mean)})


def _colours(pixels):
    """(3, H, W) rescaled pixels -> (H, W, 3) integer colours."""
    return (pixels.permute(1, 2, 0) * 255).round().to(torch.int64).numpy()


def _png(tmp_path, image, name="image.png", **save):
    path = tmp_path / name
    image.save(path, **save)
    return path


# --------------------------------------------------------------------------- item 4: modes that were corrupted


def test_16bit_grayscale_png_is_rescaled_not_white(tmp_path):
    # 16-bit levels -> 8 bit: v / 257 rounded (65535 / 257 = 255): 0, 25700 -> 100, 65535 -> 255, 1000 -> 3.89 -> 4.
    levels = np.array([[0, 25700, 65535, 1000]], dtype=np.uint16)
    path = _png(tmp_path, Image.fromarray(levels))
    with Image.open(path) as raw:
        assert raw.mode in ("I;16", "I")  # the file really is 16-bit
    image = load_image(path)
    assert image.mode == "RGB"
    assert np.asarray(image)[0].tolist() == [[0] * 3, [100] * 3, [255] * 3, [4] * 3]


def test_32bit_integer_image_in_16bit_range_is_rescaled():
    levels = np.tile(np.array([0, 25700, 65535], dtype=np.int32), (3, 1))
    image = Image.fromarray(levels)  # mode "I", as some readers give 16-bit data
    assert image.mode == "I"
    out = process_images([image], _raw_processor(3), SimpleNamespace(image_aspect_ratio="square"))
    assert _colours(out[0])[0].tolist() == [[0] * 3, [100] * 3, [255] * 3]  # 3x3 at side 3: no resampling


def _rgba_cases():
    """(RGBA pixel, expected RGB on CLIP's mean colour) computed by hand: a/255 * fg + (1 - a/255) * bg."""
    return [
        ((0, 0, 0, 0), CLIP_BG),  # transparent black: the background, not black
        ((10, 20, 30, 0), CLIP_BG),
        ((200, 0, 0, 255), (200, 0, 0)),  # opaque: unchanged
        # a = 128: R 200*128/255 + 122*127/255 = 100.39 + 60.76 = 161.2; G 116*127/255 = 57.8; B 104*127/255 = 51.8
        ((200, 0, 0, 128), (161, 58, 52)),
    ]


def test_rgba_file_composites_alpha_on_the_pad_colour(tmp_path):
    cases = _rgba_cases()
    image = Image.new("RGBA", (len(cases), 1))
    image.putdata([rgba for rgba, _ in cases])
    loaded = np.asarray(load_image(_png(tmp_path, image))).astype(int)[0]
    for got, (_, want) in zip(loaded, cases):
        assert np.abs(got - np.array(want)).max() <= 1, (got, want)


def test_process_images_composites_on_its_processors_mean():
    # mean (0.25, 0.5, 0.75) -> LLaVA's pad colour int(x * 255) = (63, 127, 191), by hand
    processor = _raw_processor(2, mean=(0.25, 0.5, 0.75))
    image = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    image.putpixel((1, 1), (9, 8, 7, 255))
    for aspect in ("pad", "square"):
        colours = _colours(process_images([image], processor, SimpleNamespace(image_aspect_ratio=aspect))[0])
        assert colours[0, 0].tolist() == [63, 127, 191] and colours[1, 1].tolist() == [9, 8, 7], aspect


def test_la_and_palette_transparency(tmp_path):
    la = Image.new("LA", (2, 1))
    la.putdata([(50, 0), (50, 255)])
    assert np.asarray(load_image(_png(tmp_path, la, "la.png")))[0].tolist() == [list(CLIP_BG), [50, 50, 50]]

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)  # index 0 black, index 1 red
    palette.putdata([0, 1])
    path = _png(tmp_path, palette, "p.png", transparency=0)  # index 0 is transparent (tRNS)
    assert np.asarray(load_image(path))[0].tolist() == [list(CLIP_BG), [255, 0, 0]]


def test_plain_modes_are_unchanged(tmp_path):
    gray = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8))
    assert np.asarray(load_image(_png(tmp_path, gray, "l.png")))[0].tolist() == [[0] * 3, [77] * 3, [255] * 3]
    rgb = pil_image(5, 4)
    assert np.array_equal(np.asarray(load_image(_png(tmp_path, rgb, "rgb.png"))), np.asarray(rgb))


# --------------------------------------------------------------------------- item 12: pad mode on extreme images


def _llava_pad_pixels(image, processor):
    """Oracle: upstream LLaVA's pad path, the full square canvas first (expand2square), then the processor."""
    fill = tuple(int(x * 255) for x in processor.image_mean)
    width, height = image.size
    if width != height:
        side = max(width, height)
        canvas = Image.new(image.mode, (side, side), fill)
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        image = canvas
    return processor.preprocess(image, return_tensors="pt")["pixel_values"][0]


@pytest.mark.parametrize("side,size", [(32, (40, 20)), (32, (20, 50)), (32, (333, 100)), (32, (100, 333)),
                                       (32, (7, 31)), (32, (64, 63)), (32, (31, 32)), (336, (500, 375)),
                                       (336, (375, 500)), (336, (640, 97))])
def test_pad_resizes_first_with_the_same_pixels(side, size):
    processor = _raw_processor(side)
    image = pil_image(*size, seed=sum(size))
    ours = process_images([image], processor, SimpleNamespace(image_aspect_ratio="pad"))[0]
    ref = _llava_pad_pixels(image, processor)
    assert ours.shape == ref.shape == (3, side, side)
    diff = (_colours(ours) - _colours(ref)).__abs__()
    assert diff.max() <= 1, f"max difference {diff.max()} levels"  # intermediate rounding only
    assert diff.mean() < 0.05


def test_pad_keeps_the_same_tokens_on_the_tiny_model(v15_dir, load):
    _, model, processor, _ = load(v15_dir, visual_token_num=4)
    for size in [(40, 24), (24, 40), (90, 31), (13, 57)]:
        image = pil_image(*size, seed=size[0])
        ours = process_images([image], processor, model.config)
        ref = _llava_pad_pixels(image, processor)[None]
        keep = [model.select(*(lambda o: (o.features, o.cls_attn))(model.encode(p))).keep for p in (ours, ref)]
        assert torch.equal(keep[0], keep[1]), size


_MEMORY_PROBE = textwrap.dedent("""
    import resource, sys, time
    from types import SimpleNamespace
    import numpy as np
    from PIL import Image
    from llava.mm_utils import load_image_processor, process_images
    proc = load_image_processor({"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}})
    cfg = SimpleNamespace(image_aspect_ratio="pad")
    process_images([Image.new("RGB", (30, 20))], proc, cfg)  # warm up
    for arg in sys.argv[1:]:
        width, height = map(int, arg.split("x"))
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        out = process_images([image], proc, cfg)
        seconds = time.perf_counter() - start
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        print(arg, "x".join(map(str, out.shape)), grown // 1024, round(seconds, 2))
""")


def test_extreme_aspect_ratio_stays_small_and_fast():
    """The issue's 30000 x 60 image (101 s and 12.4 GB before), and its transpose: the peak RSS grows by a few MB,
    in well under 10 s. Run in a fresh process so that the peak is the call's own (Pillow's memory is invisible to
    tracemalloc)."""
    env = dict(os.environ, PYTHONPATH=REPO)
    result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, "30000x60", "60x30000"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.strip().splitlines():
        size, shape, grown_mb, seconds = line.split()
        assert shape == "1x3x336x336", line
        assert int(grown_mb) < 64 and float(seconds) < 10, line


def test_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    path = _png(tmp_path, pil_image(60, 60), "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 3600 px > 2 x 1000: Pillow refuses it
    with pytest.raises(ValueError, match=r"huge\.png.*3600 pixels.*MAX_IMAGE_PIXELS"):
        load_image(path)
