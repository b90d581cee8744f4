"""Input checks of the image path: what `images` / `image_sizes` a model call may get, refused with the fix.

- `as_crop_list`:      the accepted forms of `images` -> one (crops, 3, S, S) tensor per image;
- `check_finite`:      NaN / infinite pixels;
- `check_image_sizes`: LLaVA-1.6 (anyres) sizes: one (width, height) per image, not swapped.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
from PIL import Image

from llava.model.merge import GridLayout


def as_crop_list(images) -> list[torch.Tensor]:
    """images: a (B, 3, S, S) tensor (one crop per image), a (B, crops, 3, S, S) tensor, or a list of
    (crops_i, 3, S, S) / (3, S, S) tensors -> one (crops_i, 3, S, S) tensor per image."""
    if isinstance(images, Image.Image) or (
        isinstance(images, (list, tuple)) and any(isinstance(image, Image.Image) for image in images)
    ):
        raise TypeError("images are PIL images: turn them into pixel tensors with process_images(images, "
                        "image_processor, model.config) first")
    if isinstance(images, (list, tuple)):
        for i, image in enumerate(images):
            if not isinstance(image, torch.Tensor):
                raise TypeError(f"images[{i}] is a {type(image).__name__}; expected a pixel tensor (crops, 3, S, S) "
                                f"or (3, S, S) from process_images")
    if isinstance(images, torch.Tensor):
        if images.ndim == 4:
            return list(images.unsqueeze(1).unbind(0))
        if images.ndim == 5:
            return list(images.unbind(0))
        raise ValueError(f"images tensor must be (B, 3, S, S) or (B, crops, 3, S, S), got shape {tuple(images.shape)}")
    crops = [img.unsqueeze(0) if img.ndim == 3 else img for img in images]
    if not crops:
        raise ValueError("no images given")
    return crops


def check_finite(per_image: list[torch.Tensor]) -> None:
    """NaN or infinite pixels would silently turn every logit into NaN: refused, per image."""
    bad = torch.stack([(~torch.isfinite(crops)).sum() for crops in per_image]).tolist()
    for i, n in enumerate(bad):
        if n:
            raise ValueError(f"image {i}: {n} pixel value(s) are NaN or infinite; check the image and how its pixel "
                             f"tensor was made (process_images)")


def check_image_sizes(per_image: list[torch.Tensor], image_sizes,
                      grid_layout: Callable[[tuple[int, int]], GridLayout]) -> None:
    """LLaVA-1.6 (anyres) only: one (width, height) per image, and not (height, width). A swap is seen from the
    crops themselves: the grid crops hold the image fitted into the canvas with uniform padding bands (black, from
    `resize_and_pad_image`); when the bands that the given size predicts are not uniform but those of the swapped
    size are, the size was given the wrong way round. Transposed pinpoints give the same crop count, so the count
    alone cannot tell. `grid_layout`: the crop grid an image of (width, height) gets (the pipeline's grid rule)."""
    if image_sizes is None:
        return
    sizes = image_sizes.tolist() if isinstance(image_sizes, torch.Tensor) else list(image_sizes)
    if len(sizes) != len(per_image):
        raise ValueError(f"image_sizes has {len(sizes)} entries for {len(per_image)} image(s); give one "
                         f"(width, height) per image")
    for i, (size, crops) in enumerate(zip(sizes, per_image)):
        if not (isinstance(size, (tuple, list)) and len(size) == 2
                and all(isinstance(v, numbers.Integral) and v > 0 for v in size)):
            raise ValueError(f"image_sizes[{i}] must be (width, height) in pixels, as PIL's image.size; got {size!r}")
        if crops.shape[0] > 1:
            _check_grid(i, (int(size[0]), int(size[1])), crops[1:], grid_layout)


def _check_grid(i: int, size: tuple[int, int], grid: torch.Tensor,
                grid_layout: Callable[[tuple[int, int]], GridLayout]) -> None:
    """Image i's grid crops (n, 3, S, S) against its size (w, h): not a swapped size, and (for a grid of the
    expected count) the padding bands where this grid rule puts them, else the crops came from another rule (e.g.
    process_images without the model's anyres_mode: paper and upstream can pick 2x1 and 1x2 for the same image)."""
    width, height = size
    given = grid_layout(size)
    if width != height:
        swapped = grid_layout((height, width))
        fits = [layout.cols * layout.rows == grid.shape[0] for layout in (given, swapped)]
        if fits == [False, True] or (all(fits) and _padding_uniform(grid, given, size) is False
                                     and _padding_uniform(grid, swapped, (height, width)) is True):
            raise ValueError(f"image_sizes[{i}] = ({width}, {height}) looks like (height, width): the image's crops "
                             f"fit ({height}, {width}); image_sizes takes (width, height), as PIL's image.size")
    if given.cols * given.rows == grid.shape[0] and _padding_uniform(grid, given, size) is False:
        raise ValueError(f"image {i}: its crops do not hold the image where this model's anyres grid rule puts it "
                         f"({given.cols}x{given.rows} crops): make them with the model's own mode, "
                         f"process_images(images, image_processor, model.config, "
                         f"anyres_mode=model.pruning.anyres_mode)")


def _padding_uniform(grid: torch.Tensor, layout: GridLayout, size: tuple[int, int]) -> bool | None:
    """Whether the padding bands that an image of `size` (w, h) fitted into the `layout` canvas would have are
    uniform in the stitched grid crops (cols * rows, 3, S, S); None when the fit leaves no band to look at. The
    bands are taken one pixel narrower than the padding, so a rounding difference in the fit does not matter."""
    side = grid.shape[-1]
    rows, cols = layout.rows, layout.cols
    canvas = grid.reshape(rows, cols, grid.shape[1], side, side).permute(2, 0, 3, 1, 4)
    canvas = canvas.reshape(grid.shape[1], rows * side, cols * side)  # (3, H, W)
    width, height = size
    if canvas.shape[2] / width < canvas.shape[1] / height:  # width-bound: padding rows above and below
        axis, extra = 1, canvas.shape[1] - height * canvas.shape[2] / width
    else:  # padding columns left and right
        axis, extra = 2, canvas.shape[2] - width * canvas.shape[1] / height
    band = math.floor(extra / 2) - 1
    if band < 1:
        return None
    strips = [canvas.narrow(axis, 0, band), canvas.narrow(axis, canvas.shape[axis] - band, band)]
    first = strips[0].reshape(canvas.shape[0], -1)[:, :1]
    return all(bool((strip.reshape(canvas.shape[0], -1) == first).all()) for strip in strips)
