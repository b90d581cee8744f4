"""The one way pruning settings enter: `PruningRequest` (what a user asks, before the tower is known), resolved into
the validated `PruningConfig` a model carries, and the command-line flags every entry point shares.

    parser = argparse.ArgumentParser(); PruningConfig.add_cli_args(parser)
    request = PruningConfig.from_args(parser.parse_args())     # a PruningRequest: checked, budget maybe None (= all)
    load_pretrained_model(path, pruning=request)               # resolved against the tower's tokens per crop
"""

from __future__ import annotations

import argparse
from dataclasses import FrozenInstanceError, dataclass, fields

from llava.model.pruning.registry import check_method, get_llm_pruner, method_parameters

ANYRES_MODES = ("paper", "upstream")


def _require_int(name: str, value) -> None:
    """TypeError unless `value` is an int (bool is not: `True` would silently mean 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")


def _check_int(name: str, value, minimum: int, why: str) -> None:
    """An int of at least `minimum`; `why` says what the value means."""
    _require_int(name, value)
    if value < minimum:
        raise ValueError(f"{name}={value} is out of range: {why}")


def _check_budget(visual_token_num: int | None, tokens_per_crop: int | None) -> None:
    """The budget per crop: an int in [1, tokens_per_crop] (upper bound only when the tower is known); None = all."""
    if visual_token_num is None:
        return
    _require_int("visual_token_num", visual_token_num)
    if visual_token_num < 1 or (tokens_per_crop is not None and visual_token_num > tokens_per_crop):
        bound = "at least 1" if tokens_per_crop is None else \
            f"between 1 and {tokens_per_crop} (the tokens one crop produces)"
        raise ValueError(f"visual_token_num={visual_token_num} is out of range: it is the number of visual tokens "
                         f"kept per crop and must be {bound}")


def _check_settings(s, tokens_per_crop: int | None = None) -> None:
    """Every check of a request or config `s` (method, budget, anyres_mode, seed, llm_layer): one message each."""
    check_method(s.method)
    _check_budget(s.visual_token_num, tokens_per_crop)
    if s.anyres_mode not in ANYRES_MODES:
        raise ValueError(f"anyres_mode must be one of {ANYRES_MODES}, got {s.anyres_mode!r}")
    _check_int("seed", s.seed, 0, "the seed of stochastic methods must be >= 0")
    _check_int("llm_layer", s.llm_layer, 1, "in-LLM pruning needs at least one full layer (FastV's K >= 1)")


def _refuse_edit(self, name: str, value=None) -> None:
    """Replaces the frozen dataclass's generic "cannot assign to field" with how to do it instead."""
    kind = type(self).__name__
    raise FrozenInstanceError(
        f"{kind} is read-only (a field set by hand would bypass validation): instead of changing {name!r}, use "
        f"model.set_pruning(model.pruning.replace({name}=...)), or {kind}.replace(...) for a new one"
    )


class _Frozen:
    """`replace` and the read-only guard shared by the request and the config (both frozen dataclasses)."""

    def replace(self, **changes):
        """A validated copy with some fields changed."""
        return type(self)(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})

    def method_parameters(self) -> dict[str, int]:
        """The method's settings besides the budget that change what it keeps (`registry.method_parameters`)."""
        return method_parameters(self)



@dataclass(frozen=True)
class PruningRequest(_Frozen):
    """Pruning settings as asked for, before the vision tower (and so the tokens one crop gives) is known.

    Fields as in `PruningConfig`, except `visual_token_num=None`: keep every token (no pruning). Everything that
    can be checked without the tower is checked when it is built; `resolve` adds the budget's upper bound."""

    method: str = "fastervlm"
    visual_token_num: int | None = None
    anyres_mode: str = "paper"
    seed: int = 0
    llm_layer: int = 2

    def __post_init__(self) -> None:
        _check_settings(self)

    def resolve(self, tokens_per_crop: int) -> "PruningConfig":
        """The validated config for a tower giving `tokens_per_crop` patch tokens per crop."""
        budget = tokens_per_crop if self.visual_token_num is None else self.visual_token_num
        return PruningConfig(self.method, budget, tokens_per_crop, self.anyres_mode, self.seed, self.llm_layer)


@dataclass(frozen=True)
class PruningConfig(_Frozen):
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

    Frozen: a field set by hand would skip validation and the model's `set_pruning` (which re-installs in-LLM
    hooks), e.g. `model.pruning.visual_token_num = 0` generated with no visual tokens. Change it with
    `model.set_pruning(model.pruning.replace(...))`. Before the tower is known, ask with a `PruningRequest`.
    """

    method: str = "fastervlm"
    visual_token_num: int = 576
    tokens_per_crop: int = 576
    anyres_mode: str = "paper"
    seed: int = 0
    llm_layer: int = 2

    def __post_init__(self) -> None:
        _check_int("tokens_per_crop", self.tokens_per_crop, 1, "a crop gives at least one patch token")
        if self.visual_token_num is None:
            raise ValueError("PruningConfig.visual_token_num=None: 'all tokens' needs the tower's count; use "
                             "PruningRequest(visual_token_num=None), which the loader resolves")
        _check_settings(self, self.tokens_per_crop)

    @property
    def in_llm(self) -> bool:
        """Whether the method prunes inside the language model (then the projector sees every token)."""
        return get_llm_pruner(self.method) is not None

    @property
    def pre_projector_budget(self) -> int:
        """Tokens per crop the pre-projector stage keeps: all of them for in-LLM methods."""
        return self.tokens_per_crop if self.in_llm else self.visual_token_num

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        """The pruning flags of every entry point (names and defaults of the original FasterVLM scripts). Values
        are checked by `from_args`, so a bad one gets the same message as in Python."""
        group = parser.add_argument_group("visual-token pruning")
        group.add_argument("--visual-token-num", type=int, default=None,
                           help="visual tokens kept per crop (default: all, i.e. no pruning; 576 for CLIP-336)")
        group.add_argument("--pruning-method", default="fastervlm",
                           help="fastervlm, random, uniform, visionzip, vispruner or fastv (default: %(default)s)")
        group.add_argument("--anyres-mode", default="paper", choices=list(ANYRES_MODES),
                           help="LLaVA-1.6 only: the paper's FasterVLM (default) or upstream LLaVA's merge")
        group.add_argument("--fastv-layer", type=int, default=2,
                           help="FastV's K: prune after this many LLM layers (default: %(default)s)")

    @staticmethod
    def from_args(args: argparse.Namespace) -> PruningRequest:
        """The checked request of `add_cli_args`'s flags; the loader resolves it against the vision tower."""
        return PruningRequest(method=args.pruning_method, visual_token_num=args.visual_token_num,
                              anyres_mode=args.anyres_mode, llm_layer=args.fastv_layer)


def resolve_pruning(pruning: PruningRequest | PruningConfig | None, tokens_per_crop: int) -> PruningConfig:
    """The config a model with `tokens_per_crop` patch tokens per crop carries: a request resolved (None: keep
    everything with FasterVLM's defaults), a config re-checked against that count (its budget must fit)."""
    if pruning is None:
        pruning = PruningRequest()
    if isinstance(pruning, PruningRequest):
        return pruning.resolve(tokens_per_crop)
    if isinstance(pruning, PruningConfig):
        return pruning if pruning.tokens_per_crop == tokens_per_crop else pruning.replace(
            tokens_per_crop=tokens_per_crop)
    raise TypeError(f"pruning must be a PruningConfig or PruningRequest, got {type(pruning).__name__}")


# The dataclasses' own __init__ sets fields through object.__setattr__, so only later assignments reach these (set
# after the class bodies: `dataclass(frozen=True)` writes its own generic __setattr__ into each class).
for _cls in (PruningRequest, PruningConfig):
    _cls.__setattr__ = _refuse_edit
    _cls.__delattr__ = _refuse_edit
