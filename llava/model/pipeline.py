"""The image path with FasterVLM pruning, as one object (`VisualTokenPipeline`, no nn.Module: it owns no weights,
it holds the modules of the model it serves):

    encode  -> the vision tower gives patch features (N, P, C) and [CLS] attention (N, P) for all N crops (a tower
               without [CLS] gives (N, 0) and, instead, the attention each patch receives: `TowerOutput.received`)
    select  -> the pruning method keeps k patch indices per crop (N, k), sorted (raster order)
    project -> only the kept features go through the projector (N, k, D)
    merge   -> per image, crops are laid out as one token sequence (base crop, then the grid; LLaVA-1.6 only;
               the grid functions are in `llava.model.merge`)

Calling it on a batch of images returns `VisualTokens`, a typed per-call value. Our `LlavaLlamaForCausalLM` and the
transformers integration (`llava.integrations.transformers`) each build one over their own modules; splicing the
tokens into the prompt is `llava.model.placeholders`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from llava.model.image_checks import as_crop_list, check_finite, check_image_sizes
from llava.model.merge import GridLayout, merge_grid_paper, merge_grid_upstream, unpad_window
from llava.model.pruning import PruningConfig, Selection, as_selection, get_selector

GridRule = Callable[[tuple[int, int]], tuple[int, int]]  # image (width, height) -> crop grid (cols, rows)


@dataclass(frozen=True)
class VisualTokens:
    """One call's result, per image: the embeddings to splice (n_i, D), the [CLS] attention of its crops
    (crops_i, P), the kept patch indices of its crops (crops_i, m) (ascending; all P for an in-LLM method)."""

    embeds: list[torch.Tensor]
    cls_attn: list[torch.Tensor]
    keep: list[torch.Tensor]

    @property
    def counts(self) -> list[int]:
        """Visual tokens per image (what each image's placeholder becomes)."""
        return [e.shape[0] for e in self.embeds]


class VisualTokenPipeline:
    """encode -> select -> project -> merge over one model's modules.

    tower:         a `ClsAttentionTower` (`tower(crops)` -> TowerOutput(features, cls_attn, keys, cls_token))
    projector:     vision features (.., C) -> LLM embeddings (.., D)
    embed_tokens:  the LLM's input embeddings: its weight's dtype, read at each call, is the projector's input dtype
    pruning:       the validated `PruningConfig` (method, budget, anyres_mode)
    grid_rule:     anyres (LLaVA-1.6) only: the crop grid an image of (width, height) gets; None for one crop per
                   image (LLaVA-1.5)
    image_newline: anyres upstream mode: the (D,) token after every patch row
    unpad_rule:    upstream mode's unpadding rounding (`llava.model.merge.UNPAD_RULES`)
    """

    def __init__(self, tower: nn.Module, projector: nn.Module, embed_tokens: nn.Module, pruning: PruningConfig, *,
                 grid_rule: GridRule | None = None, image_newline: torch.Tensor | None = None,
                 unpad_rule: str = "llava") -> None:
        self.tower, self.projector, self.embed_tokens = tower, projector, embed_tokens
        self.pruning = pruning
        self.grid_rule, self.image_newline, self.unpad_rule = grid_rule, image_newline, unpad_rule

    @property
    def anyres(self) -> bool:
        return self.grid_rule is not None

    @property
    def unpads(self) -> bool:
        """Whether the merge drops padding and adds newlines (upstream LLaVA-1.6): then the count is data-dependent."""
        return self.anyres and self.pruning.anyres_mode == "upstream"

    # -- stages -------------------------------------------------------------------------------------------------
    def __call__(self, images, image_sizes=None) -> VisualTokens:
        """encode -> select -> project -> merge for a batch of images.

        images: a (B, 3, S, S) tensor (one crop per image), a (B, crops, 3, S, S) tensor, or a list of
        (crops_i, 3, S, S) / (3, S, S) tensors. image_sizes: (width, height) per image, needed for LLaVA-1.6.
        """
        per_image = as_crop_list(images)
        check_finite(per_image)
        if self.anyres:
            check_image_sizes(per_image, image_sizes, self.grid_layout)
        crops = [c.shape[0] for c in per_image]
        out = self.encode(torch.cat(per_image))
        selection = self.select(out.features, out.cls_attn, keys=out.keys, cls_token=out.cls_token,
                                received=out.received)
        projected = self.project(out.features, selection)  # (N, k, D), k = prefix + m + suffix
        keep = list(selection.keep.split(crops))
        embeds = [self.merge(e, k, image_sizes[i] if image_sizes is not None else None, selection.n_prefix,
                             selection.n_suffix) for i, (e, k) in enumerate(zip(projected.split(crops), keep))]
        self.check_budget(embeds, crops)
        return VisualTokens(embeds=embeds, cls_attn=list(out.cls_attn.split(crops)), keep=keep)

    def encode(self, crops: torch.Tensor):
        """crops (N, 3, S, S) -> TowerOutput(features (N, P, C), cls_attn (N, P), keys, cls_token[, received]).
        `received` (N, P) is scored only for a method that needs it, by a tower that declares `scores_received`
        (it costs one more attention pass at the tower layer); other towers leave it None and `select` says so."""
        if "received" in getattr(get_selector(self.pruning.method), "needs", ()) and \
                getattr(self.tower, "scores_received", False):
            return self.tower(crops, received=True)
        return self.tower(crops)

    def select(self, features: torch.Tensor, cls_attn: torch.Tensor, **signals: torch.Tensor) -> Selection:
        """Kept patch indices (N, k), ascending per crop, k = pruning.visual_token_num (+ merged or extra tokens); all
        P patches for a method that prunes inside the LLM. `signals` are further tower outputs (keys, cls_token,
        received) for the selectors that declare them in `needs` (VisionZip, attention_received)."""
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
        return self.projector(tokens.to(self.embed_tokens.weight.dtype))

    def merge(self, embeds: torch.Tensor, keep: torch.Tensor, image_size: tuple[int, int] | None,
              n_prefix: int = 0, n_suffix: int = 0) -> torch.Tensor:
        """One image's crops as one sequence. embeds (crops, k, D), keep (crops, m) -> (n, D); each crop's k tokens
        are [n_prefix tokens, m kept patches, n_suffix tokens] (see `Selection`).

        A single crop (LLaVA-1.5) is returned as is. LLaVA-1.6: the base crop first (as is), then the grid crops'
        kept patches merged as the pruning config's `anyres_mode` says (`merge_grid_paper` / `merge_grid_upstream`),
        then every grid crop's prefix tokens, then every grid crop's suffix tokens (VisionZip's order for its [CLS]
        and contextual tokens).
        """
        if not self.anyres:
            return embeds.reshape(-1, embeds.shape[-1])
        m = keep.shape[1]
        base, grid, grid_keep = embeds[0], embeds[1:, n_prefix:n_prefix + m], keep[1:]
        if grid.shape[0] == 0:
            if self.unpads:  # upstream appends one newline to a lone base crop
                return torch.cat([base, self.image_newline.to(base.dtype)[None]])
            return base
        layout = self._checked_layout(image_size, grid.shape[0])
        if self.unpads:
            grid_seq = merge_grid_upstream(grid, grid_keep, layout, image_size, self.image_newline, self.unpad_rule)
        else:
            grid_seq = merge_grid_paper(grid, grid_keep, layout)
        extras = [x.reshape(-1, x.shape[-1]) for x in (embeds[1:, :n_prefix], embeds[1:, n_prefix + m:])]
        return torch.cat([base, grid_seq, *extras])

    # -- geometry and counts ------------------------------------------------------------------------------------
    def grid_layout(self, image_size: tuple[int, int]) -> GridLayout:
        """Where the grid crops of an anyres image of (width, height) sit."""
        cols, rows = self.grid_rule(image_size)
        return GridLayout(cols=cols, rows=rows, side=self.tower.num_patches_per_side)

    def _checked_layout(self, image_size: tuple[int, int] | None, n_grid: int) -> GridLayout:
        if image_size is None:
            raise ValueError("LLaVA-1.6 (anyres) images need image_sizes=[(width, height), ...] in generate/forward")
        layout = self.grid_layout(image_size)
        if layout.cols * layout.rows != n_grid:
            raise ValueError(
                f"image of size {image_size} maps to a {layout.cols}x{layout.rows} crop grid but {n_grid} grid crops "
                f"were given: process the image with the same anyres_mode ({self.pruning.anyres_mode!r}): "
                f"process_images(images, image_processor, model.config, anyres_mode=model.pruning.anyres_mode)"
            )
        return layout

    def crops(self, image_size: tuple[int, int] | None) -> int:
        """Crops of one image: 1, or for anyres the base crop and its grid."""
        if not self.anyres:
            return 1
        layout = self.grid_layout(image_size)
        return 1 + layout.cols * layout.rows

    def full_tokens(self, image_size: tuple[int, int] | None) -> int:
        """Visual tokens one image gets without pruning in this pipeline's layout: every patch of every crop, and in
        upstream mode the grid's unpadded window plus one newline per row (what transformers' processor writes as
        placeholders for a llava-hf model)."""
        per_crop = self.tower.num_patches
        if not self.unpads:
            return per_crop * self.crops(image_size)
        layout = self.grid_layout(image_size)
        r0, r1, c0, c1 = unpad_window(image_size, layout.rows * layout.side, layout.cols * layout.side,
                                      self.unpad_rule)
        return per_crop + (r1 - r0) * (c1 - c0 + 1)

    def check_budget(self, embeds: list[torch.Tensor], crops: list[int]) -> None:
        """Where the count is known up front (no unpadding), kept tokens must equal budget x crops."""
        if self.unpads:
            return  # unpadding removes a data-dependent number of tokens and adds one newline per row
        per_crop = self.pruning.pre_projector_budget
        for i, (e, n) in enumerate(zip(embeds, crops)):
            expected = per_crop * n
            if e.shape[0] != expected:
                raise RuntimeError(
                    f"image {i}: {e.shape[0]} visual tokens after pruning, expected {expected} "
                    f"({per_crop} per crop x {n} crops); method {self.pruning.method!r} is broken"
                )
