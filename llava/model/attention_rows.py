"""Attention rows without attention maps: q/k capture at one layer, and a few query rows scored against all keys.

Three users need a handful of softmax attention rows while the model itself keeps running with SDPA / flash
attention (which never materialise the (H, L, L) map that `output_attentions=True` would force):
- the vision towers (CLIP, DINOv2): the [CLS] query row of the selected layer (`cls_attention_from_qk`);
- FastV (`llava.model.pruning.fastv`): the last prompt token's row at LLM layer K, after rotary, with the padded
  prompt's mask (`last_query_attention`);
- the attention analyses (`llava.analysis.capture`): causal rows of the prompt onto the image columns
  (`causal_rows`);
- towers without [CLS] (SigLIP, Qwen2.5-VL's ViT): the attention each token *receives*, averaged over every query
  of its attention segment and every head (`received_attention`, blockwise over queries).
All of them capture the layer's query / key projections with `QKCapture` and score with `attention_rows`:
scaling, grouped-query attention (each query head reads its key head), a boolean mask of blocked keys, and the
softmax in float32 (over hundreds of keys fp16/bf16 would lose the small weights that rankings need). Rotary
position embedding is the Llama form (RoFormer, arXiv 2104.09864; transformers' `apply_rotary_pos_emb` in
models/llama/modeling_llama.py): x * cos + rotate_half(x) * sin, with the (cos, sin) the layer itself is given:
Qwen2-VL / Qwen2.5-VL / Qwen3-VL fold their 3-D (M-RoPE) positions into that same (b, T, D) pair before the decoder
layers (transformers 5.x `Qwen2_5_VLRotaryEmbedding.recomposition_frequencies`), so one formula serves them all.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
from transformers.models.llama.modeling_llama import rotate_half


class QKCapture:
    """Forward hooks that keep the latest outputs of one layer's query and key projections.

    q_proj, k_proj: the projection modules; their outputs (B, T, H*D) / (B, T, KV*D) land in `.q` / `.k`.
    attention:      optional attention module: its call's keyword arguments `position_embeddings` ((cos, sin),
                    each (b, T, D)) and `attention_mask` land in `.position_embeddings` / `.attention_mask`.
    after:          optional callback `after(capture)` run when `attention` has returned (it may raise, e.g. to
                    stop the forward early; the hooks still come off when the `with` block is left).
    Used as a context manager the hooks are removed when the block is left, also on an exception; an owner that
    keeps them across forwards (FastV) calls `remove()`. While `active` is False nothing is kept.
    """

    def __init__(self, q_proj: nn.Module, k_proj: nn.Module, attention: nn.Module | None = None,
                 after: Callable[[QKCapture], None] | None = None) -> None:
        if after is not None and attention is None:
            raise ValueError("QKCapture: `after` runs when the attention module returns; pass `attention` too")
        self.q: torch.Tensor | None = None
        self.k: torch.Tensor | None = None
        self.position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
        self.attention_mask: torch.Tensor | None = None
        self.active = True
        self._handles = [q_proj.register_forward_hook(self._keep("q")), k_proj.register_forward_hook(self._keep("k"))]
        if attention is not None:
            self._handles.append(attention.register_forward_pre_hook(self._keep_call, with_kwargs=True))
        if after is not None:
            self._handles.append(attention.register_forward_hook(lambda module, args, output: after(self)))

    def _keep(self, name: str):
        def hook(module, args, output):
            if self.active:
                setattr(self, name, output)
        return hook

    def _keep_call(self, module, args, kwargs):
        if self.active:
            # Llama-style attention takes (hidden_states, position_embeddings, attention_mask, ...)
            positional = args[1] if len(args) > 1 else None
            self.position_embeddings = kwargs.get("position_embeddings", positional)
            self.attention_mask = kwargs.get("attention_mask")

    def clear(self) -> None:
        """Drop the kept tensors (they hold the layer's activations alive)."""
        self.q = self.k = self.position_embeddings = self.attention_mask = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> QKCapture:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, H*D) projections -> (B, H, T, D)."""
    batch, length, width = x.shape
    return x.view(batch, length, num_heads, width // num_heads).transpose(1, 2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x (B, H, T, D) with cos, sin (b, T, D), b in {1, B}; in x's dtype."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)


def allowed_keys(mask: torch.Tensor) -> torch.Tensor:
    """Boolean view of a 4-D attention mask: SDPA's masks are bool, eager's are additive (0 or the dtype's min)."""
    return mask if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min / 2


def attention_rows(q: torch.Tensor, k: torch.Tensor, scale: float, blocked: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention of query rows q (B, H, R, D) over keys k (B, KV, L, D), per head: (B, H, R, L) float32.

    KV divides H (grouped-query attention: query head h reads key head h // (H / KV)); `blocked` is a bool mask
    broadcastable to (B, H, R, L), True where a key is hidden from a query (causal future, padding).
    """
    heads, kv_heads = q.shape[1], k.shape[1]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads do not group evenly over {kv_heads} key heads")
    if kv_heads != heads:
        k = k.repeat_interleave(heads // kv_heads, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) * scale  # (B, H, R, L)
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
    return scores.softmax(dim=-1)


def cls_attention_from_qk(q: torch.Tensor, k: torch.Tensor, num_heads: int, scale: float) -> torch.Tensor:
    """Head-mean attention of token 0 ([CLS]) of a ViT layer over all its keys (no mask, no rotary).

    q, k: (N, T, C) projections of one layer. Returns (N, T) float32; each row sums to 1.
    """
    q_cls = split_heads(q[:, :1], num_heads)  # (N, H, 1, D)
    return attention_rows(q_cls, split_heads(k, num_heads), scale).mean(dim=1).squeeze(1)  # (N, T)


def last_query_attention(q_last: torch.Tensor, keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         num_heads: int, num_kv_heads: int, scale: float,
                         mask: torch.Tensor | None = None) -> torch.Tensor:
    """Head-mean attention of the last query of a decoder layer over all keys, as eager attention computes it.

    q_last (B, 1, H*D) and keys (B, L, KV*D): q_proj / k_proj outputs before rotary; cos, sin (b, L, D) of the
    layer's call; mask: the layer's 4-D mask (b, 1, Lq, L) or None (causal: the last query sees every key).
    Returns (B, L) float32.
    """
    q = apply_rotary(split_heads(q_last, num_heads), cos[:, -1:], sin[:, -1:])  # (B, H, 1, D)
    k = apply_rotary(split_heads(keys, num_kv_heads), cos, sin)  # (B, KV, L, D)
    blocked = None if mask is None else ~allowed_keys(mask[:, :, -1:, :])
    return attention_rows(q, k, scale, blocked).mean(dim=1).squeeze(1)  # (B, L)


def causal_rows(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, columns: slice, scale: float,
                chunk_rows: int = 128) -> torch.Tensor:
    """Head-mean causal attention of the query positions `rows` onto the key positions `columns`.

    q (1, H, S, D) and k (1, KV, S, D) after rotary, one unpadded prompt; rows: ascending positions (R,). Scored
    `chunk_rows` rows at a time, each row's softmax over keys 0..row. Returns (R, columns) float32.
    """
    out = []
    for chunk in rows.split(chunk_rows):
        # Keys after the chunk's last row are hidden from all its rows; the columns asked for are always scored,
        # so a chunk of rows before some of them still gives (c, columns), zeros right of each row.
        top = max(int(chunk[-1]) + 1, columns.stop)
        future = torch.arange(top, device=q.device)[None, :] > chunk[:, None]  # (c, top)
        probs = attention_rows(q[:, :, chunk], k[:, :, :top], scale, future)  # (1, H, c, top)
        out.append(probs[0, :, :, columns].mean(dim=0))  # (c, columns)
    return torch.cat(out)


def _segment_bounds(cu_seqlens: torch.Tensor | list[int] | None, length: int) -> list[int]:
    """cu_seqlens (S + 1,) -> its boundaries as ints, checked: from 0 to `length`, non-decreasing."""
    if cu_seqlens is None:
        return [0, length]
    bounds = [int(x) for x in cu_seqlens]
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != length or any(a > b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"received_attention (llava/model/attention_rows.py): cu_seqlens {bounds} must rise from 0 "
                         f"to the sequence length {length}")
    return bounds


def received_attention(q: torch.Tensor, k: torch.Tensor, cu_seqlens: torch.Tensor | list[int] | None = None,
                       block: int = 1024, scale: float | None = None) -> torch.Tensor:
    """The attention each token receives: for token j of segment [s, e), the mean over heads h and queries i in
    [s, e) of softmax_j(q_hi . k_hj * scale) over the keys of that segment (bidirectional, as in a ViT block).

    q, k: (H, L, d) after any rotary; cu_seqlens: (S + 1,) segment boundaries (Qwen2.5-VL's window / image
    segments), None for one segment; scale: d^-0.5 unless given. Scored `block` queries at a time, so at most
    H x block x segment-length scores exist at once. Returns (L,) float32; each segment's values sum to 1.
    """
    heads, length, dim = q.shape
    scale = dim ** -0.5 if scale is None else scale
    bounds = _segment_bounds(cu_seqlens, length)
    out = torch.zeros(length, dtype=torch.float32, device=q.device)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        if stop == start:
            continue
        keys = k[:, start:stop].float()  # (H, n, d)
        total = torch.zeros(stop - start, dtype=torch.float32, device=q.device)
        for first in range(start, stop, block):
            rows = q[:, first:min(first + block, stop)].float()  # (H, r, d)
            total += ((rows @ keys.transpose(-1, -2)) * scale).softmax(dim=-1).sum(dim=(0, 1))
        out[start:stop] = total / (heads * (stop - start))
    return out
