"""The instance handle of `apply_pruning`: wrappers of one model's `forward` / `generate` that prune the
visual tokens of each call with images (see llava/integrations/transformers/__init__.py), and `undo()`."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from llava.integrations.transformers.adapters import LlavaAdapter
from llava.model.placeholders import assign_images, drop_positions
from llava.model.pruning import get_llm_pruner

HANDLE_ATTRIBUTE = "fastervlm"  # model.fastervlm: the installed PruningHandle
_WRAPPED = ("forward", "generate")
_ABSENT = object()


@dataclass(frozen=True)
class PrunedInputs:
    """One call's result: model inputs with the pruned placeholders removed, ids / mask / labels (B, L'), the kept
    features per stream key ("image", "video") and item (n_i, D), per sample the visual tokens kept and the [CLS]
    attention of its crops (crops, P) (its images' crops, then its videos' frames)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    labels: torch.Tensor | None
    features: dict[str, list[torch.Tensor]]
    v_token_num: list[int]
    cls_attn: list
    call_inputs: dict = field(default_factory=dict)  # further model inputs of the pruned call (Qwen: position_ids)

    @property
    def image_features(self) -> list[torch.Tensor]:
        """The kept features of each image (n_i, D)."""
        return self.features.get("image", [])


class PruningHandle:
    """What `apply_pruning` installed on one model. `pruning` is the validated `PruningConfig`; `last` is the
    `PrunedInputs` of the last call with images, `last_v_token_num` / `last_cls_attn` its kept visual-token
    count(s) and [CLS] attention in `generate`'s convention; `undo()` restores the model (also on leaving a `with`
    block)."""

    def __init__(self, model: nn.Module, adapter: LlavaAdapter) -> None:
        self.model = model
        self.adapter = adapter
        self.pruning = adapter.pipeline.pruning
        self.image_token_id = model.config.image_token_id
        self.last: PrunedInputs | None = None  # the last call with images (or a text-only generate)
        pruner_class = get_llm_pruner(self.pruning.method)
        self.llm_pruner = pruner_class(model.model.language_model, self.pruning) if pruner_class is not None else None
        self._generating = False
        # Instance attributes shadow the class methods for this model only; whatever the instance had (e.g. an
        # accelerate hook's forward) is wrapped and put back by undo.
        self._saved = {name: model.__dict__.get(name, _ABSENT) for name in _WRAPPED}
        self._wrappers = {"forward": self._wrap(model.forward, self._forward),
                          "generate": self._wrap(model.generate, self._generate)}
        for name, wrapper in self._wrappers.items():
            model.__dict__[name] = wrapper
        model.__dict__[HANDLE_ATTRIBUTE] = self

    @property
    def last_v_token_num(self) -> int | list[int] | None:
        """Visual tokens kept in the last call with images: an int for batch 1, a list per sample (0 without images)."""
        if self.last is None:
            return None
        return self.last.v_token_num[0] if len(self.last.v_token_num) == 1 else self.last.v_token_num

    @property
    def last_cls_attn(self) -> torch.Tensor | list | None:
        """[CLS] attention of the last call's crops: a (crops, P) tensor for batch 1, a list per sample."""
        if self.last is None:
            return None
        return self.last.cls_attn[0] if len(self.last.cls_attn) == 1 else self.last.cls_attn

    @property
    def active(self) -> bool:
        return self.model.__dict__.get(HANDLE_ATTRIBUTE) is self

    def undo(self) -> None:
        """Remove the wrappers and any decoder hooks; the model behaves as before `apply_pruning`. Idempotent."""
        if not self.active:
            return
        for name, wrapper in self._wrappers.items():
            if self.model.__dict__.get(name) is not wrapper:
                raise RuntimeError(f"model.{name} was replaced after apply_pruning; remove that wrapper first, "
                                   f"then undo")
        for name, previous in self._saved.items():
            if previous is _ABSENT:
                del self.model.__dict__[name]
            else:
                self.model.__dict__[name] = previous
        if self.llm_pruner is not None:
            self.llm_pruner.remove()
        del self.model.__dict__[HANDLE_ATTRIBUTE]

    def __enter__(self) -> "PruningHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.undo()

    # -- the pruning itself -------------------------------------------------------------------------------------
    def prepare(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, visual: dict,
                labels: torch.Tensor | None = None) -> PrunedInputs:
        """Processor outputs -> PrunedInputs (and an in-LLM method armed for the next prefill).

        input_ids (B, L) hold each image's / video's placeholders as the processor wrote them; `visual` the pixel
        inputs and sizes as the processor returns them (the adapter's `pixel_keys` / `size_keys`).
        """
        batch = input_ids.shape[0]
        keep = torch.ones_like(input_ids, dtype=torch.bool)
        visual_positions = torch.zeros_like(keep)
        v_token_num, cls_attn, features, empty = [0] * batch, [[] for _ in range(batch)], {}, None
        llm_budgets = [0] * batch  # what an in-LLM method keeps per sample
        for stream in self.adapter.streams(visual):
            placeholders = input_ids == stream.token_id  # (B, L)
            if attention_mask is not None:
                placeholders &= attention_mask.bool()
            owner = assign_images(placeholders.sum(dim=1).tolist(), stream.full)
            keep &= self.adapter.kept_placeholders(placeholders, owner, stream)  # Qwen: the kept tokens' own slots
            visual_positions |= placeholders
            for i, (b, budget) in enumerate(zip(owner, stream.in_llm_budgets(self.pruning.visual_token_num))):
                v_token_num[b] += stream.tokens.counts[i]
                cls_attn[b].append(stream.tokens.cls_attn[i])
                llm_budgets[b] += budget
            features[stream.key] = stream.tokens.embeds
            empty = stream.tokens.cls_attn[0].new_zeros(0, 0)
        cls_attn = [torch.cat(a) if a else empty for a in cls_attn]
        if self.llm_pruner is not None:  # every placeholder stays; the decoder hooks prune after layer K
            v_token_num = self.llm_pruner.arm(visual_positions, llm_budgets)
        ids, mask, new_labels = drop_positions(keep, input_ids, attention_mask, labels, self._pad_id())
        extra = self.adapter.pruned_call_inputs(input_ids, attention_mask, keep, mask, visual)  # Qwen: positions
        return PrunedInputs(ids, mask, new_labels, features, v_token_num, cls_attn, extra)

    def _take_visual(self, kwargs: dict) -> dict:
        """Take the adapter's visual inputs out of a call's keywords: {name: value} of those given."""
        names = self.adapter.pixel_keys + self.adapter.size_keys
        return {name: kwargs.pop(name) for name in names if kwargs.get(name) is not None}

    def _has_pixels(self, kwargs: dict) -> bool:
        return any(kwargs.get(name) is not None for name in self.adapter.pixel_keys)

    def _pad_id(self) -> int:
        pad = self.model.generation_config.pad_token_id
        return pad if isinstance(pad, int) else 0

    # -- the wrapped methods ------------------------------------------------------------------------------------
    @staticmethod
    def _wrap(original, body):
        @functools.wraps(original)  # keeps the signature transformers inspects (mm_encoder_outputs, logits_to_keep)
        def wrapper(*args, **kwargs):
            return body(original, *args, **kwargs)
        return wrapper

    def _forward(self, original, *args, **kwargs):
        if self._generating:  # inside our generate: inputs are already pruned
            return original(*args, **kwargs)
        kwargs = _as_keywords(original, args, kwargs)
        if not self._has_pixels(kwargs) and not kwargs.get("mm_encoder_outputs"):
            if self.llm_pruner is not None and _is_prefill(kwargs):
                self.llm_pruner.disarm()
            return original(**kwargs)
        self._check_inputs(kwargs)
        if kwargs.get("input_ids") is None:
            raise ValueError("pruning needs input_ids (the processor's output), not inputs_embeds")
        if kwargs.get("position_ids") is not None:
            raise ValueError("pass no position_ids with pixel_values: the pruned prompt gets fresh positions")
        pruned = self.prepare(kwargs["input_ids"], kwargs.get("attention_mask"), self._take_visual(kwargs),
                              kwargs.get("labels"))
        self.last = pruned
        kwargs.update(input_ids=pruned.input_ids, attention_mask=pruned.attention_mask, labels=pruned.labels,
                      mm_encoder_outputs=self.adapter.encoder_outputs(pruned.features), **pruned.call_inputs)
        return original(**kwargs)

    def _generate(self, original, *args, **kwargs):
        kwargs = _as_keywords(original, args, kwargs)
        input_ids = kwargs.pop("inputs", None)
        if input_ids is None:
            input_ids = kwargs.pop("input_ids", None)
        if not self._has_pixels(kwargs) and not kwargs.get("mm_encoder_outputs"):  # a text-only prompt
            if self.llm_pruner is not None:
                self.llm_pruner.disarm()
            batch = 1 if input_ids is None else input_ids.shape[0]
            self.last = PrunedInputs(input_ids, None, None, {}, [0] * batch, [None] * batch)
            return original(input_ids, **kwargs)
        self._check_inputs(kwargs)
        if input_ids is None:
            raise ValueError("pruning needs input_ids (the processor's output), not inputs_embeds")
        pruned = self.prepare(input_ids, kwargs.get("attention_mask"), self._take_visual(kwargs))
        self.last = pruned
        kwargs.update(attention_mask=pruned.attention_mask,
                      mm_encoder_outputs=self.adapter.encoder_outputs(pruned.features), **pruned.call_inputs)
        if pruned.attention_mask is None:
            kwargs.pop("attention_mask")
        self._generating = True
        try:
            out = original(pruned.input_ids, **kwargs)
        finally:
            self._generating = False
        return _with_prompt(out, input_ids, pruned.input_ids.shape[1])

    def _check_inputs(self, kwargs: dict) -> None:
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("pruning needs input_ids (the processor's output), not inputs_embeds")
        if kwargs.get("mm_encoder_outputs"):
            raise ValueError("pass pixel_values, not mm_encoder_outputs: pruning needs the tower's [CLS] attention")
        config = self.model.config
        for name in ("vision_feature_layer", "vision_feature_select_strategy"):
            value = kwargs.get(name)
            if value is not None and value != getattr(config, name):
                raise ValueError(f"{name}={value!r} differs from the config ({getattr(config, name)!r}) the pruning "
                                 f"was installed for")


def _as_keywords(function, args: tuple, kwargs: dict) -> dict:
    """Positional arguments of a call to `function` as keywords (its **kwargs flattened in)."""
    if not args:
        return dict(kwargs)
    bound = inspect.signature(function).bind_partial(*args, **kwargs)
    out = dict(bound.arguments)
    for name, parameter in inspect.signature(function).parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            out.update(out.pop(name, {}))
    return out


def _is_prefill(kwargs: dict) -> bool:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return cache is None or cache.get_seq_length() == 0


def _with_prompt(out, input_ids: torch.Tensor, pruned_length: int):
    """generate's output with the caller's unpruned prompt in front of the new tokens (transformers' convention)."""
    sequences = out if isinstance(out, torch.Tensor) else out.sequences
    prompt = input_ids.to(sequences.device)
    prompt = prompt.repeat_interleave(sequences.shape[0] // prompt.shape[0], dim=0)
    full = torch.cat([prompt, sequences[:, pruned_length:]], dim=1)
    if isinstance(out, torch.Tensor):
        return full
    out.sequences = full
    return out
