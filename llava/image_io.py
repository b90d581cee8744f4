"""Reading images: local files to 8-bit RGB PIL images (`load_image`, `load_images`), the one RGB conversion
(`to_rgb`: high bit depths rescaled, transparency composited on LLaVA's pad colour) and that colour (`pad_color`,
`CLIP_PAD_COLOR`). Offline: URLs are refused."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError



def load_image(path: str | os.PathLike, background: tuple[int, int, int] | None = None) -> Image.Image:
    """Open a local image file as an RGB PIL image, converted by :func:`to_rgb`.

    Args:
        background: the colour transparent pixels are composited on; default: LLaVA's pad colour for the
            CLIP processor of every LLaVA checkpoint, :data:`CLIP_PAD_COLOR`. Pass ``pad_color(processor)``
            for another processor, or convert later (:func:`process_images` does it with its processor's
            colour for images that still have alpha).

    Raises:
        ValueError: for an http(s) URL (no downloads: everything runs offline), a file that is not a
            readable image, or one over Pillow's decompression-bomb limit; the message names the path.
        FileNotFoundError: when the file does not exist.
    """
    path = os.fspath(path)
    if path.startswith(("http://", "https://")):
        raise ValueError(f"Cannot load {path}: downloading images is not supported (offline); "
                         "download it first and pass the local path")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            rgb = to_rgb(image, CLIP_PAD_COLOR if background is None else background)
            return image.copy() if rgb is image else rgb  # the with-block closes `image`
    except Image.DecompressionBombError as err:
        raise ValueError(f"Cannot read image {path}: {err} Pillow refuses images over 2 x "
                         f"PIL.Image.MAX_IMAGE_PIXELS = {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels; raise "
                         "PIL.Image.MAX_IMAGE_PIXELS if you trust the file") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"Cannot read image {path}: {err}") from err


def load_images(image_files: Sequence[str | os.PathLike],
                background: tuple[int, int, int] | None = None) -> list[Image.Image]:
    """:func:`load_image` on each path, in order."""
    return [load_image(path, background) for path in image_files]


# LLaVA pads with the processor's mean colour as 8 bit; this is CLIP's (every LLaVA-1.5/1.6 checkpoint's).
CLIP_PAD_COLOR = (122, 116, 104)
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def pad_color(image_processor) -> tuple[int, ...]:
    """LLaVA's pad colour: the processor's mean as 8-bit levels, ``int(x * 255)`` (upstream LLaVA's expression)."""
    return tuple(int(x * 255) for x in image_processor.image_mean)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = CLIP_PAD_COLOR) -> Image.Image:
    """The one conversion of any PIL image to 8-bit RGB; an RGB image without transparency is returned as is.

    ``Image.convert("RGB")`` gets two kinds of image wrong, and they are handled here:

    - high bit depths ("I;16*", "I", "F") are clipped at 255, so a 16-bit grayscale PNG turns white: they are
      rescaled to 8 bit by :func:`_to_8bit`;
    - alpha ("RGBA", "LA", "PA", palette or grayscale/RGB with a ``transparency`` key) is dropped, so whatever
      colour sits under transparent pixels (often black) shows: the image is composited on ``background``
      (``a/255 * colour + (1 - a/255) * background``), LLaVA's pad colour by default, so transparent areas look
      like the padding the model saw in training.
    """
    if image.mode in _HIGH_DEPTH_MODES:
        image = _to_8bit(image)
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        canvas = Image.new("RGBA", image.size, (*background[:3], 255))
        return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _to_8bit(image: Image.Image) -> Image.Image:
    """A high-bit-depth grayscale image as "L" (or "LA" when it has a transparent level).

    "I;16*" and "I" images with levels in [0, 65535] are 16-bit data (Pillow opens 16-bit PNGs as one of them):
    ``round(v / 257)``, so 65535 -> 255. "F" images in [0, 1]: ``round(v * 255)``. Anything else is stretched
    linearly from its own min..max to 0..255 (its range has no standard meaning).
    """
    levels = np.asarray(image).astype(np.float64)
    low, high = (float(levels.min()), float(levels.max())) if levels.size else (0.0, 0.0)
    if image.mode == "F" and 0 <= low and high <= 1:
        scaled = levels * 255
    elif image.mode != "F" and 0 <= low and high <= 65535:
        scaled = levels / 257
    else:
        scaled = (levels - low) * (255 / (high - low)) if high > low else np.zeros_like(levels)
    gray = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))  # 2-D uint8: mode "L"
    key = image.info.get("transparency")
    if isinstance(key, (int, float)):  # a tRNS level: that level is transparent
        gray.putalpha(Image.fromarray(np.where(levels == key, 0, 255).astype(np.uint8)))
    return gray
