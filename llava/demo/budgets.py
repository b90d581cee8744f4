"""One image at several visual-token budgets: the answers, what reached the LLM, and which patches each budget keeps
(from the model's own selection stage), as the rows the demo prints and draws."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from llava.constants import IMAGE_TOKEN_INDEX
from llava.demo.images import DEFAULT_QUERY, DemoImage
from llava.demo.report import printable
from llava.inference import answer, build_prompt
from llava.mm_utils import process_images, tokenizer_image_token

DEFAULT_KEEP = (1.0, 0.25, 0.10, 0.05)  # default budgets: these shares of a crop's tokens (576 -> 576,144,58,29)


@dataclass
class BudgetRow:
    budget: int
    reduction: float  # percent of the crop's visual tokens pruned
    kept: int  # v_token_num as `generate` returns it
    prompt_len: int  # tokens fed to the LLM: text tokens + kept visual tokens
    seconds: float
    answer: str
    mask: torch.Tensor = field(repr=False)  # (P,) bool, crop 0, as drawn


@dataclass
class DemoResult:
    rows: list[BudgetRow]
    cls_attn: torch.Tensor  # (P,) [CLS] attention of crop 0
    image: np.ndarray  # (S, S, 3) uint8: what the tower saw
    output: Path
    model_path: Path
    random_weights: bool
    image_note: str = ""  # how the input became `image`, shown under it
    method: str = "fastervlm"
    query: str = DEFAULT_QUERY
    expected: str | None = None  # the ground-truth answer, when known (easy-vqa)
    more: list["DemoResult"] = field(default_factory=list)  # the other images of the run


def parse_budgets(text: str) -> list[int]:
    try:
        budgets = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--budgets must be comma-separated integers, got {text!r}") from None
    if not budgets:
        raise ValueError("--budgets is empty")
    return budgets


def requested_budgets(budgets: str | None, visual_token_num: int | None) -> list[int] | None:
    """--budgets, else --visual-token-num as the one budget, else None (the defaults, once the model is known)."""
    if budgets is not None and visual_token_num is not None:
        raise ValueError(f"--budgets {budgets} and --visual-token-num {visual_token_num}: pass one of them")
    if budgets is not None:
        return parse_budgets(budgets)
    return None if visual_token_num is None else [visual_token_num]


def default_budgets(tokens_per_crop: int) -> list[int]:
    """All, 25%, 10% and 5% of a crop's tokens, rounded (576 -> 576, 144, 58, 29; 64 -> 64, 16, 6, 3)."""
    return [max(1, round(tokens_per_crop * share)) for share in DEFAULT_KEEP]


def reduction_pct(budget: int, tokens_per_crop: int) -> float:
    return 100.0 * (1 - budget / tokens_per_crop)


def first_crop(pixels) -> torch.Tensor:
    """Crop 0 of image 0 of `process_images`' output, (3, S, S): the padded image (LLaVA-1.5) or the base crop."""
    first = pixels[0]  # image 0: (3, S, S), or (crops, 3, S, S) for anyres
    return first[0] if first.ndim == 4 else first


def crop_as_image(crop: torch.Tensor, image_processor) -> np.ndarray:
    """Undo the processor's normalisation: the (S, S, 3) uint8 array the vision tower was shown."""
    mean = torch.tensor(image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(3, 1, 1)
    rgb = (crop.detach().float().cpu() * std + mean).clamp(0, 1)
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def kept_mask(model, tower_out) -> torch.Tensor:
    """Boolean (P,) mask of the patches of crop 0 that the model keeps at its current budget, from the model's own
    selection stage (`model.visual.select`, the same call `generate` makes, with the tower outputs a method declares
    it needs: VisionZip's keys and [CLS] token). VisionZip's mask holds its dominant patches only."""
    signals = {name: getattr(tower_out, name)[:1] for name in ("keys", "cls_token")
               if getattr(tower_out, name) is not None}
    keep = model.visual.select(tower_out.features[:1], tower_out.cls_attn[:1], **signals).keep[0]  # (k,)
    mask = torch.zeros(tower_out.cls_attn.shape[-1], dtype=torch.bool)
    mask[keep.cpu()] = True
    return mask


def image_note(label: str, size: tuple[int, int], config) -> str:
    """How the input became what the tower saw, for the caption under it."""
    aspect = config.image_aspect_ratio
    if aspect == "pad":
        how = "resized" if size[0] == size[1] else "padded to square, resized"
    else:
        how = "base crop: resized to square" if aspect == "anyres" else "resized, centre-cropped"
    return f"{printable(Path(label).name if os.sep in label else label, 28)} ({size[0]}×{size[1]}), {how}"


def run_image(model, tokenizer, image_processor, item: DemoImage, configs, conv_mode: str, gen: dict,
              model_path: Path, random_weights: bool, method: str) -> DemoResult:
    """Every budget (`configs`, one PruningConfig each) on one image: answers, kept masks, the [CLS] attention of
    crop 0."""
    prompt = build_prompt(item.query, 1, conv_mode)
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")
    text_tokens = int((ids != IMAGE_TOKEN_INDEX).sum())
    pixels = process_images([item.image], image_processor, model.config, anyres_mode=model.pruning.anyres_mode)
    crops = pixels[0] if isinstance(pixels, list) else pixels.flatten(0, pixels.ndim - 4)
    with torch.no_grad():
        tower_out = model.visual.encode(crops.to(model.device))
    per_crop = model.pruning.tokens_per_crop
    rows = []
    for cfg in tqdm(configs, desc="budgets", unit="budget", file=sys.stderr, dynamic_ncols=True):
        model.set_pruning(cfg)
        t0 = time.perf_counter()
        text, v_token_num, _ = answer(model, tokenizer, image_processor, prompt, [item.image], **gen)
        rows.append(BudgetRow(
            budget=cfg.visual_token_num, reduction=reduction_pct(cfg.visual_token_num, per_crop),
            kept=int(v_token_num), prompt_len=text_tokens + int(v_token_num), seconds=time.perf_counter() - t0,
            answer=text, mask=kept_mask(model, tower_out),
        ))
    return DemoResult(rows=rows, cls_attn=tower_out.cls_attn[0].float().cpu(),
                      image=crop_as_image(first_crop(pixels), image_processor), output=item.output,
                      model_path=model_path, random_weights=random_weights,
                      image_note=image_note(item.label, item.image.size, model.config), method=method,
                      query=item.query, expected=item.expected)
