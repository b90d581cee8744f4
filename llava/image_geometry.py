"""Image geometry of LLaVA's preprocessing, on PIL images (no processor, no tensors):

- padding to a square (`expand2square`, and `expand2square_resized`, which never builds the full-size square);
- LLaVA-1.6's any-resolution tiling: the canvas an image gets among the `image_grid_pinpoints`
  (`select_best_resolution`, with the paper's or upstream LLaVA's rule, `ANYRES_RULES`), the image fitted into it
  (`resize_and_pad_image`), cut into crops (`divide_to_patches`), and the crop grid (`get_anyres_image_grid_shape`).

Sizes are (width, height), as PIL's `Image.size`; pinpoints are [width, height] canvases in pixels; crops are in
raster order. `llava.mm_utils.process_images` turns the results into pixel tensors.
"""

from __future__ import annotations

import ast
import math

from PIL import Image

ANYRES_RULES = ("paper", "upstream")
# Upstream LLaVA calls ``Image.resize`` without a filter; Pillow's default for RGB images is bicubic.
RESAMPLE = Image.Resampling.BICUBIC


def expand2square(pil_img: Image.Image, background_color) -> Image.Image:
    """Pad to a square of side ``max(w, h)`` filled with ``background_color``.

    The image is centred along the padded axis: pasted at ``((s - w) // 2, 0)`` for a tall
    image and ``(0, (s - h) // 2)`` for a wide one. A square image is returned unchanged.
    """
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


# Bands up to this many pixels are resampled in Pillow's own pass order (bit-exact), see `expand2square_resized`.
_EXACT_BAND_PIXELS = 1 << 24


def expand2square_resized(pil_img: Image.Image, background_color, side: int,
                          resample: Image.Resampling = RESAMPLE) -> Image.Image:
    """``expand2square(pil_img, background_color).resize((side, side), resample)``, without the full-size square.

    The square canvas of a 30000 x 60 image is 2.7 GB; here the image is resampled along its long axis to
    ``side`` and only the rows (columns) of the output that a resampling filter centred there can reach from the
    image are computed, from a band of background around it; the rest is background. Pillow resizes in two
    passes, horizontal first, rounding to 8 bit in between. A wide image (padded rows) is done in that order, so
    its pixels equal the full canvas' exactly (up to float rounding of the filter positions). A tall image is
    padded horizontally first, over its full height, while that band is at most ``_EXACT_BAND_PIXELS``; an
    extreme one is resized vertically first, which can move pixels by one level.
    """
    width, height = pil_img.size
    if width == height:
        return pil_img.resize((side, side), resample)
    long_side = max(width, height)
    if width > height:  # pad rows: horizontal (long) pass first, as Pillow
        return _pad_axis(_resize_axis(pil_img, 0, side, resample), 1, long_side, side, background_color, resample)
    band = (width + 8 * max(long_side / side, 1.0)) * height
    if band <= _EXACT_BAND_PIXELS:  # pad columns first, as Pillow
        return _resize_axis(_pad_axis(pil_img, 0, long_side, side, background_color, resample), 1, side, resample)
    return _pad_axis(_resize_axis(pil_img, 1, side, resample), 0, long_side, side, background_color, resample)


def _resize_axis(image: Image.Image, axis: int, length: int, resample, box: tuple[float, float] | None = None):
    """Resample along one axis only (0: x, 1: y) to ``length``; ``box`` = (start, end) on that axis in source px."""
    width, height = image.size
    start, end = box if box is not None else (0, image.size[axis])
    if axis == 0:
        return image.resize((length, height), resample, box=(start, 0, end, height))
    return image.resize((width, length), resample, box=(0, start, width, end))


def _pad_axis(image: Image.Image, axis: int, long_side: int, side: int, fill, resample) -> Image.Image:
    """Centre ``image`` along ``axis`` in a ``long_side`` canvas of ``fill`` (as expand2square) and resample that
    axis to ``side``; the other axis is kept. Output positions whose filter window misses the image are ``fill``
    (a constant resamples to itself); the others come from a band of fill around the image, wide enough that no
    window is clipped by the band (Pillow's widest filter, Lanczos, reaches 3 source px per output px)."""
    short = image.size[axis]
    scale = long_side / side  # source px per output px
    offset = (long_side - short) // 2  # expand2square's paste position
    margin = 3 * max(scale, 1.0) + 2
    first = max(0, math.floor((offset - margin) / scale))
    last = min(side, math.ceil((offset + short + margin) / scale))
    low = max(0, math.floor(first * scale - margin))
    high = min(long_side, math.ceil(last * scale + margin))
    band = Image.new(image.mode, _along(image.size, axis, high - low), fill)
    band.paste(image, _along((0, 0), axis, offset - low))
    # positions as first * long_side / side: exact at the canvas end (Pillow rejects a box past the image)
    box = (first * long_side / side - low, last * long_side / side - low)
    out = Image.new(image.mode, _along(image.size, axis, side), fill)
    out.paste(_resize_axis(band, axis, last - first, resample, box), _along((0, 0), axis, first))
    return out


def _along(size: tuple[int, int], axis: int, value: int) -> tuple[int, int]:
    """``size`` with its ``axis`` entry replaced by ``value``."""
    return (value, size[1]) if axis == 0 else (size[0], value)


def _parse_pinpoints(grid_pinpoints) -> list[tuple[int, int]]:
    """Pinpoints as a list of (width, height); accepts a list or its string form."""
    if isinstance(grid_pinpoints, str):
        try:
            grid_pinpoints = ast.literal_eval(grid_pinpoints)
        except (ValueError, SyntaxError) as err:
            raise ValueError(f"Cannot parse image_grid_pinpoints {grid_pinpoints!r}: expected a "
                             "list of [width, height] pairs") from err
    pinpoints = [tuple(int(v) for v in pair) for pair in grid_pinpoints]
    if not pinpoints or any(len(pair) != 2 for pair in pinpoints):
        raise ValueError(f"image_grid_pinpoints must be a non-empty list of [width, height], got {grid_pinpoints!r}")
    return pinpoints


def _fitted_size(original_size: tuple[int, int], canvas: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the image scaled to fit inside ``canvas``, aspect kept, truncated."""
    (ow, oh), (w, h) = original_size, canvas
    scale = min(w / ow, h / oh)
    return int(ow * scale), int(oh * scale)


def _best_upstream(original_size, resolutions):
    """Upstream LLaVA-1.6: most effective pixels (capped at the original's), then least waste."""
    ow, oh = original_size
    best, best_key = None, None
    for w, h in resolutions:
        fw, fh = _fitted_size(original_size, (w, h))
        effective = min(fw * fh, ow * oh)
        key = (effective, -(w * h - effective))
        if best_key is None or key > best_key:
            best, best_key = (w, h), key
    return best


def _best_paper(original_size, resolutions):
    """Original FasterVLM fork: the canvas the fitted image fills best; first wins ties."""
    best, best_fill = None, -1.0
    for w, h in resolutions:
        fw, fh = _fitted_size(original_size, (w, h))
        fill = (fw * fh) / (w * h)
        if fill > best_fill:
            best, best_fill = (w, h), fill
    return best


def select_best_resolution(original_size: tuple[int, int], possible_resolutions,
                           rule: str = "paper") -> tuple[int, int]:
    """Pick the anyres canvas for an image.

    Args:
        original_size: (width, height) of the image.
        possible_resolutions: [width, height] candidates (list, or its string form).
        rule: "paper" — the original FasterVLM's rule, max fitted area / canvas area, first
            candidate wins ties (a square image always gets 672×672 among the LLaVA-1.6
            pinpoints); "upstream" — upstream LLaVA-1.6's rule, max effective resolution
            ``min(fitted area, original area)``, ties broken by least wasted canvas area
            (a square image of side ≤ 336 gets 336×672).

    Returns:
        (width, height) of the chosen canvas.
    """
    resolutions = _parse_pinpoints(possible_resolutions)
    if rule == "paper":
        return _best_paper(original_size, resolutions)
    if rule == "upstream":
        return _best_upstream(original_size, resolutions)
    raise ValueError(f"Unknown anyres rule {rule!r}; expected one of {ANYRES_RULES}")


def resize_and_pad_image(image: Image.Image, target_resolution: tuple[int, int]) -> Image.Image:
    """Fit ``image`` inside a (width, height) canvas, aspect kept, centred on black.

    The constrained side becomes exactly the target; the other is ``ceil(side * scale)``
    (capped at the target), as upstream LLaVA. Resampling is bicubic.
    """
    ow, oh = image.size
    tw, th = target_resolution
    scale_w, scale_h = tw / ow, th / oh
    if scale_w < scale_h:
        new_w, new_h = tw, min(math.ceil(oh * scale_w), th)
    else:
        new_w, new_h = min(math.ceil(ow * scale_h), tw), th
    resized = image.resize((new_w, new_h), RESAMPLE)
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    canvas.paste(resized, ((tw - new_w) // 2, (th - new_h) // 2))
    return canvas


def divide_to_patches(image: Image.Image, patch_size: int) -> list[Image.Image]:
    """Square crops of side ``patch_size`` in raster order: top row left to right, then the next row."""
    width, height = image.size
    return [image.crop((left, top, left + patch_size, top + patch_size))
            for top in range(0, height, patch_size)
            for left in range(0, width, patch_size)]


def get_anyres_image_grid_shape(image_size: tuple[int, int], grid_pinpoints, patch_size: int,
                                rule: str = "paper") -> tuple[int, int]:
    """(crops across, crops down) of the anyres grid for an image of (width, height) ``image_size``."""
    width, height = select_best_resolution(image_size, grid_pinpoints, rule)
    return width // patch_size, height // patch_size
