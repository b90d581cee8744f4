"""LLaVA on transformers' Llama: `LlavaLlamaForCausalLM` with FasterVLM pruning before the language model."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from llava.model.llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from llava.model.pruning import PruningConfig


def check_input_ids(input_ids, name: str = "input_ids") -> None:
    """Prompt ids must be an integer tensor (B, L); a list, a 1-D tensor (what `tokenizer_image_token` returns for
    one prompt) or float ids are refused here, with the fix, instead of failing deep inside the model."""
    if input_ids is None:
        return
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.LongTensor (batch, length), got {type(input_ids).__name__}: build "
                        f"it with tokenizer_image_token(prompt, tokenizer, return_tensors=\"pt\").unsqueeze(0)")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.ndim == 1:
        raise ValueError(f"{name} must be (batch, length), got a 1-D tensor of {input_ids.numel()} ids: use "
                         f"ids.unsqueeze(0) (tokenizer_image_token returns one prompt as a 1-D tensor)")
    if input_ids.ndim != 2:
        raise ValueError(f"{name} must be (batch, length), got shape {tuple(input_ids.shape)}")


ASPECT_RATIOS = ("square", "pad", "anyres")  # what LLaVA's process_images does with an image (see mm_utils)
SELECT_FEATURES = ("patch", "cls_patch")
PADDING_SIDES = ("left", "right")
_PROJECTOR_TYPE = re.compile(r"linear|identity|mlp[1-9]\d*x_gelu")


class LlavaConfig(LlamaConfig):
    """Llama config plus LLaVA's `mm_*` fields, declared and checked here (the fields of haotian-liu/LLaVA's
    config.json, llava/train/train.py `ModelArguments`/`DataArguments`, that this package reads).

    mm_vision_tower:          the vision tower's name or path (the loader resolves it to a local directory)
    mm_hidden_size:           the tower's feature width, the projector's input; None: no multimodal modules
    mm_projector_type:        linear, identity or mlp<N>x_gelu (LLaVA-1.5/1.6: mlp2x_gelu)
    mm_vision_select_layer:   the tower layer whose output LLaVA uses (-2: the penultimate)
    mm_vision_select_feature: "patch" (drop [CLS]) or "cls_patch"
    mm_patch_merge_type:      "flat" (LLaVA-1.5) or "spatial_unpad" (LLaVA-1.6), informational: the pruning
                              config's `anyres_mode` decides the anyres merge
    image_aspect_ratio:       "pad" (LLaVA-1.5), "anyres" (LLaVA-1.6), "square" or None (processor resize + crop)
    image_grid_pinpoints:     anyres only: [width, height] canvases in pixels (the loader parses the string form)
    mm_use_im_start_end, mm_use_im_patch_token: extra image tokens in the tokenizer (the loader adds them)
    tokenizer_padding_side, tokenizer_model_max_length: the tokenizer settings the checkpoint was trained with
    Other training-time keys (tune_mm_mlp_adapter, mm_vision_tower_lr, ...) are kept as plain attributes.

    The liuhaotian checkpoints say `model_type: "llava"`, which transformers registers for its own
    `LlavaConfig`; the loader therefore builds this class from config.json directly instead of via AutoConfig.
    transformers 5 configs are dataclasses: the fields below are dataclass fields, checked in `__post_init__`.
    """

    model_type = "llava_llama"

    mm_vision_tower: str | None = None
    mm_hidden_size: int | None = None
    mm_projector_type: str = "linear"
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    mm_patch_merge_type: str = "flat"
    image_aspect_ratio: str | None = None
    image_grid_pinpoints: list | None = None
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    tokenizer_padding_side: str = "right"
    tokenizer_model_max_length: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_multimodal()

    @property
    def is_anyres(self) -> bool:
        """LLaVA-1.6's any-resolution tiling: a base crop plus a grid of crops per image."""
        return self.image_aspect_ratio == "anyres"

    @property
    def is_multimodal(self) -> bool:
        """Whether the checkpoint has a projector (and so takes images)."""
        return self.mm_hidden_size is not None

    def validate_multimodal(self) -> None:
        """Types and values of the `mm_*` fields; a wrong one is named with what is accepted."""
        _check_type("mm_vision_tower", self.mm_vision_tower, str, optional=True)
        _check_type("mm_hidden_size", self.mm_hidden_size, int, optional=True)
        _check_type("mm_vision_select_layer", self.mm_vision_select_layer, int)
        _check_type("tokenizer_model_max_length", self.tokenizer_model_max_length, int, optional=True)
        for name in ("mm_use_im_start_end", "mm_use_im_patch_token"):
            _check_type(name, getattr(self, name), bool)
        if self.mm_hidden_size is not None and self.mm_hidden_size < 1:
            raise ValueError(f"LlavaConfig: mm_hidden_size must be positive, got {self.mm_hidden_size}")
        if not isinstance(self.mm_projector_type, str) or not _PROJECTOR_TYPE.fullmatch(self.mm_projector_type):
            raise ValueError(f"LlavaConfig: unknown mm_projector_type {self.mm_projector_type!r}; supported: linear, "
                             f"identity, mlp<N>x_gelu (e.g. mlp2x_gelu)")
        _check_choice("mm_vision_select_feature", self.mm_vision_select_feature, SELECT_FEATURES)
        _check_choice("image_aspect_ratio", self.image_aspect_ratio, (None, *ASPECT_RATIOS))
        _check_choice("tokenizer_padding_side", self.tokenizer_padding_side, PADDING_SIDES)
        _check_type("mm_patch_merge_type", self.mm_patch_merge_type, str)
        if self.is_anyres:
            _check_pinpoints(self.image_grid_pinpoints)


def _check_type(name: str, value, kind: type, optional: bool = False) -> None:
    if value is None and optional:
        return
    # bool is an int subclass: True is no layer index and no width
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"LlavaConfig: {name} must be {kind.__name__}{' or None' if optional else ''}, got "
                        f"{value!r}")


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"LlavaConfig: unknown {name} {value!r}; expected one of {choices}")


def is_pinpoint(p) -> bool:
    """One anyres canvas: a [width, height] pair of positive ints (bool is no pixel count). Also used by the loader's
    `checkpoint.check_grid_pinpoints`, which parses the string form first and names the config file."""
    return (isinstance(p, (list, tuple)) and len(p) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in p))


def _check_pinpoints(pinpoints) -> None:
    """anyres needs a non-empty list of [width, height] pairs of positive ints (LLaVA-1.6's canvases)."""
    if not isinstance(pinpoints, (list, tuple)) or not pinpoints or not all(is_pinpoint(p) for p in pinpoints):
        raise ValueError(f"LlavaConfig: image_aspect_ratio is anyres, so image_grid_pinpoints must be a non-empty "
                         f"list of [width, height] pairs of positive pixel counts, got {pinpoints!r}")


@dataclass
class LlavaCausalLMOutput(CausalLMOutputWithPast):
    """transformers' causal-LM output plus, for a call with images, per sample the visual tokens kept (spliced, or
    for an in-LLM method kept after its pruning layer) and the [CLS] attention of its crops ((crops, P))."""

    v_token_num: list[int] | None = None
    cls_attn: list[torch.Tensor] | None = None


class LlavaLlamaModel(LlavaMetaModel, LlamaModel):
    config_class = LlavaConfig

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.init_multimodal_modules(config)


class LlavaLlamaForCausalLM(LlavaMetaForCausalLM, LlamaForCausalLM):
    config_class = LlavaConfig
    # LLaVA-1.6 checkpoints carry the vision tower; the loader reads those weights itself (see builder.py).
    _keys_to_ignore_on_load_unexpected = [r"model\.vision_tower\..*"]

    def __init__(self, config: LlamaConfig):
        LlamaForCausalLM.__init__(self, config)
        self.model = LlavaLlamaModel(config)
        self.pruning: PruningConfig | None = None  # set with the vision tower (attach_vision_tower)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        images: torch.Tensor | list | None = None,
        image_sizes: list[tuple[int, int]] | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """Causal LM forward; with `images`, ids holding IMAGE_TOKEN_INDEX are turned into embeddings first.

        With images the batch is re-padded on the left (attention_mask is rebuilt) and labels get IGNORE_INDEX at
        the visual positions; the output is a `LlavaCausalLMOutput` whose `v_token_num` / `cls_attn` give the kept
        visual-token counts and [CLS] attention of the call (lists, per sample).
        `logits_to_keep` is named here so that generate() asks for the last position's logits only.
        With an in-LLM method (FastV) the layers after its pruning point, and the logits, cover the kept positions only.
        """
        self._check_labels(labels)
        check_input_ids(input_ids)
        mm = kept = None
        if images is not None and inputs_embeds is None:
            mm, kept = self._prepare_prompt(input_ids, attention_mask, images, image_sizes, labels)
            inputs_embeds, attention_mask, labels = mm.inputs_embeds, mm.attention_mask, mm.labels
            input_ids, position_ids = None, None
        out = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        if mm is None or not isinstance(out, CausalLMOutputWithPast):
            return out
        return LlavaCausalLMOutput(**out, v_token_num=kept or mm.v_token_num, cls_attn=mm.cls_attn)

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        images: torch.Tensor | list | None = None,
        image_sizes: list[tuple[int, int]] | None = None,
        **kwargs,
    ):
        """Generate from prompt ids (B, L) holding IMAGE_TOKEN_INDEX where `<image>` stood.

        Returns `(output_ids, v_token_num, cls_attn)` as the original FasterVLM:
          output_ids   the NEW tokens only (B, T) (transformers' convention when generating from embeddings), or
                       transformers' GenerateOutput when `return_dict_in_generate=True`;
          v_token_num  visual tokens kept: spliced into the prompt, or for an in-LLM method (FastV) kept after its
                       pruning layer; an int for batch 1, a list of ints for B > 1;
          cls_attn     [CLS] attention of every crop, crops of all images stacked (base crop first for anyres):
                       a (crops, P) tensor for batch 1, a list of such tensors for B > 1.
        Several prompts are left-padded, each keeps its own visual tokens.
        """
        if "input_ids" in kwargs:
            inputs = kwargs.pop("input_ids")
        if kwargs.get("inputs_embeds") is not None:
            raise ValueError("pass prompt ids (with IMAGE_TOKEN_INDEX) and images, not inputs_embeds")
        check_input_ids(inputs)
        attention_mask = kwargs.pop("attention_mask", None)
        kwargs.pop("position_ids", None)
        if images is None:
            return self._generate_text_only(inputs, attention_mask, **kwargs)
        mm, kept = self._prepare_prompt(inputs, attention_mask, images, image_sizes)
        v_counts, cls_attn = kept or mm.v_token_num, mm.cls_attn
        out = super().generate(inputs_embeds=mm.inputs_embeds, attention_mask=mm.attention_mask, **kwargs)
        if len(v_counts) == 1:
            return out, v_counts[0], cls_attn[0]
        return out, v_counts, cls_attn

    def _check_labels(self, labels) -> None:
        """A loss needs logits over every position, which an in-LLM method (FastV) does not keep."""
        if labels is not None and self.llm_pruner is not None:
            raise NotImplementedError(
                f"{self.pruning.method} prunes inside the LLM, so its logits cover the kept positions only; a loss "
                f"over labels is not supported"
            )

    def _prepare_prompt(self, input_ids, attention_mask, images, image_sizes, labels=None):
        """Ids (B, L) with IMAGE_TOKEN_INDEX and images -> (MultimodalInputs, the visual tokens each sample keeps
        inside the LLM or None without an in-LLM method); the context is checked and an in-LLM method armed."""
        mm = self.prepare_multimodal_inputs(input_ids, attention_mask, images, image_sizes, labels)
        self.check_context(mm.attention_mask.sum(dim=1).tolist(), mm.v_token_num)
        return mm, self.start_llm_pruning(mm)

    def _generate_text_only(self, inputs, attention_mask, **kwargs):
        """`generate` without images: ids (B, L) must hold no placeholder; returns (ids, 0, None) for batch 1, else
        (ids, [0] * B, [None] * B)."""
        if inputs is not None and (inputs < 0).any():
            raise ValueError("the prompt holds an <image> placeholder but no images were given")
        if inputs is not None:
            rows, length = inputs.shape
            lengths = [length] * rows if attention_mask is None else attention_mask.sum(dim=1).tolist()
            self.check_context(lengths, [0] * rows)
        embeds = self.get_model().embed_tokens(inputs)
        self.start_llm_pruning(None)
        out = super().generate(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs)
        return (out, 0, None) if inputs.shape[0] == 1 else (out, [0] * inputs.shape[0], [None] * inputs.shape[0])

    def check_context(self, lengths: list[int], visual: list[int]) -> None:
        """The prompt of every sample, text plus spliced visual tokens, must fit the LLM's context
        (`max_position_embeddings`): a longer one runs without error but past the positions the model was trained
        on. lengths / visual: per sample, tokens in all and visual tokens among them."""
        limit = getattr(self.config, "max_position_embeddings", None)
        if not limit:
            return
        for b, (n, v) in enumerate(zip(lengths, visual)):
            if n > limit:
                sample = f"sample {b}: " if len(lengths) > 1 else ""
                raise ValueError(f"{sample}the prompt is {n} tokens ({n - v} text + {v} visual) but the model has a "
                                 f"context of {limit} tokens (max_position_embeddings); shorten the prompt or keep "
                                 f"fewer visual tokens")
