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

import torch
from PIL import Image, UnidentifiedImageError
from transformers import StoppingCriteria

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX

ANYRES_RULES = ("paper", "upstream")
# Upstream LLaVA calls ``Image.resize`` without a filter; Pillow's default for RGB images is bicubic.
_RESAMPLE = Image.Resampling.BICUBIC


# --------------------------------------------------------------------------- image loading


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open a local image file as an RGB PIL image.

    Raises:
        ValueError: for an http(s) URL (no downloads: everything runs offline) or a file that
            is not a readable image; the message names the path.
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
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"Cannot read image {path}: {err}") from err


def load_images(image_files: Sequence[str | os.PathLike]) -> list[Image.Image]:
    """:func:`load_image` on each path, in order."""
    return [load_image(path) for path in image_files]


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

    - "pad": pad to square with the processor's mean colour, then process → ``[B, 3, S, S]``.
    - "anyres": :func:`process_anyres_image` per image with ``model_cfg.image_grid_pinpoints``
      and the grid rule ``model_cfg.anyres_mode`` ("paper" default, or "upstream")
      → ``[B, 1 + crops, 3, S, S]``.
    - anything else: the processor on the raw images (resize + centre crop) → ``[B, 3, S, S]``.

    Returns a stacked tensor when all images give the same shape, else a list of tensors
    (anyres images with different grids).
    """
    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    if aspect == "pad":
        fill = tuple(int(x * 255) for x in image_processor.image_mean)
        tensors = [_pixels(image_processor, expand2square(image, fill)) for image in images]
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
