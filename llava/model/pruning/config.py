"""The one pruning configuration object, validated once and carried on the model."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass

ANYRES_MODES = ("paper", "upstream")


@dataclass(frozen=True)
class PruningConfig:
    """How visual tokens are pruned: before the projector (selectors) or inside the language model (FastV).

    method:            name of a registered selection method (see `llava.model.pruning.METHODS`).
    visual_token_num:  tokens kept **per crop** (LLaVA-1.6 keeps this many in each of its 1 + grid crops).
    tokens_per_crop:   patch tokens one crop produces (576 for CLIP ViT-L/14-336); the upper bound of the budget.
    anyres_mode:       LLaVA-1.6 only. "paper" reproduces the original FasterVLM (spatial merge, no unpadding,
                       no image_newline, its own grid rule); "upstream" follows the checkpoint config
                       (spatial_unpad + image_newline, upstream LLaVA's grid rule).
    seed:              seed for stochastic methods (e.g. "random"), so runs are reproducible.
    llm_layer:         in-LLM methods only (FastV's K): the decoder layers run on every token before pruning; the
                       attention of layer K (1-based) ranks the visual tokens, layers K+1.. see the kept ones. Must be
                       below the LLM's depth (checked when the method is installed on a model).

    Frozen: a field set by hand would skip `validate` and the model's `set_pruning` (which re-installs in-LLM
    hooks and keeps `config.anyres_mode` in step), e.g. `model.pruning.visual_token_num = 0` generated with no visual
    tokens. Change it with `model.set_pruning(model.pruning.replace(...))`.
    """

    method: str = "fastervlm"
    visual_token_num: int = 576
    tokens_per_crop: int = 576
    anyres_mode: str = "paper"
    seed: int = 0
    llm_layer: int = 2

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        from llava.model.pruning import METHODS  # local import: the registry imports this module

        if self.method not in METHODS:
            raise ValueError(f"unknown pruning method {self.method!r}; registered methods: {sorted(METHODS)}")
        if isinstance(self.visual_token_num, bool) or not isinstance(self.visual_token_num, int):
            raise TypeError(f"visual_token_num must be an int, got {type(self.visual_token_num).__name__}")
        if not 1 <= self.visual_token_num <= self.tokens_per_crop:
            raise ValueError(
                f"visual_token_num={self.visual_token_num} is out of range: it is the number of visual tokens kept "
                f"per crop and must be between 1 and {self.tokens_per_crop} (the tokens one crop produces)"
            )
        if self.anyres_mode not in ANYRES_MODES:
            raise ValueError(f"anyres_mode must be one of {ANYRES_MODES}, got {self.anyres_mode!r}")
        if isinstance(self.llm_layer, bool) or not isinstance(self.llm_layer, int):
            raise TypeError(f"llm_layer must be an int, got {type(self.llm_layer).__name__}")
        if self.llm_layer < 1:
            raise ValueError(f"llm_layer={self.llm_layer}: in-LLM pruning needs at least one full layer (K >= 1)")

    @property
    def in_llm(self) -> bool:
        """Whether the method prunes inside the language model (then the projector sees every token)."""
        from llava.model.pruning import get_llm_pruner

        return get_llm_pruner(self.method) is not None

    @property
    def pre_projector_budget(self) -> int:
        """Tokens per crop the pre-projector stage keeps: all of them for in-LLM methods."""
        return self.tokens_per_crop if self.in_llm else self.visual_token_num

    def replace(self, **changes) -> "PruningConfig":
        """A validated copy with some fields changed."""
        fields = {**self.__dict__, **changes}
        return PruningConfig(**fields)


def _refuse_edit(self: PruningConfig, name: str, value=None) -> None:
    """Replaces the frozen dataclass's generic "cannot assign to field" with how to do it instead."""
    raise FrozenInstanceError(
        f"PruningConfig is read-only (a field set by hand would bypass validation): instead of changing {name!r}, use "
        f"model.set_pruning(model.pruning.replace({name}=...)), or PruningConfig.replace(...) for a new config"
    )


# The dataclass's own __init__ sets fields through object.__setattr__, so only assignments after it reach these.
PruningConfig.__setattr__ = _refuse_edit
PruningConfig.__delattr__ = _refuse_edit
