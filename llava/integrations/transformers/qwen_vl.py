"""The Qwen-VL family base of `apply_pruning` (transformers' `Qwen2_5_VLForConditionalGeneration`, and Qwen3-VL by
subclassing): visual tokens are selected after the 2x2 patch merger (Qwen's projector), per image and per temporal
frame group of a video, and every kept token keeps the rotary position it had in the unpruned prompt.

Token layout (transformers 5.x `processing_qwen2_5_vl.py` / `image_processing_qwen2_vl.py`): an image of grid
(t, h, w) patches (t = 1 for an image, t = frames / temporal_patch_size for a video) gives t * h * w / 4 merged
tokens, one `<|image_pad|>` (`<|video_pad|>`) placeholder each, in (t, h/2, w/2) raster order. A frame group is one
t index: h * w / 4 tokens. `visual_token_num` is the budget of merged (LLM) tokens kept per image and per frame
group; an image or frame group with fewer tokens than the budget keeps all of them (`last_v_token_num` reports the
real counts; `visual_token_num=None` keeps everything). FastV keeps every token up to its LLM layer K and then
`visual_token_num` x (frame groups) of each sample's visual tokens, ranked together (its rule across crops).

Positions are kept, not recomputed. The model's own `get_rope_index` is run on the UNPRUNED prompt (with the
processor's grid_thw, mm_token_type_ids, attention_mask and second_per_grid_ts), the pruned placeholders' columns are
dropped from those 3-D position ids (and from mm_token_type_ids), and the rest is passed explicitly as
`position_ids` (transformers' 4-row form: the pruned sequence's own 1-D text row for the causal mask, then the kept
temporal / height / width rows). So a kept visual token is rotated exactly as in the full prompt, and the text after
the image keeps its own positions, i.e. the gap of the dropped tokens stays. Decoding continues from there:
`generate` extends each row by +1 from the prompt's last column, as it does for the unpruned model, and a direct
decode step through the cache (no position ids) uses `model.model.rope_deltas`, set per sample to
max position + 1 - kept prompt length (counting real tokens only, so left padding works as in transformers), i.e.
it continues at the unpruned prompt's max position + 1. At full budget every call equals the unmodified model.

What the peers do (their stored public code, read 2026-11): none has a Qwen2.5-VL path. VisionZip
(dvlab-research/VisionZip: `llava/model/llava_arch.py`, `clip_encoder.py`), VisPruner (Theia-4869/VisPruner, README:
LLaVA-1.5 / 1.6 checkpoints) and DivPrune (vbdi/divprune, README: LLaVA-1.5 through lmms-eval) prune before the LLM
in LLaVA's `prepare_inputs_labels_for_multimodal`, which splices the kept tokens into a new sequence with consecutive
1-D positions: positions are recomputed, the gap closes. FastV (pkunlp-icler/FastV, see llava/model/pruning/fastv.py)
prunes inside a Llama LLM and keeps the kept tokens' original 1-D positions. Keeping the positions is FastV's choice
carried to M-RoPE: every kept token is rotated exactly as in the full prompt.

If the call has no `mm_token_type_ids` (the processor returns them), they are built from the placeholders; the
unmodified transformers model would then fall back to 1-D positions, so only calls with them equal it at full budget.

Hooks a subclass (Qwen3-VL, llava/integrations/transformers/qwen3_vl.py) may override:
- `check_config(config, what)`: refuse settings not handled;
- `run_tower(pixels, grid_thw, needs_received) -> TowerItems`: the merged features per item (n_i, D), per item a list
  of further (n_i, ...) tensors pruned with the same kept set (`extras`, e.g. deepstack features), and the
  attention-received score per merged token (n_i,) when `needs_received`;
- `score_block()` / `window_order(grid_thw)`: the vision block whose attention is scored and the order its tokens
  are in (Qwen2.5-VL: window order; identity where there is no window attention);
- `encoder_output(kept, extras) -> BaseModelOutputWithPooling`: how the kept features go back as
  `mm_encoder_outputs` (Qwen3-VL adds the kept deepstack features);
- `rope_index(input_ids, type_ids, visual, attention_mask) -> (3, B, L)`: the unpruned prompt's 3-D positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from llava.integrations.transformers.adapters import VisualStream, check_tower_supports
from llava.model.attention_rows import QKCapture, received_attention
from llava.model.pipeline import VisualTokens
from llava.model.pruning import PruningConfig, get_llm_pruner, get_selector

NO_BOUND = 2**31 - 1  # `tokens_per_crop` of a Qwen model: images have any size; the budget caps at each item's count
TEXT, IMAGE, VIDEO = 0, 1, 2  # mm_token_type_ids values (processing_qwen2_5_vl.py)


class QwenVisionTower:
    """What `check_tower_supports` reads of the Qwen vision model: it has no [CLS] token."""

    has_cls = False

    def __init__(self, visual: nn.Module) -> None:
        self.visual = visual


@dataclass
class TowerItems:
    """One call of the vision model, per item (image or video): merged features (n_i, D), further per-token tensors
    pruned with the same kept set (each (n_i, ...)), and the attention-received score per merged token (n_i,)."""

    features: list[torch.Tensor]
    extras: list[list[torch.Tensor]] = field(default_factory=list)
    received: list[torch.Tensor] | None = None


class QwenPipeline:
    """Selection per frame group over merged tokens (no nn.Module: it only holds the validated `PruningConfig`)."""

    def __init__(self, pruning: PruningConfig) -> None:
        self.pruning = pruning

    def select(self, features: torch.Tensor, received: torch.Tensor | None) -> torch.Tensor:
        """One item's frame groups: features (t, n, D), received (t, n) or None -> kept indices (t, m), ascending,
        m = min(budget, n); all n for an in-LLM method (FastV prunes inside the LLM)."""
        n = features.shape[1]
        in_llm = get_llm_pruner(self.pruning.method) is not None
        budget = n if in_llm else min(self.pruning.visual_token_num, n)
        # The selectors that need no [CLS] read only the score tensor's shape and, for random's per-image seed, its
        # content: they get each token's feature norm, as NoClsPipeline does for SigLIP.
        norms = features.float().norm(dim=-1)
        selector = get_selector(self.pruning.method)
        extra = {"received": received} if "received" in getattr(selector, "needs", ()) else {}
        keep = selector(features, norms, budget, seed=self.pruning.seed, **extra)
        return torch.as_tensor(keep if isinstance(keep, torch.Tensor) else keep.keep, device=features.device)


class QwenVLAdapter:
    """The Qwen-VL base adapter (see the module docstring). Visual inputs: pixel_values (patches, C) with
    image_grid_thw (images, 3); pixel_values_videos with video_grid_thw (videos, 3) and second_per_grid_ts."""

    pixel_keys = ("pixel_values", "pixel_values_videos")
    size_keys = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts", "mm_token_type_ids")

    def __init__(self, model: nn.Module, pruning: PruningConfig) -> None:
        self.model = model
        self.tower = QwenVisionTower(model.model.visual)
        check_tower_supports(self.tower, pruning.method, type(model).__name__)
        self.pipeline = QwenPipeline(pruning)
        self.merge_unit = model.config.vision_config.spatial_merge_size ** 2
        self.kept_extras: dict[str, list[list[torch.Tensor]]] = {}  # the last call's kept extras per stream key
        self.received_block = 1024  # queries scored at once for attention_received

    # -- settings -----------------------------------------------------------------------------------------------
    @staticmethod
    def tokens_per_crop(config) -> int:
        """No fixed count per image (dynamic resolution): the budget is only bounded by each item's tokens."""
        return NO_BOUND

    @staticmethod
    def check_config(config, what: str) -> None:
        """Nothing to refuse for Qwen2.5-VL: every setting of the class is handled."""

    @staticmethod
    def check_mode(anyres_mode: str) -> None:
        """Qwen has no anyres crops: the mode is ignored."""

    # -- the vision model ---------------------------------------------------------------------------------------
    def score_block(self) -> int:
        """The vision block whose attention `attention_received` reads."""
        raise NotImplementedError("QwenVLAdapter.score_block: a subclass names the scored vision block")

    def window_order(self, grid_thw: torch.Tensor) -> torch.Tensor:
        """Merged-token order of the scored block's hidden states: position i holds merged token order[i]."""
        return torch.arange(int(grid_thw.prod(-1).sum()) // self.merge_unit)

    def run_tower(self, pixels: torch.Tensor, grid_thw: torch.Tensor, needs_received: bool) -> TowerItems:
        """pixels (patches, C), grid_thw (items, 3) -> TowerItems (see `TowerItems`)."""
        visual = self.model.model.visual
        counts = (grid_thw.prod(-1) // self.merge_unit).tolist()
        attn = visual.blocks[self.score_block()].attn if needs_received else None
        capture = QKCapture(attn.qkv, attn.qkv, attn) if attn is not None else None
        try:
            with torch.no_grad():
                merged = visual(pixels.to(visual.dtype), grid_thw=grid_thw).pooler_output
            received = self.received(capture, grid_thw) if capture is not None else None
        finally:
            if capture is not None:
                capture.remove()
        return TowerItems(list(merged.split(counts)), [[] for _ in counts],
                          None if received is None else list(received.split(counts)))

    def received(self, capture: QKCapture, grid_thw: torch.Tensor) -> torch.Tensor:
        """The captured block's attention received by each patch within its frame group (the full-attention
        segments), summed over the patches of each merged token, in raster order -> (merged tokens,) float32."""
        attn = self.model.model.visual.blocks[self.score_block()].attn
        qkv = capture.q  # (L, 3 * dim), the block's tokens in window order
        length = qkv.shape[0]
        q, k, _ = qkv.reshape(length, 3, attn.num_heads, -1).unbind(1)  # (L, H, d) each
        cos, sin = (x.float().unsqueeze(-2) for x in capture.position_embeddings)  # rotary as the block applies it
        q, k = (_rotate(x.float(), cos, sin).transpose(0, 1) for x in (q, k))  # (H, L, d)
        frames = torch.repeat_interleave(grid_thw[:, 1] * grid_thw[:, 2], grid_thw[:, 0])
        bounds = torch.cat([frames.new_zeros(1), frames.cumsum(0)])
        per_patch = received_attention(q, k, bounds, block=self.received_block, scale=attn.scaling)  # (L,)
        per_token = per_patch.view(-1, self.merge_unit).sum(dim=1)  # window order
        return per_token[torch.argsort(self.window_order(grid_thw).to(per_token.device))]

    def encoder_output(self, kept: list[torch.Tensor], extras: list[list[torch.Tensor]]) -> BaseModelOutputWithPooling:
        """The kept features of one stream's items as transformers takes them (`mm_encoder_outputs[key]`)."""
        return BaseModelOutputWithPooling(pooler_output=tuple(kept))

    def encoder_outputs(self, features: dict[str, list[torch.Tensor]]) -> dict:
        return {key: self.encoder_output(f, self.kept_extras.get(key, [])) for key, f in features.items()}

    # -- one call -----------------------------------------------------------------------------------------------
    def streams(self, visual: dict) -> list[VisualStream]:
        """Images (if pixel_values) then videos (if pixel_values_videos), each item pruned per frame group."""
        out = []
        for key, pixels, grid, token_id in (
                ("image", "pixel_values", "image_grid_thw", self.model.config.image_token_id),
                ("video", "pixel_values_videos", "video_grid_thw", self.model.config.video_token_id)):
            if visual.get(pixels) is None:
                continue
            if visual.get(grid) is None:
                raise ValueError(f"{pixels} needs {grid}, as the processor returns them "
                                 f"(llava/integrations/transformers/qwen_vl.py)")
            out.append(self.stream(key, token_id, visual[pixels], torch.as_tensor(visual[grid])))
        return out

    def stream(self, key: str, token_id: int, pixels: torch.Tensor, grid_thw: torch.Tensor) -> VisualStream:
        """One kind of input: run the tower once, select per frame group, keep features and extras."""
        needs = "received" in getattr(get_selector(self.pipeline.pruning.method), "needs", ())
        items = self.run_tower(pixels, grid_thw, needs)
        embeds, keeps, extras = [], [], []
        for i, (t, h, w) in enumerate(grid_thw.tolist()):
            groups = items.features[i].view(t, -1, items.features[i].shape[-1])  # (t, n, D)
            scores = None if items.received is None else items.received[i].view(t, -1)
            keep = self.pipeline.select(groups, scores)  # (t, m) frame-group indices
            flat = (keep + torch.arange(t, device=keep.device)[:, None] * groups.shape[1]).flatten()
            embeds.append(items.features[i][flat])
            extras.append([x[flat] for x in items.extras[i]])
            keeps.append(keep)
        self.kept_extras[key] = extras
        empty = [e.new_zeros(k.shape[0], 0) for e, k in zip(embeds, keeps)]  # no [CLS] attention to report
        full = (grid_thw.prod(-1) // self.merge_unit).tolist()
        return VisualStream(key, token_id, VisualTokens(embeds, empty, keeps), full)

    @staticmethod
    def kept_placeholders(placeholders: torch.Tensor, owner: list[int], stream: VisualStream) -> torch.Tensor:
        """Positions to keep (B, L) bool: all text, and of each item's placeholders exactly those of its kept tokens
        (their positions matter: they keep their rotary positions)."""
        keep = ~placeholders
        start = [0] * placeholders.shape[0]
        for i, b in enumerate(owner):
            spots = placeholders[b].nonzero().flatten()[start[b]:start[b] + stream.full[i]]
            kept = stream.tokens.keep[i]  # (t, m) per frame group
            groups = spots.view(kept.shape[0], -1)
            keep[b, groups.gather(1, kept.to(groups.device)).flatten()] = True
            start[b] += stream.full[i]
        return keep

    # -- positions ----------------------------------------------------------------------------------------------
    def rope_index(self, input_ids: torch.Tensor, type_ids: torch.Tensor, visual: dict,
                   attention_mask: torch.Tensor | None) -> torch.Tensor:
        """The unpruned prompt's 3-D positions (3, B, L), from the model's own `get_rope_index`."""
        positions, _ = self.model.model.get_rope_index(
            input_ids, type_ids, image_grid_thw=visual.get("image_grid_thw"),
            video_grid_thw=visual.get("video_grid_thw"), second_per_grid_ts=visual.get("second_per_grid_ts"),
            attention_mask=attention_mask)
        return positions

    def type_ids(self, input_ids: torch.Tensor, visual: dict) -> torch.Tensor:
        """mm_token_type_ids as the processor gave them, or built from the placeholders (text 0, image 1, video 2)."""
        given = visual.get("mm_token_type_ids")
        if given is not None:
            return torch.as_tensor(given, device=input_ids.device)
        config = self.model.config
        return ((input_ids == config.image_token_id) * IMAGE + (input_ids == config.video_token_id) * VIDEO).int()

    def pruned_call_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, keep: torch.Tensor,
                           pruned_mask: torch.Tensor | None, visual: dict) -> dict:
        """The kept columns of the unpruned prompt's positions and type ids, laid out as the pruned rows are.

        input_ids, attention_mask, keep (B, L): the unpruned call and its kept positions; pruned_mask (B, L') the
        pruned rows' mask (None: no padding). Returns position_ids (4, B, L') (text row, then t / h / w) and
        mm_token_type_ids (B, L'); sets `model.model.rope_deltas` (B, 1) for decode steps without position ids."""
        real = torch.ones_like(keep) if attention_mask is None else attention_mask.bool()
        type_ids = self.type_ids(input_ids, visual)
        positions = self.rope_index(input_ids, type_ids, visual, attention_mask)  # (3, B, L)
        if pruned_mask is None:  # no padding: every row kept as many positions
            slots = torch.ones(keep.shape[0], int(keep[0].sum()), dtype=torch.bool, device=keep.device)
        else:
            slots = pruned_mask.bool()
        length = slots.shape[1]
        kept_positions = positions.new_zeros(3, keep.shape[0], length)
        kept_types = type_ids.new_zeros(keep.shape[0], length)
        deltas = []
        for b in range(keep.shape[0]):
            columns = keep[b] & real[b]
            kept_positions[:, b, slots[b]] = positions[:, b, columns]
            kept_types[b, slots[b]] = type_ids[b, columns]
            # continue at the unpruned prompt's max position + 1 after the kept (real) tokens
            deltas.append(int(positions[:, b, real[b]].max()) + 1 - int(columns.sum()))
        text = (slots.long().cumsum(-1) - 1).masked_fill(~slots, 0)  # the pruned sequence's own 1-D positions
        self.model.model.rope_deltas = torch.tensor(deltas, device=keep.device).unsqueeze(1)
        return {"position_ids": torch.cat([text[None], kept_positions]), "mm_token_type_ids": kept_types}


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as `apply_rotary_pos_emb_vision` applies it: x (L, H, d), cos / sin (L, 1, d)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin

