"""FasterVLM (or any registered pruning method) on a transformers-native LLaVA: one loaded
`LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration` instance, used with its own `AutoProcessor`.

    pruning = apply_pruning(model, method="fastervlm", visual_token_num=58)
    out = model.generate(**processor(images=image, text=prompt, return_tensors="pt"), max_new_tokens=64)
    pruning.last_v_token_num, pruning.last_cls_attn   # kept visual tokens and [CLS] attention of that call
    pruning.undo()                                    # the model is as it was

How. transformers' processor expands each `<image>` into one placeholder token per visual token (576 for
LLaVA-1.5), and the model scatters the image features over those placeholders. `apply_pruning` sets two instance
attributes on this one model, `forward` and `generate` (transformers' classes are not touched; `undo` deletes them):
when pixel values come in, they run our own stages over the model's modules (the CLIP tower with its [CLS] attention
at `vision_feature_layer`, the registered selector, the model's projector, LLaVA-1.6's merge with `image_newline`),
drop the placeholders of the pruned tokens from `input_ids` / `attention_mask` (/ `labels`), and hand the kept
features to the original method as `mm_encoder_outputs`, the hook transformers offers for pre-computed image
features. In-LLM methods (FastV) keep every placeholder and install their decoder hooks on this model's language model.

Conventions:
- `generate` returns the caller's unpruned `input_ids` followed by the new tokens, so `out[:, input_len:]` still
  gives the answer; `max_length` counts the pruned prompt (prefer `max_new_tokens`). A direct `forward` call returns
  logits over the pruned sequence.
- `visual_token_num` is per crop, as everywhere in this package (LLaVA-1.6: base crop and each grid crop).
- LLaVA-1.6 runs in the "upstream" anyres mode only: the processor has already chosen each image's crop grid with
  transformers' rule and counted placeholders for `spatial_unpad` + `image_newline`, so that is the layout pruned
  here (at full budget exactly the model's own). The paper's layout (spatial merge, no unpadding, its grid rule)
  needs different pixels: load the checkpoint with `llava.model.builder.load_pretrained_model(dir,
  anyres_mode="paper")`, which reads llava-hf directories.
- `last_v_token_num` / `last_cls_attn` follow `LlavaLlamaForCausalLM.generate`: an int and a (crops, P) tensor for
  batch 1, lists of them per sample for a batch (0 and None, or an empty (0, 0) tensor, without images).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn as nn

from llava.constants import IGNORE_INDEX
from llava.model.convert_hf import check_supported
from llava.model.llava_arch import GridLayout, LlavaMetaForCausalLM, unpad_window
from llava.model.pruning import PruningConfig, get_llm_pruner

HANDLE_ATTRIBUTE = "fastervlm"  # model.fastervlm: the installed PruningHandle
_WRAPPED = ("forward", "generate")
_ABSENT = object()


@dataclass
class PrunedInputs:
    """Model inputs with the pruned placeholders removed: ids / mask / labels (B, L'), the kept features per image
    (n_i, D), per sample the visual tokens kept and the [CLS] attention of its crops (crops, P)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    labels: torch.Tensor | None
    image_features: list[torch.Tensor]
    v_token_num: list[int]
    cls_attn: list[torch.Tensor]


class _Stages(LlavaMetaForCausalLM):
    """Our encode -> select -> project -> merge stages (`LlavaMetaForCausalLM.visual_tokens`) over the modules of
    one transformers instance, so the kept tokens are chosen and laid out exactly as in our own model tree."""

    unpad_rule = "transformers"  # transformers' processor counted the placeholders with its own unpad rounding

    def __init__(self, model: nn.Module, tower: nn.Module, pruning: PruningConfig, anyres: bool) -> None:
        base = model.model
        self.parts = SimpleNamespace(vision_tower=tower, mm_projector=base.multi_modal_projector,
                                     embed_tokens=model.get_input_embeddings(),
                                     image_newline=getattr(base, "image_newline", None))
        self.config = SimpleNamespace(image_aspect_ratio="anyres" if anyres else None, is_anyres=anyres, anyres_mode="upstream",
                                      image_grid_pinpoints=getattr(model.config, "image_grid_pinpoints", None))
        self.vision_size = model.config.vision_config.image_size
        self.pruning = pruning

    def get_model(self):
        return self.parts

    def get_vision_tower(self):
        return self.parts.vision_tower

    def grid_layout(self, image_size: tuple[int, int]) -> GridLayout:
        """transformers' own grid rule (its pinpoints are (height, width)), which its processor used."""
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

        width, height = image_size
        rows, cols = get_anyres_image_grid_shape([height, width], self.config.image_grid_pinpoints, self.vision_size)
        return GridLayout(cols=cols, rows=rows, side=self.parts.vision_tower.num_patches_per_side)

    def crops(self, image_size: tuple[int, int]) -> int:
        """Crops of one LLaVA-1.6 image: the base crop and its grid."""
        layout = self.grid_layout(image_size)
        return 1 + layout.cols * layout.rows

    def full_tokens(self, image_size: tuple[int, int] | None) -> int:
        """Placeholders the processor wrote for one image: every patch (+ LLaVA-1.6's unpadded grid and newlines)."""
        per_crop = self.parts.vision_tower.num_patches
        if self.config.image_aspect_ratio != "anyres":
            return per_crop
        layout = self.grid_layout(image_size)
        r0, r1, c0, c1 = unpad_window(image_size, layout.rows * layout.side, layout.cols * layout.side,
                                      self.unpad_rule)
        return per_crop + (r1 - r0) * (c1 - c0 + 1)


class PruningHandle:
    """What `apply_pruning` installed on one model. `pruning` is the validated `PruningConfig`; after each call with
    images `last_v_token_num` / `last_cls_attn` hold its kept visual-token count(s) and [CLS] attention; `undo()`
    restores the model (also on leaving a `with` block)."""

    def __init__(self, model: nn.Module, pruning: PruningConfig) -> None:
        from transformers import LlavaNextForConditionalGeneration

        from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

        self.model = model
        self.pruning = pruning
        self.anyres = isinstance(model, LlavaNextForConditionalGeneration)
        self.image_token_id = model.config.image_token_id
        tower = CLIPVisionTower(model.model.vision_tower, select_layer=model.config.vision_feature_layer)
        self.stages = _Stages(model, tower, pruning, self.anyres)
        self.last_v_token_num: int | list[int] | None = None
        self.last_cls_attn: torch.Tensor | list[torch.Tensor] | None = None
        pruner_class = get_llm_pruner(pruning.method)
        self.llm_pruner = pruner_class(model.model.language_model, pruning) if pruner_class is not None else None
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
    def prepare(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pixel_values: torch.Tensor,
                image_sizes=None, labels: torch.Tensor | None = None) -> PrunedInputs:
        """Processor outputs -> PrunedInputs (and an in-LLM method armed for the next prefill).

        input_ids (B, L) hold each image's placeholders as the processor wrote them; pixel_values: (images, 3, S, S)
        for LLaVA-1.5, (images, crops, 3, S, S) (padded) or all crops (N, 3, S, S) for LLaVA-1.6, with image_sizes
        (images, 2) as (height, width).
        """
        sizes = self._image_sizes(image_sizes)
        visual = self.stages.visual_tokens(self._crops(pixel_values, sizes), sizes)
        full = [self.stages.full_tokens(s) for s in (sizes or [None] * len(visual.embeds))]
        placeholders = input_ids == self.image_token_id  # (B, L)
        if attention_mask is not None:
            placeholders &= attention_mask.bool()
        owner = _assign_images(placeholders.sum(dim=1).tolist(), full)
        mine = [[i for i, o in enumerate(owner) if o == b] for b in range(input_ids.shape[0])]
        keep = ~placeholders
        for b, images in enumerate(mine):
            spots, start = placeholders[b].nonzero().flatten(), 0
            for i in images:  # image i owns the next full[i] placeholders; its n_i kept tokens take the first ones
                keep[b, spots[start:start + visual.counts[i]]] = True
                start += full[i]
        cls_attn = [torch.cat([visual.cls_attn[i] for i in m]) if m else visual.cls_attn[0].new_zeros(0, 0)
                    for m in mine]
        v_token_num = [sum(visual.counts[i] for i in m) for m in mine]
        if self.llm_pruner is not None:  # every placeholder stays; the decoder hooks prune after layer K
            budgets = [self.pruning.visual_token_num * a.shape[0] for a in cls_attn]
            v_token_num = self.llm_pruner.arm(placeholders, budgets)
        ids, mask, new_labels = _drop_positions(keep, input_ids, attention_mask, labels, self._pad_id())
        return PrunedInputs(ids, mask, new_labels, visual.embeds, v_token_num, cls_attn)

    def _image_sizes(self, image_sizes) -> list[tuple[int, int]] | None:
        """(width, height) per image for LLaVA-1.6 (transformers passes (height, width)); None for LLaVA-1.5."""
        if not self.anyres:
            return None
        if image_sizes is None:
            raise ValueError("LLaVA-1.6 (LlavaNext) needs image_sizes, as its processor returns them")
        return [(int(w), int(h)) for h, w in torch.as_tensor(image_sizes).tolist()]

    def _crops(self, pixel_values: torch.Tensor, sizes) -> list[torch.Tensor] | torch.Tensor:
        if not self.anyres:
            return pixel_values
        crops = [self.stages.crops(s) for s in sizes]
        if pixel_values.ndim == 5:  # (images, max crops, 3, S, S), padded with empty crops
            return [p[:n] for p, n in zip(pixel_values, crops)]
        return list(pixel_values.split(crops))

    def _pad_id(self) -> int:
        pad = self.model.generation_config.pad_token_id
        return pad if isinstance(pad, int) else 0

    def _record(self, v_token_num: list[int], cls_attn: list) -> None:
        single = len(v_token_num) == 1
        self.last_v_token_num = v_token_num[0] if single else v_token_num
        self.last_cls_attn = cls_attn[0] if single else cls_attn

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
        if kwargs.get("pixel_values") is None and not kwargs.get("mm_encoder_outputs"):
            if self.llm_pruner is not None and _is_prefill(kwargs):
                self.llm_pruner.disarm()
            return original(**kwargs)
        self._check_inputs(kwargs)
        if kwargs.get("input_ids") is None:
            raise ValueError("pruning needs input_ids (the processor's output), not inputs_embeds")
        if kwargs.get("position_ids") is not None:
            raise ValueError("pass no position_ids with pixel_values: the pruned prompt gets fresh positions")
        pruned = self.prepare(kwargs["input_ids"], kwargs.get("attention_mask"), kwargs.pop("pixel_values"),
                              kwargs.pop("image_sizes", None), kwargs.get("labels"))
        self._record(pruned.v_token_num, pruned.cls_attn)
        kwargs.update(input_ids=pruned.input_ids, attention_mask=pruned.attention_mask, labels=pruned.labels,
                      mm_encoder_outputs=_encoder_outputs(pruned.image_features))
        return original(**kwargs)

    def _generate(self, original, *args, **kwargs):
        kwargs = _as_keywords(original, args, kwargs)
        input_ids = kwargs.pop("inputs", None)
        if input_ids is None:
            input_ids = kwargs.pop("input_ids", None)
        pixel_values = kwargs.pop("pixel_values", None)
        if pixel_values is None and not kwargs.get("mm_encoder_outputs"):  # a text-only prompt
            if self.llm_pruner is not None:
                self.llm_pruner.disarm()
            batch = 1 if input_ids is None else input_ids.shape[0]
            self._record([0] * batch, [None] * batch)
            return original(input_ids, **kwargs)
        self._check_inputs(kwargs)
        if input_ids is None:
            raise ValueError("pruning needs input_ids (the processor's output), not inputs_embeds")
        pruned = self.prepare(input_ids, kwargs.get("attention_mask"), pixel_values, kwargs.pop("image_sizes", None))
        self._record(pruned.v_token_num, pruned.cls_attn)
        kwargs.update(attention_mask=pruned.attention_mask, mm_encoder_outputs=_encoder_outputs(pruned.image_features))
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


def apply_pruning(model: nn.Module, method: str = "fastervlm", visual_token_num: int | None = None, *,
                  anyres_mode: str = "upstream", seed: int = 0, llm_layer: int = 2) -> PruningHandle:
    """Prune the visual tokens of one transformers `LlavaForConditionalGeneration` /
    `LlavaNextForConditionalGeneration` instance; returns the `PruningHandle` (also `model.fastervlm`).

    method:           a name in `llava.model.pruning.METHODS` (fastervlm, random, uniform, visionzip, vispruner, fastv)
    visual_token_num: tokens kept per crop (None: all of them, e.g. to read the [CLS] attention only)
    anyres_mode:      LLaVA-1.6: "upstream" only (see the module docstring); ignored for LLaVA-1.5
    seed, llm_layer:  as in `PruningConfig` (random's seed; FastV's layer K)
    Applying again replaces the previous pruning of this model.
    """
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    if not isinstance(model, (LlavaForConditionalGeneration, LlavaNextForConditionalGeneration)):
        raise TypeError(f"apply_pruning takes a transformers LlavaForConditionalGeneration or "
                        f"LlavaNextForConditionalGeneration, got {type(model).__name__}")
    check_supported(model.config, type(model).__name__)
    if isinstance(model, LlavaNextForConditionalGeneration) and anyres_mode != "upstream":
        raise ValueError(
            f"anyres_mode={anyres_mode!r}: on a transformers LlavaNext model only 'upstream' is supported, because "
            f"its processor already tiled each image with transformers' grid rule and wrote the placeholders of the "
            f"spatial_unpad + image_newline layout. For the paper's layout load the directory with "
            f"llava.model.builder.load_pretrained_model(path, anyres_mode='paper'), which reads llava-hf checkpoints"
        )
    vision = model.config.vision_config
    per_crop = (vision.image_size // vision.patch_size) ** 2
    pruning = PruningConfig(method=method, visual_token_num=per_crop if visual_token_num is None else visual_token_num,
                            tokens_per_crop=per_crop, anyres_mode=anyres_mode, seed=seed, llm_layer=llm_layer)
    previous = model.__dict__.get(HANDLE_ATTRIBUTE)
    if previous is not None:
        previous.undo()
    return PruningHandle(model, pruning)


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
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


def _assign_images(placeholders: list[int], full: list[int]) -> list[int]:
    """The sample each image belongs to: images fill the samples' placeholders in order. Raises when the counts do
    not add up (a prompt not made by this model's processor, or images and prompts that do not match)."""
    owner = []
    for b, n in enumerate(placeholders):
        while n > 0 and len(owner) < len(full) and full[len(owner)] <= n:
            n -= full[len(owner)]
            owner.append(b)
        if n:
            break
    if len(owner) != len(full) or sum(placeholders) != sum(full):
        raise ValueError(
            f"the prompts hold {placeholders} image placeholder tokens per sample, but the {len(full)} image(s) need "
            f"{full} each: build the inputs with this model's processor (one <image> per image, same image sizes)"
        )
    return owner


def _drop_positions(keep: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    labels: torch.Tensor | None, pad_id: int):
    """Rows of ids / mask / labels (B, L) without the positions where `keep` is False, re-padded to one length on
    the side the input was padded on (left unless some row ends in padding)."""
    rows = [keep[b] for b in range(keep.shape[0])]
    lengths = [int(r.sum()) for r in rows]
    longest = max(lengths)
    if attention_mask is None and len(set(lengths)) == 1:
        return input_ids[keep].view(len(rows), longest), None, (
            None if labels is None else labels[keep].view(len(rows), longest))
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    left = not bool((mask[:, -1] == 0).any())

    def pad(x: torch.Tensor, fill: int) -> torch.Tensor:
        out = x.new_full((len(rows), longest), fill)
        for b, (r, n) in enumerate(zip(rows, lengths)):
            if left:
                out[b, longest - n:] = x[b][r]
            else:
                out[b, :n] = x[b][r]
        return out

    return pad(input_ids, pad_id), pad(mask, 0), None if labels is None else pad(labels, IGNORE_INDEX)


def _encoder_outputs(image_features: list[torch.Tensor]) -> dict:
    """The kept features in the form transformers' Llava models take pre-computed image features."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    return {"image": BaseModelOutputWithPooling(pooler_output=image_features)}


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
