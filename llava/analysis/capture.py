"""The LLM's attention onto the image tokens of one prompt, gathered without attention maps.

The original analysis asked for ``output_attentions=True``, which forces eager attention and keeps every layer's
(H, S, S) map. Here, at each decoder layer asked for, `QKCapture` keeps the q / k projections and the (cos, sin)
the layer is called with; when its attention module returns, only the query rows asked for are scored onto the
image columns (`llava.model.attention_rows.causal_rows`, float32, in chunks of rows), while the forward itself
keeps SDPA / flash attention. The forward stops after the deepest layer asked for.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass

import torch

from llava.model.attention_rows import QKCapture, apply_rotary, causal_rows, split_heads

# Which query rows a capture computes.
FROM_IMAGE = "from_image"  # every row from the first image token to the last token of the prompt
LAST = "last"  # the last token of the prompt only
QUERY_SETS = (FROM_IMAGE, LAST)


@dataclass(frozen=True)
class ImageSpan:
    """The image tokens' positions [start, stop) in the LLM's input sequence."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


class _StopForward(Exception):
    """Raised after the deepest layer asked for has been scored: the layers after it are not needed."""


def attention_modules(llm, layers: list[int]) -> list:
    """The Llama-style attention modules of the 0-based decoder layers `layers` of `llm` (`model.get_model()`)."""
    decoder = getattr(llm, "layers", None)
    if decoder is None:
        raise TypeError(f"{type(llm).__name__} has no .layers: pass the decoder model (model.get_model())")
    if not layers or min(layers) < 0 or max(layers) >= len(decoder):
        raise ValueError(f"layers {layers} out of range: the LLM has {len(decoder)} layers (0-based indices)")
    modules = [decoder[i].self_attn for i in layers]
    for m in modules:
        missing = [a for a in ("q_proj", "k_proj", "head_dim", "scaling") if not hasattr(m, a)]
        if missing:
            raise TypeError(f"{type(m).__name__} lacks {missing}: only Llama-style attention modules are supported")
    return modules


def _check_inputs(inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, span: ImageSpan,
                  queries: str) -> None:
    if queries not in QUERY_SETS:
        raise ValueError(f"queries must be one of {QUERY_SETS}, got {queries!r}")
    if inputs_embeds.shape[0] != 1 or (attention_mask is not None and not bool(attention_mask.all())):
        raise ValueError("capture_image_attention takes one unpadded prompt (batch 1)")
    seq = inputs_embeds.shape[1]
    if not 0 <= span.start < span.stop <= seq:
        raise ValueError(f"image span [{span.start}, {span.stop}) does not fit a sequence of {seq} tokens")


def capture_image_attention(llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, span: ImageSpan,
                            layers: list[int], queries: str = FROM_IMAGE,
                            chunk_rows: int = 128) -> dict[int, torch.Tensor]:
    """Run the decoder `llm` (``model.get_model()``) on one prompt and return, per layer index in `layers`
    (0-based), the head-mean attention of the `queries` rows onto the image columns: (R, span.size) float32, with
    R = S - span.start rows for FROM_IMAGE, 1 for LAST. Batch 1 without padding only.
    """
    _check_inputs(inputs_embeds, attention_mask, span, queries)
    seq = inputs_embeds.shape[1]
    wanted = sorted(set(layers))
    rows = torch.arange(span.start if queries == FROM_IMAGE else seq - 1, seq, device=inputs_embeds.device)
    result: dict[int, torch.Tensor] = {}

    def score(layer_idx: int, module):
        def after(capture: QKCapture) -> None:
            cos, sin = capture.position_embeddings
            heads, kv_heads = capture.q.shape[-1] // module.head_dim, capture.k.shape[-1] // module.head_dim
            q = apply_rotary(split_heads(capture.q, heads), cos, sin)  # (1, H, S, d)
            k = apply_rotary(split_heads(capture.k, kv_heads), cos, sin)  # (1, KV, S, d)
            capture.clear()
            result[layer_idx] = causal_rows(q, k, rows, slice(span.start, span.stop), module.scaling, chunk_rows)
            if layer_idx == wanted[-1]:
                raise _StopForward
        return after

    with ExitStack() as hooks:
        for idx, attn in zip(wanted, attention_modules(llm, wanted)):
            hooks.enter_context(QKCapture(attn.q_proj, attn.k_proj, attention=attn, after=score(idx, attn)))
        try:
            llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    missing = [i for i in wanted if i not in result]
    if missing:
        raise RuntimeError(f"the attention hooks of layer(s) {missing} did not run")
    return result
