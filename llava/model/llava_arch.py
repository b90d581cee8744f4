"""The LLaVA mixins on top of a causal LM: the projector (and LLaVA-1.6's `image_newline`) on the base model, and
the multimodal entry of the causal LM (`LlavaMetaForCausalLM`), which holds

- `pruning`:  the validated `PruningConfig` (set with `set_pruning`);
- `visual`:   the `VisualTokenPipeline` over this model's tower, projector and embeddings (llava.model.pipeline);
- `llm_pruner`: the installed `LLMPruner` of an in-LLM method (FastV), else None.

`prepare_multimodal_inputs` runs the pipeline and splices its tokens into the prompt (llava.model.placeholders).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from llava.image_geometry import get_anyres_image_grid_shape
from llava.model.multimodal_projector.builder import build_vision_projector
from llava.model.pipeline import GridRule, VisualTokenPipeline, VisualTokens
from llava.model.placeholders import MultimodalInputs, splice_batch
from llava.model.pruning import PruningConfig, get_llm_pruner


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
    """Pruning settings, the visual-token pipeline and in-LLM pruning on top of a causal LM's `self.model`."""

    pruning: PruningConfig
    visual: VisualTokenPipeline | None = None  # built with the tower (attach_vision_tower / set_pruning)
    llm_pruner = None  # the installed LLMPruner of an in-LLM method (FastV), else None

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
        here it must also fit the attached tower. The pipeline is rebuilt and in-LLM hooks re-installed."""
        tower = self.get_vision_tower()
        if tower is not None and pruning.tokens_per_crop != tower.num_patches:
            pruning = pruning.replace(tokens_per_crop=tower.num_patches)
        self.pruning = pruning
        self.visual = self._build_pipeline(tower, pruning) if tower is not None else None
        if self.llm_pruner is not None:
            self.llm_pruner.remove()
            self.llm_pruner = None
        pruner_class = get_llm_pruner(pruning.method)
        if pruner_class is not None:  # hooks on this model's decoder layers only
            self.llm_pruner = pruner_class(self.get_model(), pruning)

    def _build_pipeline(self, tower: nn.Module, pruning: PruningConfig) -> VisualTokenPipeline:
        base = self.get_model()
        anyres = self.config.is_anyres
        return VisualTokenPipeline(
            tower, base.mm_projector, base.embed_tokens, pruning,
            grid_rule=llava_grid_rule(self.config.image_grid_pinpoints, tower, pruning.anyres_mode) if anyres else None,
            image_newline=base.image_newline if anyres else None,
        )

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

    def visual_tokens(self, images, image_sizes=None) -> VisualTokens:
        """encode -> select -> project -> merge for a batch of images (see `VisualTokenPipeline.__call__`)."""
        if self.visual is None:
            raise RuntimeError("this model has no vision tower attached; load it with load_pretrained_model")
        return self.visual(images, image_sizes)

    def prepare_multimodal_inputs(self, input_ids, attention_mask, images, image_sizes=None,
                                  labels=None) -> MultimodalInputs:
        """Token ids (B, L) with IMAGE_TOKEN_INDEX placeholders (and optional labels) -> MultimodalInputs."""
        visual = self.visual_tokens(images, image_sizes)
        return splice_batch(input_ids, attention_mask, visual, self.get_model().embed_tokens, labels)


def llava_grid_rule(pinpoints, tower: nn.Module, anyres_mode: str) -> GridRule:
    """LLaVA's anyres grid for an image of (width, height): the canvas `anyres_mode`'s rule picks among the
    [width, height] `pinpoints`, in crops of the tower's input side (llava.mm_utils.get_anyres_image_grid_shape)."""
    side = tower.config.image_size

    def grid(image_size: tuple[int, int]) -> tuple[int, int]:
        return get_anyres_image_grid_shape(image_size, pinpoints, side, anyres_mode)

    return grid
