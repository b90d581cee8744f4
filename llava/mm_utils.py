"""Image and prompt preprocessing shared by the model and the eval scripts.

Conventions used throughout this module:

- Image sizes are **(width, height)**, as PIL's ``Image.size``; ``image_sizes`` passed to the
  model is a list of these.
- ``image_grid_pinpoints`` entries are **[width, height]** canvases in pixels (upstream LLaVA
  unpacks them as ``for width, height in ...``), e.g. ``[336, 672]`` is one crop wide and two
  crops tall.
- anyres crops are listed in **raster order** (row by row, left to right), after the resized
  whole image (the "base" crop).
- Pixel tensors are ``[3, S, S]`` per crop, ``S`` the processor's crop size (336 for CLIP-L/336).

Pixels must equal those of the PIL-based CLIP image processor (see :func:`load_image_processor`).
"""

from __future__ import annotations

import ast
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import StoppingCriteria

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX

ANYRES_RULES = ("paper", "upstream")
# Upstream LLaVA calls ``Image.resize`` without a filter; Pillow's default for RGB images is bicubic.
_RESAMPLE = Image.Resampling.BICUBIC


# --------------------------------------------------------------------------- image loading


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


# --------------------------------------------------------------------------- image processor


# What a CLIP processor's pixels depend on; copied when converting another backend's processor.
_PROCESSOR_SETTINGS = ("do_resize", "size", "resample", "do_center_crop", "crop_size", "do_rescale",
                       "rescale_factor", "do_normalize", "image_mean", "image_std", "do_convert_rgb")


def load_image_processor(path_or_config: Any):
    """The CLIP image processor on the PIL (slow) backend, whose pixels LLaVA was trained on.

    transformers 5.x resolves ``CLIPImageProcessor`` / ``AutoImageProcessor`` to a torchvision
    backend whenever torchvision is installed; its resize differs from PIL's by up to 0.015 after
    normalisation, enough to change which tokens FasterVLM keeps. We therefore always build
    ``CLIPImageProcessorPil`` (``backend="pil"``).

    Args:
        path_or_config: one of
            - a local directory or hub name with a ``preprocessor_config.json``;
            - a dict of processor settings (``size``, ``crop_size``, ``image_mean``, ...);
            - an existing image processor (any backend; its settings are copied);
            - a vision config with ``image_size`` (e.g. ``CLIPVisionConfig``): shortest edge and
              crop both ``image_size``, CLIP mean/std, bicubic.
    """
    from transformers import AutoImageProcessor, CLIPImageProcessorPil
    from transformers.image_processing_utils import BaseImageProcessor

    if isinstance(path_or_config, (str, os.PathLike)):
        return AutoImageProcessor.from_pretrained(os.fspath(path_or_config), backend="pil")
    if isinstance(path_or_config, BaseImageProcessor):
        if getattr(path_or_config, "backend", None) == "pil":
            return path_or_config
        settings = path_or_config.to_dict()
        return CLIPImageProcessorPil(**{k: settings[k] for k in _PROCESSOR_SETTINGS if k in settings})
    if isinstance(path_or_config, Mapping):
        return CLIPImageProcessorPil(**path_or_config)
    image_size = getattr(path_or_config, "image_size", None)
    if isinstance(image_size, int):
        return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                     crop_size={"height": image_size, "width": image_size})
    raise TypeError(f"Cannot build an image processor from {type(path_or_config).__name__}")


def _crop_size(processor) -> int:
    """Side of the square crop the processor outputs (336 for CLIP-L/336)."""
    return processor.crop_size["height"]


def _base_size(processor) -> int:
    """Side the whole image is resized to for the anyres base crop (upstream: shortest_edge)."""
    shortest = processor.size.get("shortest_edge")
    return shortest if shortest else _crop_size(processor)


def _pixels(processor, image: Image.Image) -> torch.Tensor:
    """One PIL image through the processor → ``[3, S, S]`` float tensor."""
    return processor.preprocess(image, return_tensors="pt")["pixel_values"][0]


# --------------------------------------------------------------------------- geometry


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
                          resample: Image.Resampling = _RESAMPLE) -> Image.Image:
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


def _pad_side(processor) -> int | None:
    """The side the processor resizes a square to, or None when it does not resize squares to a square."""
    if not getattr(processor, "do_resize", True):
        return None
    size = processor.size
    if size.get("shortest_edge") and not size.get("longest_edge"):
        return size["shortest_edge"]
    if size.get("height") and size.get("height") == size.get("width"):
        return size["height"]
    return None


def _pad_to_square(image: Image.Image, processor) -> Image.Image:
    """LLaVA's pad step: the image centred on a square of the processor's mean colour, at the processor's size."""
    fill = pad_color(processor)
    side = _pad_side(processor)
    if side is None:  # an unusual processor: pad at full size and let it do what it does
        return expand2square(image, fill)
    return expand2square_resized(image, fill, side, Image.Resampling(int(processor.resample)))


def _check_image_list(images) -> None:
    """`process_images` takes a list of PIL images; the usual mistakes are said plainly."""
    if isinstance(images, Image.Image):
        raise TypeError("process_images takes a list of PIL images, got a single PIL image: pass [image]")
    if isinstance(images, (str, os.PathLike, torch.Tensor)) or not isinstance(images, Sequence):
        raise TypeError(f"process_images takes a list of PIL images, got {type(images).__name__}")
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            hint = ": open it with load_image(path) first" if isinstance(image, (str, os.PathLike)) else ""
            raise TypeError(f"process_images: images[{i}] is a {type(image).__name__}, not a PIL image{hint}")


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
    resized = image.resize((new_w, new_h), _RESAMPLE)
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


def process_anyres_image(image: Image.Image, processor, grid_pinpoints, rule: str = "paper") -> torch.Tensor:
    """Base crop + grid crops of one image → ``[1 + cols * rows, 3, S, S]``.

    Index 0 is the whole image squashed to S×S (no padding, as upstream); then the crops of the
    image resized and padded to the chosen canvas, in raster order.
    """
    canvas = select_best_resolution(image.size, grid_pinpoints, rule)
    crops = divide_to_patches(resize_and_pad_image(image, canvas), _crop_size(processor))
    side = _base_size(processor)
    base = image.resize((side, side), _RESAMPLE)
    return torch.stack([_pixels(processor, crop) for crop in [base, *crops]], dim=0)


def _anyres_rule(model_cfg) -> str:
    """The grid rule the model config asks for (``anyres_mode``; default: paper-compatible)."""
    return getattr(model_cfg, "anyres_mode", None) or "paper"


def process_images(images: Sequence[Image.Image], image_processor, model_cfg):
    """Pixel tensors for a batch of images, following ``model_cfg.image_aspect_ratio``.

    Images are first made RGB by :func:`to_rgb`, transparency composited on the processor's mean colour.

    - "pad": pad to square with the processor's mean colour, then process → ``[B, 3, S, S]`` (resized before
      padding, see :func:`expand2square_resized`).
    - "anyres": :func:`process_anyres_image` per image with ``model_cfg.image_grid_pinpoints``
      and the grid rule ``model_cfg.anyres_mode`` ("paper" default, or "upstream")
      → ``[B, 1 + crops, 3, S, S]``.
    - anything else: the processor on the raw images (resize + centre crop) → ``[B, 3, S, S]``.

    Returns a stacked tensor when all images give the same shape, else a list of tensors
    (anyres images with different grids).
    """
    _check_image_list(images)
    images = [to_rgb(image, pad_color(image_processor)) for image in images]
    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    if aspect == "pad":
        tensors = [_pixels(image_processor, _pad_to_square(image, image_processor)) for image in images]
    elif aspect == "anyres":
        pinpoints, rule = model_cfg.image_grid_pinpoints, _anyres_rule(model_cfg)
        tensors = [process_anyres_image(image, image_processor, pinpoints, rule) for image in images]
    else:
        return image_processor(list(images), return_tensors="pt")["pixel_values"]
    if all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(tensors, dim=0)
    return tensors


# --------------------------------------------------------------------------- text


def tokenizer_image_token(prompt: str, tokenizer, image_token_index: int = IMAGE_TOKEN_INDEX,
                          return_tensors: str | None = None):
    """Token ids of ``prompt`` with ``image_token_index`` where each ``<image>`` stood.

    Each text chunk between ``<image>`` tokens is tokenized on its own (``tokenizer(chunk)``,
    special tokens on). If the first chunk starts with BOS, that BOS is kept and the leading
    token of every chunk is dropped — so the result has one BOS, at the start (upstream LLaVA).

    Returns a list of ints, or a 1-D LongTensor with ``return_tensors="pt"``.
    """
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(DEFAULT_IMAGE_TOKEN)]
    bos = tokenizer.bos_token_id
    strip = int(bos is not None and len(chunks[0]) > 0 and chunks[0][0] == bos)
    input_ids = chunks[0][:strip]
    for i, chunk in enumerate(chunks):
        if i > 0:
            input_ids.append(image_token_index)
        input_ids.extend(chunk[strip:])
    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"Unsupported tensor type: {return_tensors}")


def get_model_name_from_path(model_path: str) -> str:
    """Last path component; a ``checkpoint-N`` folder is prefixed with its parent: ``run_checkpoint-N``."""
    parts = str(model_path).strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop each sequence once its generated text ends with (or newly contains) a keyword.

    Returns a ``BoolTensor[batch]`` (per-sample), as current transformers expects.

    Generated tokens are located without assuming the prompt is part of ``output_ids``:
    ``generate`` called with ``inputs_embeds`` (as LLaVA does) passes only the new tokens. If
    ``output_ids`` starts with ``input_ids``, that prefix is skipped; otherwise every token
    counts as generated. Only the last ``max keyword length`` generated tokens are decoded.
    """

    def __init__(self, keywords: Sequence[str], tokenizer, input_ids: torch.Tensor | None = None):
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.keyword_ids = [self._keyword_ids(tokenizer, kw) for kw in self.keywords]
        self.max_keyword_len = max((len(ids) for ids in self.keyword_ids), default=0)
        self.prompt_ids = input_ids

    @staticmethod
    def _keyword_ids(tokenizer, keyword: str) -> list[int]:
        ids = tokenizer(keyword).input_ids
        if len(ids) > 1 and ids[0] == tokenizer.bos_token_id:
            ids = ids[1:]
        return ids

    def _num_new_tokens(self, output_ids: torch.Tensor) -> int:
        prompt = self.prompt_ids
        if prompt is None or prompt.dim() != 2 or prompt.shape[0] != output_ids.shape[0]:
            return output_ids.shape[1]
        n = prompt.shape[1]
        if output_ids.shape[1] >= n and torch.equal(output_ids[:, :n], prompt.to(output_ids.device)):
            return output_ids.shape[1] - n
        return output_ids.shape[1]

    def _row_stops(self, row: torch.Tensor, window: int) -> bool:
        """row: [T] ids of one sample; window: how many trailing tokens are generated and inspected."""
        if window <= 0:
            return False
        tail = row[-window:].tolist()
        for ids in self.keyword_ids:
            if ids and len(ids) <= len(tail) and tail[-len(ids):] == ids:
                return True
        text = self.tokenizer.decode(tail, skip_special_tokens=True)
        return any(kw in text for kw in self.keywords)

    def __call__(self, output_ids: torch.LongTensor, scores: torch.FloatTensor = None, **kwargs) -> torch.BoolTensor:
        window = min(self._num_new_tokens(output_ids), self.max_keyword_len)
        done = [self._row_stops(row, window) for row in output_ids]
        return torch.tensor(done, dtype=torch.bool, device=output_ids.device)
