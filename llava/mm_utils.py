"""Image and prompt preprocessing shared by the model and the eval scripts: the image processor
(`load_image_processor`), pixel tensors for a batch of images (`process_images`), prompt ids with image
placeholders (`tokenizer_image_token`), stopping on keywords. Reading images is `llava.image_io`; the geometry of
padding and anyres tiling is `llava.image_geometry`.

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

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from transformers import AutoImageProcessor, CLIPImageProcessorPil, StoppingCriteria
from transformers.image_processing_utils import BaseImageProcessor

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.image_geometry import (
    RESAMPLE,
    divide_to_patches,
    expand2square,
    expand2square_resized,
    resize_and_pad_image,
    select_best_resolution,
)
from llava.image_io import load_image, load_images, pad_color, to_rgb  # noqa: F401  (README: llava.mm_utils names)

DEFAULT_ANYRES_MODE = "paper"  # the grid rule of the original FasterVLM, and of `PruningConfig`'s default


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


def process_anyres_image(image: Image.Image, processor, grid_pinpoints, rule: str = "paper") -> torch.Tensor:
    """Base crop + grid crops of one image → ``[1 + cols * rows, 3, S, S]``.

    Index 0 is the whole image squashed to S×S (no padding, as upstream); then the crops of the
    image resized and padded to the chosen canvas, in raster order.
    """
    canvas = select_best_resolution(image.size, grid_pinpoints, rule)
    crops = divide_to_patches(resize_and_pad_image(image, canvas), _crop_size(processor))
    side = _base_size(processor)
    base = image.resize((side, side), RESAMPLE)
    return torch.stack([_pixels(processor, crop) for crop in [base, *crops]], dim=0)


def process_images(images: Sequence[Image.Image], image_processor, model_cfg, anyres_mode: str | None = None):
    """Pixel tensors for a batch of images, following ``model_cfg.image_aspect_ratio``.

    Images are first made RGB by :func:`to_rgb`, transparency composited on the processor's mean colour.

    - "pad": pad to square with the processor's mean colour, then process → ``[B, 3, S, S]`` (resized before
      padding, see :func:`expand2square_resized`).
    - "anyres": :func:`process_anyres_image` per image with ``model_cfg.image_grid_pinpoints``
      and the grid rule ``anyres_mode`` → ``[B, 1 + crops, 3, S, S]``. It must be the model's own:
      ``anyres_mode=model.pruning.anyres_mode``; None means "paper" (the default mode of a loaded model). The
      model refuses crops made with the other rule when it can tell (a different crop count or grid).
    - anything else: the processor on the raw images (resize + centre crop) → ``[B, 3, S, S]``.

    Returns a stacked tensor when all images give the same shape, else a list of tensors
    (anyres images with different grids).
    """
    _check_image_list(images)
    images = [to_rgb(image, pad_color(image_processor)) for image in images]
    aspect = model_cfg.image_aspect_ratio
    if aspect == "pad":
        tensors = [_pixels(image_processor, _pad_to_square(image, image_processor)) for image in images]
    elif aspect == "anyres":
        pinpoints, rule = model_cfg.image_grid_pinpoints, anyres_mode or DEFAULT_ANYRES_MODE
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
