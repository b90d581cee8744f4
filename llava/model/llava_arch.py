"""The multimodal path of LLaVA with FasterVLM pruning, as small stages:

    encode  -> the vision tower gives patch features (N, P, C) and [CLS] attention (N, P) for all N crops
    select  -> the pruning method keeps k patch indices per crop (N, k), sorted (raster order)
    project -> only the kept features go through the projector (N, k, D)
    merge   -> per image, crops are laid out as one token sequence (base crop, then the grid; LLaVA-1.6 only)
    splice  -> the visual tokens replace the `<image>` placeholder (IMAGE_TOKEN_INDEX) in the text embeddings

`VisualTokens` carries the result of the first four stages from one to the next.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn as nn
from PIL import Image

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.multimodal_projector.builder import build_vision_projector
from llava.model.pruning import PruningConfig, Selection, as_selection, get_llm_pruner, get_selector


@dataclass
class VisualTokens:
    """Per image: the embeddings to splice (n_i, D), the [CLS] attention of its crops (crops_i, P)."""

    embeds: list[torch.Tensor]
    cls_attn: list[torch.Tensor]

    @property
    def counts(self) -> list[int]:
        return [e.shape[0] for e in self.embeds]


@dataclass
class MultimodalInputs:
    """What the LLM gets: left-padded embeddings (B, L, D), mask (B, L), labels (B, L) or None (visual positions and
    padding are IGNORE_INDEX), per sample the visual-token count and the [CLS] attention ((crops, P)), and where the
    visual tokens sit (B, L) bool (for methods that prune inside the LLM)."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    v_token_num: list[int]
    cls_attn: list[torch.Tensor]
    visual_mask: torch.Tensor | None = None


@dataclass
class GridLayout:
    """Where the grid crops of one LLaVA-1.6 image sit: `cols` x `rows` crops of `side` x `side` patches."""

    cols: int
    rows: int
    side: int


# ---------------------------------------------------------------------------------------------------------------
# merge: pure functions over kept indices, so they can be tested without a model
# ---------------------------------------------------------------------------------------------------------------
def grid_positions(keep: torch.Tensor, layout: GridLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Global (row, col) on the stitched patch grid of each kept token of the grid crops.

    keep: (n_grid, k) patch indices per grid crop, crops in raster order. Returns two (n_grid * k,) tensors.
    """
    n_grid, k = keep.shape
    crop = torch.arange(n_grid, device=keep.device).unsqueeze(1).expand(n_grid, k)
    row = (crop // layout.cols) * layout.side + keep // layout.side
    col = (crop % layout.cols) * layout.side + keep % layout.side
    return row.reshape(-1), col.reshape(-1)


UNPAD_RULES = ("llava", "transformers")


def _scaled_side(value: float, rule: str) -> int:
    """The unpadded side length: LLaVA-1.6's own code truncates (`int(x)`); transformers' llava_next first rounds to 7
    decimals (`int(round(x, 7))`), which differs when the float product falls just below an integer."""
    if rule == "llava":
        return int(value)
    if rule == "transformers":
        return int(round(value, 7))
    raise ValueError(f"unknown unpad rule {rule!r} (llava_arch.unpad_window); expected one of {UNPAD_RULES}")


def unpad_window(image_size: tuple[int, int], height: int, width: int,
                 rule: str = "llava") -> tuple[int, int, int, int]:
    """Rows [r0, r1) and columns [c0, c1) of a (height, width) patch grid that hold the image and not the padding
    added when it was fitted to the grid resolution. image_size is (w, h).

    rule "llava": haotian-liu/LLaVA's `unpad_image` (llava/model/llava_arch.py), the code the LLaVA-1.6 checkpoints
    ran with: the scaled side is truncated, so a wide 188x47 image on a 12x4 grid keeps rows [1, 3) (47 * 12 / 188
    is 2.9999999999999996 in floating point). rule "transformers": transformers' llava_next `unpad_image`, whose
    processor counts placeholders that way (rows [0, 4) for the same image); used for llava-hf models (llava.hf).
    """
    orig_w, orig_h = image_size
    if orig_w / orig_h > width / height:
        new_h = _scaled_side(orig_h * (width / orig_w), rule)
        pad = (height - new_h) // 2
        return pad, height - pad, 0, width
    new_w = _scaled_side(orig_w * (height / orig_h), rule)
    pad = (width - new_w) // 2
    return 0, height, pad, width - pad


def merge_grid_paper(grid_embeds: torch.Tensor, keep: torch.Tensor, layout: GridLayout) -> torch.Tensor:
    """Original FasterVLM order for the grid crops: kept tokens in raster order over the stitched grid (a whole
    patch row across all crops of a crop row, then the next). grid_embeds (n_grid, k, D) -> (n_grid * k, D)."""
    row, col = grid_positions(keep, layout)
    order = (row * layout.cols * layout.side + col).argsort()
    return grid_embeds.reshape(-1, grid_embeds.shape[-1])[order]


def merge_grid_upstream(
    grid_embeds: torch.Tensor, keep: torch.Tensor, layout: GridLayout, image_size: tuple[int, int],
    newline: torch.Tensor, rule: str = "llava",
) -> torch.Tensor:
    """Upstream LLaVA-1.6 `spatial_unpad`: drop tokens in the padding (`unpad_window` with `rule`), raster order,
    `newline` (D,) after every remaining patch row. Newlines are never pruned.
    grid_embeds (n_grid, k, D) -> (kept_in_window + rows, D)."""
    height, width = layout.rows * layout.side, layout.cols * layout.side
    r0, r1, c0, c1 = unpad_window(image_size, height, width, rule)
    row, col = grid_positions(keep, layout)
    inside = (row >= r0) & (row < r1) & (col >= c0) & (col < c1)
    tokens = grid_embeds.reshape(-1, grid_embeds.shape[-1])[inside]
    # Sort key: a row's newline comes after every column of that row.
    token_key = row[inside] * (width + 1) + col[inside]
    rows = torch.arange(r0, r1, device=keep.device)
    newline_key = rows * (width + 1) + width
    sequence = torch.cat([tokens, newline.to(tokens.dtype).expand(len(rows), -1)])
    return sequence[torch.cat([token_key, newline_key]).argsort()]


# ---------------------------------------------------------------------------------------------------------------
# splice
# ---------------------------------------------------------------------------------------------------------------
def count_placeholders(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[int]:
    ids = input_ids if attention_mask is None else input_ids.masked_fill(~attention_mask.bool(), 0)
    return (ids == IMAGE_TOKEN_INDEX).sum(dim=1).tolist()


def check_image_count(placeholders: list[int], num_images: int) -> None:
    """The prompts must hold exactly one `<image>` per image: both directions are errors, said plainly."""
    total = sum(placeholders)
    if total != num_images:
        raise ValueError(
            f"the prompt(s) hold {total} <image> placeholder(s) (per sample: {placeholders}) but {num_images} "
            f"image(s) were given; put one <image> in the prompt for each image (tokenizer_image_token turns it into "
            f"IMAGE_TOKEN_INDEX={IMAGE_TOKEN_INDEX})"
        )


def splice(
    ids: torch.Tensor, embed_tokens: nn.Module, images: list[torch.Tensor]
) -> torch.Tensor:
    """One sample: text embeddings of `ids` (L,) with each IMAGE_TOKEN_INDEX replaced by the next image's tokens.

    Returns (L - len(images) + sum(n_i), D).
    """
    spots = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    if len(spots) != len(images):
        raise ValueError(f"sample has {len(spots)} <image> placeholders but {len(images)} image(s) were assigned")
    text = embed_tokens(ids.clamp(min=0))  # (L, D); placeholder rows are replaced below
    pieces, start = [], 0
    for spot, image in zip(spots, images):
        pieces += [text[start:spot], image.to(device=text.device, dtype=text.dtype)]
        start = spot + 1
    pieces.append(text[start:])
    return torch.cat(pieces)


def splice_labels(labels: torch.Tensor, ids: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Labels (L,) aligned with `splice`'s output: IGNORE_INDEX over each image's `counts[i]` tokens."""
    spots = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    pieces, start = [], 0
    for spot, n in zip(spots, counts):
        pieces += [labels[start:spot], labels.new_full((n,), IGNORE_INDEX)]
        start = spot + 1
    pieces.append(labels[start:])
    return torch.cat(pieces)


def left_pad(sequences: list[torch.Tensor], fill: float | int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (L_i, ...) sequences into (B, L, ...) with left padding by `fill`, and the (B, L) attention mask."""
    longest = max(s.shape[0] for s in sequences)
    first = sequences[0]
    out = first.new_full((len(sequences), longest, *first.shape[1:]), fill)
    mask = torch.zeros(len(sequences), longest, dtype=torch.long, device=first.device)
    for i, s in enumerate(sequences):
        out[i, longest - s.shape[0]:] = s
        mask[i, longest - s.shape[0]:] = 1
    return out, mask


# ---------------------------------------------------------------------------------------------------------------
# the model mixins
# ---------------------------------------------------------------------------------------------------------------
class LlavaMetaModel:
    """Adds the projector (and LLaVA-1.6's `image_newline`) to the language model's base model.

    The vision tower is attached by the loader (`attach_vision_tower`): it is not part of LLaVA-1.5 checkpoints.
    """

    def init_multimodal_modules(self, config) -> None:
        self.vision_tower = None
        if not config.is_multimodal:
            return
        self.mm_projector = build_vision_projector(config)
        if config.is_anyres:
            self.image_newline = nn.Parameter(torch.zeros(config.hidden_size))

    def get_vision_tower(self):
        return self.vision_tower


class LlavaMetaForCausalLM:
    """encode -> select -> project -> merge -> splice, on top of a causal LM's `self.model`."""

    pruning: PruningConfig
    llm_pruner = None  # the installed LLMPruner of an in-LLM method (FastV), else None
    unpad_rule = "llava"  # upstream mode's unpadding: LLaVA-1.6's own rounding (see `unpad_window`)

    def get_model(self):
        return self.model

    def get_vision_tower(self):
        return self.get_model().get_vision_tower()

    def attach_vision_tower(self, tower: nn.Module, pruning: PruningConfig | None = None) -> None:
        """Attach the tower; without `pruning` the model keeps every token (vanilla LLaVA)."""
        self.get_model().vision_tower = tower
        if pruning is None:
            pruning = PruningConfig(visual_token_num=tower.num_patches, tokens_per_crop=tower.num_patches)
        self.set_pruning(pruning)

    def set_pruning(self, pruning: PruningConfig) -> None:
        """Change method / budget / anyres mode of a loaded model. The config was validated when it was built;
        here it must also fit the attached tower. `config.anyres_mode` follows, so `process_images` agrees."""
        tower = self.get_vision_tower()
        if tower is not None and pruning.tokens_per_crop != tower.num_patches:
            pruning = pruning.replace(tokens_per_crop=tower.num_patches)
        self.pruning = pruning
        self.config.anyres_mode = pruning.anyres_mode
        if self.llm_pruner is not None:
            self.llm_pruner.remove()
            self.llm_pruner = None
        pruner_class = get_llm_pruner(pruning.method)
        if pruner_class is not None:  # hooks on this model's decoder layers only
            self.llm_pruner = pruner_class(self.get_model(), pruning)

    def start_llm_pruning(self, mm: MultimodalInputs | None) -> list[int] | None:
        """Arm an in-LLM method for the next prefill (None: a text-only prompt, nothing to prune). Returns the visual
        tokens each sample keeps inside the LLM (budget x crops, capped), or None without an in-LLM method."""
        if self.llm_pruner is None:
            return None
        if mm is None:
            self.llm_pruner.disarm()
            return None
        budgets = [self.pruning.visual_token_num * a.shape[0] for a in mm.cls_attn]
        return self.llm_pruner.arm(mm.visual_mask, budgets)

    # -- stages -----------------------------------------------------------------------------------------------
    def encode(self, crops: torch.Tensor):
        """crops (N, 3, S, S) -> TowerOutput(features (N, P, C), cls_attn (N, P))."""
        tower = self.get_vision_tower()
        if tower is None:
            raise RuntimeError("this model has no vision tower attached; load it with load_pretrained_model")
        return tower(crops)

    def select(self, features: torch.Tensor, cls_attn: torch.Tensor, **signals: torch.Tensor) -> Selection:
        """Kept patch indices (N, k), ascending per crop, k = pruning.visual_token_num (+ merged or extra tokens); all
        P patches for a method that prunes inside the LLM. `signals` are further tower outputs (keys, cls_token) for
        the selectors that declare them in `needs` (VisionZip)."""
        selector = get_selector(self.pruning.method)
        needs = getattr(selector, "needs", ())
        missing = [name for name in needs if signals.get(name) is None]
        if missing:
            raise ValueError(f"pruning method {self.pruning.method!r} needs the tower's {missing}, which this tower "
                             f"does not provide")
        extra = {name: signals[name] for name in needs}
        return as_selection(selector(features, cls_attn, self.pruning.pre_projector_budget, seed=self.pruning.seed,
                                     **extra))

    def project(self, features: torch.Tensor, selection: Selection | torch.Tensor) -> torch.Tensor:
        """Project only the kept tokens: features (N, P, C), a selection of k tokens per crop -> (N, k, D), in the
        order [prefix, kept patches, suffix] (see `Selection`)."""
        tokens = as_selection(selection).tokens(features)  # (N, k, C)
        # The compute dtype, not the projector's parameter dtype: under 8/4-bit loading that is an integer type.
        return self.get_model().mm_projector(tokens.to(self.get_model().embed_tokens.weight.dtype))

    def merge(self, embeds: torch.Tensor, keep: torch.Tensor, image_size: tuple[int, int] | None,
              n_prefix: int = 0, n_suffix: int = 0) -> torch.Tensor:
        """One image's crops as one sequence. embeds (crops, k, D), keep (crops, m) -> (n, D); each crop's k tokens
        are [n_prefix tokens, m kept patches, n_suffix tokens] (see `Selection`).

        A single crop (LLaVA-1.5) is returned as is. LLaVA-1.6: the base crop first (as is), then the grid crops'
        kept patches merged as the pruning config's `anyres_mode` says (see `merge_grid_paper` /
        `merge_grid_upstream`), then every grid crop's prefix tokens, then every grid crop's suffix tokens (VisionZip's
        order for its [CLS] and contextual tokens).
        """
        if not self.config.is_anyres:
            return embeds.reshape(-1, embeds.shape[-1])
        m = keep.shape[1]
        base, grid, grid_keep = embeds[0], embeds[1:, n_prefix:n_prefix + m], keep[1:]
        extras = [embeds[1:, :n_prefix], embeds[1:, n_prefix + m:]]
        extras = [x.reshape(-1, x.shape[-1]) for x in extras]
        upstream = self.pruning.anyres_mode == "upstream"
        if grid.shape[0] == 0:
            if upstream:  # upstream appends one newline to a lone base crop
                return torch.cat([base, self.get_model().image_newline.to(base.dtype)[None]])
            return base
        if image_size is None:
            raise ValueError("LLaVA-1.6 (anyres) images need image_sizes=[(width, height), ...] in generate/forward")
        layout = self.grid_layout(image_size)
        if layout.cols * layout.rows != grid.shape[0]:
            raise ValueError(
                f"image of size {image_size} maps to a {layout.cols}x{layout.rows} crop grid but {grid.shape[0]} grid "
                f"crops were given: process the image with the same anyres_mode ({self.pruning.anyres_mode!r})"
            )
        if upstream:
            grid_seq = merge_grid_upstream(grid, grid_keep, layout, image_size, self.get_model().image_newline,
                                           self.unpad_rule)
        else:
            grid_seq = merge_grid_paper(grid, grid_keep, layout)
        return torch.cat([base, grid_seq, *extras])

    def grid_layout(self, image_size: tuple[int, int]) -> GridLayout:
        from llava.mm_utils import get_anyres_image_grid_shape

        tower = self.get_vision_tower()
        cols, rows = get_anyres_image_grid_shape(
            image_size, self.config.image_grid_pinpoints, tower.config.image_size, self.pruning.anyres_mode
        )
        return GridLayout(cols=cols, rows=rows, side=tower.num_patches_per_side)

    def visual_tokens(self, images, image_sizes=None) -> VisualTokens:
        """encode -> select -> project -> merge for a batch of images.

        images: a (B, 3, S, S) tensor (one crop per image), a (B, crops, 3, S, S) tensor, or a list of
        (crops_i, 3, S, S) / (3, S, S) tensors. image_sizes: (width, height) per image, needed for LLaVA-1.6.
        """
        per_image = _as_crop_list(images)
        _check_finite(per_image)
        _check_image_sizes(self, per_image, image_sizes)
        counts = [c.shape[0] for c in per_image]
        out = self.encode(torch.cat(per_image))
        selection = self.select(out.features, out.cls_attn, keys=out.keys, cls_token=out.cls_token)
        keep = selection.keep  # (N, m)
        projected = self.project(out.features, selection)  # (N, k, D), k = prefix + m + suffix
        embeds, attn = [], []
        for i, (e, k, a) in enumerate(
            zip(projected.split(counts), keep.split(counts), out.cls_attn.split(counts))
        ):
            size = image_sizes[i] if image_sizes is not None else None
            embeds.append(self.merge(e, k, size, selection.n_prefix, selection.n_suffix))
            attn.append(a)
        self._check_budget(embeds, counts)
        return VisualTokens(embeds=embeds, cls_attn=attn)

    def _check_budget(self, embeds: list[torch.Tensor], crops: list[int]) -> None:
        """Where the count is known up front (no unpadding), kept tokens must equal budget x crops."""
        if self.pruning.anyres_mode == "upstream" and self.config.is_anyres:
            return  # unpadding removes a data-dependent number of tokens and adds one newline per row
        per_crop = self.pruning.pre_projector_budget
        for i, (e, n) in enumerate(zip(embeds, crops)):
            expected = per_crop * n
            if e.shape[0] != expected:
                raise RuntimeError(
                    f"image {i}: {e.shape[0]} visual tokens after pruning, expected {expected} "
                    f"({per_crop} per crop x {n} crops); method {self.pruning.method!r} is broken"
                )

    def prepare_multimodal_inputs(self, input_ids, attention_mask, images, image_sizes=None,
                                  labels=None) -> MultimodalInputs:
        """Token ids (B, L) with IMAGE_TOKEN_INDEX placeholders (and optional labels) -> MultimodalInputs."""
        placeholders = count_placeholders(input_ids, attention_mask)
        visual = self.visual_tokens(images, image_sizes)
        check_image_count(placeholders, len(visual.embeds))
        embed_tokens = self.get_model().embed_tokens
        sequences, label_rows, visual_rows, v_counts, cls_attn, start = [], [], [], [], [], 0
        for b, n in enumerate(placeholders):
            real = slice(None) if attention_mask is None else attention_mask[b].bool()
            ids = input_ids[b][real]
            mine = slice(start, start + n)
            sequences.append(splice(ids, embed_tokens, visual.embeds[mine]))
            if labels is not None:
                label_rows.append(splice_labels(labels[b][real], ids, visual.counts[mine]))
            visual_rows.append(splice_labels(torch.zeros_like(ids), ids, visual.counts[mine]) == IGNORE_INDEX)
            v_counts.append(sum(visual.counts[mine]))
            cls_attn.append(torch.cat(visual.cls_attn[mine]) if n else visual.cls_attn[0].new_zeros(0, 0))
            start += n
        inputs_embeds, mask = left_pad(sequences)
        padded_labels = left_pad(label_rows, fill=IGNORE_INDEX)[0] if labels is not None else None
        visual_mask = left_pad(visual_rows, fill=False)[0]
        return MultimodalInputs(inputs_embeds, mask, padded_labels, v_counts, cls_attn, visual_mask)


def _as_crop_list(images) -> list[torch.Tensor]:
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


def _check_finite(per_image: list[torch.Tensor]) -> None:
    """NaN or infinite pixels would silently turn every logit into NaN: refused, per image."""
    bad = torch.stack([(~torch.isfinite(crops)).sum() for crops in per_image]).tolist()
    for i, n in enumerate(bad):
        if n:
            raise ValueError(f"image {i}: {n} pixel value(s) are NaN or infinite; check the image and how its pixel "
                             f"tensor was made (process_images)")


def _check_image_sizes(model, per_image: list[torch.Tensor], image_sizes) -> None:
    """LLaVA-1.6 (anyres) only: one (width, height) per image, and not (height, width). A swap is seen from the
    crops themselves: the grid crops hold the image fitted into the canvas with uniform padding bands (black, from
    `resize_and_pad_image`); when the bands that the given size predicts are not uniform but those of the swapped
    size are, the size was given the wrong way round. Transposed pinpoints give the same crop count, so the count
    alone cannot tell."""
    if image_sizes is None or not model.config.is_anyres:
        return
    sizes = image_sizes.tolist() if isinstance(image_sizes, torch.Tensor) else list(image_sizes)
    if len(sizes) != len(per_image):
        raise ValueError(f"image_sizes has {len(sizes)} entries for {len(per_image)} image(s); give one "
                         f"(width, height) per image")
    for i, (size, crops) in enumerate(zip(sizes, per_image)):
        if not (isinstance(size, (tuple, list)) and len(size) == 2
                and all(isinstance(v, numbers.Integral) and v > 0 for v in size)):
            raise ValueError(f"image_sizes[{i}] must be (width, height) in pixels, as PIL's image.size; got {size!r}")
        width, height = int(size[0]), int(size[1])
        grid = crops[1:]
        if width == height or grid.shape[0] == 0:
            continue
        given, swapped = model.grid_layout((width, height)), model.grid_layout((height, width))
        fits = [layout.cols * layout.rows == grid.shape[0] for layout in (given, swapped)]
        if fits == [False, True] or (all(fits) and _padding_uniform(grid, given, (width, height)) is False
                                     and _padding_uniform(grid, swapped, (height, width)) is True):
            raise ValueError(f"image_sizes[{i}] = ({width}, {height}) looks like (height, width): the image's crops "
                             f"fit ({height}, {width}); image_sizes takes (width, height), as PIL's image.size")


def _padding_uniform(grid: torch.Tensor, layout, size: tuple[int, int]) -> bool | None:
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
