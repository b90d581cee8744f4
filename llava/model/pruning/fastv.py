"""FastV: prune visual tokens inside the language model after layer K.

Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for Large
Vision-Language Models", ECCV 2024 (arXiv 2403.06764); code: github.com/pkunlp-icler/FastV
(inplace: the `fast_v_inplace` branch of `LlamaModel.forward` in
`src/transformers/src/transformers/models/llama/modeling_llama.py`, run with use_cache=False by
`src/FastV/inference/eval/inference_aokvqa.py`; static KV-cache pruning: `LlamaModel.fastv_forward` in
`src/FastV/llava-hf/transformers/src/transformers/models/llama/modeling_llama.py`, README "Support KV Cache").

The rule, as the public code applies it (its defaults: K = 2, keep R = 50% of the 576 image tokens):
- layers 1..K (0-based 0..K-1) run on the whole prompt;
- the attention map of layer K (0-based K-1), averaged over heads, ranks the image tokens by the attention **the last
  prompt token** pays them (`last_layer_attention_avg[-1]`);
- the top `ATTENTION_RANK` image tokens are kept, every text token is kept, order is unchanged, and layers K+1.. run
  on the kept tokens only, at their original positions; with a KV cache (the llava-hf variant), those layers' caches
  hold only the kept tokens and every generated token attends to the same kept image tokens.
Here the number kept is the budget of `PruningConfig`: `visual_token_num` x crops of each image (LLaVA-1.6: per crop,
as every other method). Kept tokens keep their original positions (RoPE), so the pruned forward equals re-running
layers K+1.. on the kept tokens of the full forward (tests/test_fastv.py checks exactly that).

Where this departs from the public code (tests/test_baseline_oracles.py compares kept positions and pruned-prefill
logits with an oracle of its inplace forward on a transformers Llama; cache-less greedy decoding equals it too):
- a batch: the public code ranks every sample by sample 0's attention (`mean(dim=1)[0]`) and applies one set of
  positions to the whole batch; here each sample is ranked by its own attention, so a batch equals its batch-1 runs;
- padding: after layer K the public code builds a plain causal mask (no padding) and uses the kept positions of
  sample 0 as position ids; here the padded prompt's own mask and position ids are sliced per sample;
- image position: the public code takes a fixed slice (`fast_v_sys_length`, `fast_v_image_token_length`: one image
  right after the system prompt); here the visual tokens are wherever the prompt puts them (several images and
  LLaVA-1.6 crops are ranked together, keeping budget x crops of them);
- decoding: with a KV cache (the default of `generate`) ours is the public static KV-cache pruning (the prefill's
  ranking by the last prompt token holds for the whole answer; tests/test_fastv.py). The public inplace evaluation
  runs with use_cache=False, so each new token re-ranks the image tokens over a full recomputation; ours without a
  cache does the same (greedy tokens equal the oracle's). The two modes give different answers after the first token;
- scores in float32 (the public code averages eager attention probabilities in the model's dtype).

Only the scores FastV needs are computed: the layer-K query of the last token against all keys (q_proj / k_proj
outputs captured by hooks, RoPE applied here: `llava.model.attention_rows`), so the decoder keeps running with SDPA
(or eager). Memory-efficient kernels never materialise the attention map FastV's public code reads (it needs eager
attention + output_attentions).

Any transformers decoder (Llama, Qwen2, the Qwen2.5-VL / Qwen3-VL text models): the ranking query / key are the
outputs of the modules right before rotary (`query_key_modules`: q_proj / k_proj, or Qwen3's per-head q_norm /
k_norm), rotated with the (cos, sin) the scoring layer is called with. Qwen2.5-VL's M-RoPE (3-D position ids,
temporal / height / width frequency sections) reaches the layers as one such (b, L, D) pair, already recomposed by
the model's rotary module, so nothing is recomputed from 1-D positions; after pruning, the kept tokens get that
pair's rows at their positions (their 3-D rotary unchanged; tests/test_fastv_mrope.py). Qwen3-VL adds deepstack
features to the visual tokens after its first layers: with K inside those layers the visual mask no longer fits the
pruned sequence, which the Qwen3-VL adapter has to handle (not done here).

Mechanics (transformers 5.x): `LlamaModel.forward` builds one causal mask and one (cos, sin) pair for the full
sequence from layer 0's cache length, and hands them to every layer; each `DynamicCache` layer is separate. So the
pre-hook of layer K+1 (0-based K) gathers the hidden states, (cos, sin), position ids and the mask at the kept
positions, and every later layer gets the same sliced arguments. In decode steps only the mask's key axis needs
mapping: layers <= K see all prompt keys, layers > K only the kept ones plus the generated tokens.
Limits: sdpa / eager attention and DynamicCache; batches whose samples drop different numbers of visual tokens
(LLaVA-1.6 images with different crop grids) raise NotImplementedError; no training (labels) through pruned layers.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers.cache_utils import DynamicCache

from llava.model.attention_rows import QKCapture, last_query_attention
from llava.model.pruning.llm import LLMPruner

SUPPORTED_ATTENTION = ("sdpa", "eager")


def _take(x: torch.Tensor, index: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x (b, L, ...) with b in {1, B}, index (B, k) -> x at those positions of axis `dim`, (B, k, ...)."""
    batch = index.shape[0]
    x = x.expand(batch, *x.shape[1:])
    shape = [1] * x.ndim
    shape[0], shape[dim] = batch, index.shape[1]
    expanded = list(x.shape)
    expanded[dim] = index.shape[1]
    return x.gather(dim, index.view(shape).expand(expanded))


def query_key_modules(attn: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The modules whose outputs are the layer's queries / keys just before rotary: the per-head RMSNorms where the
    attention has them (Qwen3, Qwen3-VL text: `q_norm(q_proj(x))`), else the projections (Llama, Qwen2, Qwen2.5-VL)."""
    if getattr(attn, "q_norm", None) is not None and getattr(attn, "k_norm", None) is not None:
        return attn.q_norm, attn.k_norm
    return attn.q_proj, attn.k_proj


def choose_kept(attention: torch.Tensor, visual_mask: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Positions that stay after pruning: every non-visual position and the `keep[b]` visual positions with the
    highest attention, ascending. attention, visual_mask (B, L) -> (B, L - dropped)."""
    keep_mask = ~visual_mask
    scores = attention.masked_fill(~visual_mask, float("-inf"))
    for b, k in enumerate(keep):
        if k:
            keep_mask[b, scores[b].topk(k).indices] = True
    counts = keep_mask.sum(dim=1)
    if not bool((counts == counts[0]).all()):
        raise NotImplementedError(
            f"FastV in a batch whose samples keep different numbers of tokens ({counts.tolist()}) is not supported; "
            f"use batch size 1"
        )
    return keep_mask.nonzero()[:, 1].view(attention.shape[0], -1)


class FastV(LLMPruner):
    """Installed on one model's decoder stack; see the module docstring. `last_attention` (B, L) holds the ranking
    attention of the latest pruned prefill, `kept` its kept positions (B, L')."""

    def __init__(self, llm: nn.Module, pruning) -> None:
        super().__init__(llm, pruning)
        layers, config = llm.layers, llm.config
        k = pruning.llm_layer
        if not 1 <= k < len(layers):
            raise ValueError(
                f"FastV llm_layer={k} must be between 1 and {len(layers) - 1}: this language model has "
                f"{len(layers)} decoder layers and FastV needs at least one layer after the pruning point"
            )
        if config._attn_implementation not in SUPPORTED_ATTENTION:
            raise NotImplementedError(
                f"FastV supports {SUPPORTED_ATTENTION} attention, the model uses {config._attn_implementation!r}; "
                f"load it with attn_implementation='sdpa'"
            )
        attn = layers[k - 1].self_attn
        self.layer = k
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.scaling = attn.scaling
        self.kept: torch.Tensor | None = None  # (B, L') positions kept by the latest pruned prefill
        self.last_attention: torch.Tensor | None = None
        self._prefill_len = 0
        self._prefill = False
        self._scoring: tuple | None = None  # (request, position_embeddings, mask) while layer K runs
        self._qk = QKCapture(*query_key_modules(attn))  # active only while a pruned prefill runs layer K
        self._qk.active = False
        self._step: dict | None = None  # arguments of layers > K for the current forward
        self._handles = [
            layers[k - 1].register_forward_pre_hook(self._before_scoring_layer, with_kwargs=True),
            layers[k].register_forward_pre_hook(self._before_first_pruned_layer, with_kwargs=True),
            *[layer.register_forward_pre_hook(self._before_later_layer, with_kwargs=True) for layer in layers[k + 1:]],
            self._qk,  # `remove()` takes its hooks off with the others
        ]

    def arm(self, visual_mask: torch.Tensor, budgets: list[int]) -> list[int]:
        keep = super().arm(visual_mask, budgets)
        dropped = {n - k for n, k in zip(visual_mask.sum(dim=1).tolist(), keep)}
        if len(dropped) > 1:  # the pruned sequences would have different lengths
            self.disarm()
            raise NotImplementedError(
                f"FastV in a batch whose samples drop different numbers of visual tokens ({sorted(dropped)}, e.g. "
                f"LLaVA-1.6 images with different crop grids) is not supported; use batch size 1"
            )
        return keep

    # -- hooks ---------------------------------------------------------------------------------------------------
    def _before_scoring_layer(self, module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and not isinstance(cache, DynamicCache):
            raise NotImplementedError(f"FastV needs a DynamicCache (per-layer lengths), got {type(cache).__name__}")
        self._prefill = cache is None or cache.get_seq_length(self.layer) == 0
        self._step, self._scoring = None, None
        self._qk.active = False
        if not self._prefill:
            return None
        self.kept = None
        request = self._armed
        length = (args[0] if args else kwargs["hidden_states"]).shape[1]
        if request is None or length < request.visual_mask.shape[1]:
            return None
        if cache is not None:
            self._armed = None  # consumed: decode steps reuse `kept`; without a cache every forward re-ranks
        self._scoring = (request, kwargs["position_embeddings"], kwargs.get("attention_mask"))
        self._qk.active = True
        return None

    def _before_first_pruned_layer(self, module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        if self._scoring is not None:
            kept = self._prune_prefill(hidden, kwargs)
            hidden = _take(hidden, kept)
        elif not self._prefill and self.kept is not None:
            self._step = self._decode_step(hidden, kwargs)
        if self._step:
            kwargs.update(self._step)
        return (hidden, *args[1:]), kwargs

    def _before_later_layer(self, module, args, kwargs):
        if not self._step:
            return None
        kwargs.update(self._step)
        return args, kwargs

    # -- the two cases -------------------------------------------------------------------------------------------
    def _prune_prefill(self, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
        request, (cos, sin), mask = self._scoring
        self._scoring = None
        q, k = self._qk.q[:, -1:].flatten(2), self._qk.k.flatten(2)  # per-head norm outputs are (B, L, H, D)
        self._qk.active = False
        self._qk.clear()
        visual, keep = request.visual_mask.to(hidden.device), request.keep
        if visual.shape[0] != hidden.shape[0]:  # generate() expanded the batch (beams): rows repeat per sample
            repeat = hidden.shape[0] // visual.shape[0]
            visual, keep = visual.repeat_interleave(repeat, dim=0), [k for k in keep for _ in range(repeat)]
        length = hidden.shape[1]
        if visual.shape[1] < length:  # cache-less generation: tokens generated after the prompt are text
            visual = torch.nn.functional.pad(visual, (0, length - visual.shape[1]))
        attention = last_query_attention(q, k, cos, sin, self.num_heads, self.num_kv_heads, self.scaling, mask)
        kept = choose_kept(attention, visual, keep)
        self.kept, self.last_attention, self._prefill_len = kept, attention, length

        step = {"position_embeddings": (_take(cos, kept), _take(sin, kept))}
        if kwargs.get("position_ids") is not None:
            step["position_ids"] = _take(kwargs["position_ids"], kept)
        if mask is not None:  # (b, 1, L, L) -> (B, 1, L', L'); None stays None: SDPA's causal flag fits the kept order
            step["attention_mask"] = _take(_take(mask, kept, dim=2), kept, dim=3)
        self._step = step
        return kept

    def _decode_step(self, hidden: torch.Tensor, kwargs: dict) -> dict:
        """New tokens attend to the kept prompt tokens and to every token generated since (mask key axis only)."""
        mask = kwargs.get("attention_mask")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        kept = self.kept.to(hidden.device)
        # layer 0 (unpruned) has already cached this step's tokens: its length is the full key length
        kv_full = mask.shape[-1] if mask is not None else cache.get_seq_length(0)
        generated = torch.arange(self._prefill_len, kv_full, device=kept.device)
        columns = torch.cat([kept, generated.expand(kept.shape[0], -1)], dim=1)
        if columns.shape[1] != cache.get_seq_length(self.layer) + hidden.shape[1]:
            raise RuntimeError(
                "FastV: this cache does not continue the pruned prompt it was built for (reuse of a cache across "
                "prompts?); start a new generation"
            )
        if mask is None:
            return {}
        return {"attention_mask": _take(mask, columns, dim=3)}
