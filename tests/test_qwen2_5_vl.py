"""apply_pruning on transformers' Qwen2_5_VLForConditionalGeneration (llava/integrations/transformers/qwen_vl.py,
qwen2_5_vl.py), on a tiny random model: 2 vision blocks (block 1 full attention, block 0 window attention over 2x2
merged tokens), patch 2, a 3-layer Qwen2 LLM with M-RoPE. Inputs are hand-built in the processor's layout
(`<|vision_start|>`, one pad per merged token, `<|vision_end|>`; mm_token_type_ids 1 / 2 at image / video pads).

Sources of truth: transformers' own model (full budget, undo), an oracle that runs the unmodified
`model.model.language_model` by hand on the kept columns of the full prompt's embeddings (transformers' own
`get_image_features` / `get_video_features` scattered over the placeholders) at the kept columns of `get_rope_index`'s
3-D positions, with decode steps at max position + 1, +2, ...; hand-computed uniform indices; and, for
attention_received, full softmax maps of the last full-attention block written out here from its input.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.vision_utils import get_vision_window_index

from llava.integrations.transformers import apply_pruning
from llava.model.pruning import METHODS
from tests.qwen_helpers import tiny_qwen2_5_vl_config

IMAGE_PAD, VIDEO_PAD, START, END = 60, 61, 58, 59
# engineer SC registers attention_received (llava/model/pruning/received.py); skipped until it is there
needs_received = pytest.mark.skipif("attention_received" not in METHODS, reason="attention_received not registered")
PATCH_DIM = 3 * 2 * 2 * 2  # channels x temporal_patch_size x patch x patch
IMAGE_A, IMAGE_B, VIDEO = (1, 8, 12), (1, 4, 8), (2, 4, 6)  # grid_thw: 24, 8 merged tokens; video 2 groups x 6


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = tiny_qwen2_5_vl_config(64, 3, image_token_id=IMAGE_PAD, video_token_id=VIDEO_PAD,
                                    vision_start_token_id=START, vision_end_token_id=END)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, None
    return model


def merged(grid) -> int:
    t, h, w = grid
    return t * h * w // 4


def sample(parts, seed=0):
    """parts: ("text", n) / ("image", grid) / ("video", grid) -> ids (1, L), mm_token_type_ids (1, L)."""
    gen = torch.Generator().manual_seed(seed)
    ids, types = [], []
    for kind, arg in parts:
        if kind == "text":
            ids += torch.randint(1, 50, (arg,), generator=gen).tolist()
            types += [0] * arg
        else:
            pad, code = (IMAGE_PAD, 1) if kind == "image" else (VIDEO_PAD, 2)
            ids += [START] + [pad] * merged(arg) + [END]
            types += [0] + [code] * merged(arg) + [0]
    return torch.tensor([ids]), torch.tensor([types])


def pixels(grid, seed):
    t, h, w = grid
    return torch.randn(t * h * w, PATCH_DIM, generator=torch.Generator().manual_seed(seed))


def image_inputs(grid=IMAGE_A, seed=1):
    ids, types = sample([("text", 3), ("image", grid), ("text", 4)], seed)
    return dict(input_ids=ids, mm_token_type_ids=types, pixel_values=pixels(grid, seed),
                image_grid_thw=torch.tensor([grid]))


def video_inputs(seed=2):
    ids, types = sample([("text", 2), ("video", VIDEO), ("text", 3)], seed)
    return dict(input_ids=ids, mm_token_type_ids=types, pixel_values_videos=pixels(VIDEO, seed),
                video_grid_thw=torch.tensor([VIDEO]), second_per_grid_ts=torch.tensor([1.5]))


def uniform_indices(n: int, k: int) -> list[int]:
    """k of n evenly spread, by hand: floor((i + 0.5) n / k)."""
    return [int((i + 0.5) * n / k) for i in range(k)]


# -- the oracle ---------------------------------------------------------------------------------------------------
def full_embeddings(model, inputs):
    """The unpruned prompt's input embeddings (1, L, D), transformers' own features scattered over the pads."""
    ids = inputs["input_ids"]
    embeds = model.model.language_model.embed_tokens(ids).clone()
    if "pixel_values" in inputs:
        feats = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
        feats = torch.cat(feats)
        embeds[ids == IMAGE_PAD] = feats
    if "pixel_values_videos" in inputs:
        feats = torch.cat(model.model.get_video_features(inputs["pixel_values_videos"],
                                                         inputs["video_grid_thw"]).pooler_output)
        embeds[ids == VIDEO_PAD] = feats
    return embeds


def full_positions(model, inputs):
    """get_rope_index on the unpruned prompt: (3, 1, L)."""
    return model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                      image_grid_thw=inputs.get("image_grid_thw"),
                                      video_grid_thw=inputs.get("video_grid_thw"),
                                      second_per_grid_ts=inputs.get("second_per_grid_ts"))[0]


def kept_columns(inputs, kept_visual: list[int]) -> torch.Tensor:
    """Every text column and the visual pads with these indices (in pad order)."""
    ids = inputs["input_ids"][0]
    pads = ((ids == IMAGE_PAD) | (ids == VIDEO_PAD)).nonzero().flatten()
    keep = (ids != IMAGE_PAD) & (ids != VIDEO_PAD)
    keep[pads[kept_visual]] = True
    return keep.nonzero().flatten()


def oracle_greedy(model, inputs, kept_visual, steps: int):
    """Prefill logits (1, L', V) and `steps` greedy tokens of the unmodified LLM on the kept columns at their original
    3-D positions, decode steps at the unpruned prompt's max position + 1, + 2, ..."""
    columns = kept_columns(inputs, kept_visual)
    positions = full_positions(model, inputs)
    llm = model.model.language_model
    out = llm(inputs_embeds=full_embeddings(model, inputs)[:, columns], position_ids=positions[:, :, columns],
              use_cache=True)
    logits = model.lm_head(out.last_hidden_state)
    prefill, cache, tokens, step_logits = logits, out.cache, [], []
    nxt = int(positions.max()) + 1
    for _ in range(steps):
        token = logits[:, -1].argmax(-1)
        tokens.append(int(token))
        out = llm(inputs_embeds=llm.embed_tokens(token[:, None]), position_ids=torch.full((3, 1, 1), nxt),
                  cache=cache, use_cache=True)
        logits = model.lm_head(out.last_hidden_state)
        step_logits.append(logits)
        cache, nxt = out.cache, nxt + 1
    return prefill, tokens, step_logits


# -- tests --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [image_inputs, video_inputs], ids=["image", "video"])
@torch.no_grad()
def test_full_budget_equals_model(model, make):
    inputs = make()
    ref = model(**inputs).logits
    ref_gen = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    with apply_pruning(model, "random", visual_token_num=None) as handle:
        assert torch.allclose(model(**inputs).logits, ref, atol=1e-5)
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), ref_gen)
        assert handle.last_v_token_num == int((inputs["mm_token_type_ids"] > 0).sum())


@torch.no_grad()
def test_pruned_forward_and_decode_step_equal_oracle(model):
    inputs = image_inputs()
    kept = uniform_indices(24, 5)
    prefill, tokens, steps = oracle_greedy(model, inputs, kept, steps=1)
    with apply_pruning(model, "uniform", visual_token_num=5) as handle:
        out = model(**inputs, use_cache=True)
        assert handle.last_v_token_num == 5
        assert torch.allclose(out.logits, prefill, atol=1e-5)
        # without a cache or a mask transformers builds the causal mask from position_ids' text row
        assert torch.allclose(model(**inputs, use_cache=False).logits, prefill, atol=1e-5)
        # one decode step through the cache, no position ids: the model continues at max position + 1
        step = model(input_ids=torch.tensor([[tokens[0]]]), cache=out.cache, use_cache=True)
        assert torch.allclose(step.logits, steps[0], atol=1e-5)


@torch.no_grad()
def test_generate_equals_oracle_greedy_loop(model):
    inputs = image_inputs(seed=3)
    prefill, tokens, steps = oracle_greedy(model, inputs, uniform_indices(24, 6), steps=5)
    with apply_pruning(model, "uniform", visual_token_num=6):
        out = model.generate(**inputs, max_new_tokens=5, do_sample=False, return_dict_in_generate=True,
                             output_logits=True)
    length = inputs["input_ids"].shape[1]
    assert torch.equal(out.sequences[:, :length], inputs["input_ids"])  # the caller's unpruned prompt comes back
    assert out.sequences[0, length:].tolist() == tokens
    # each step's logits, not only the argmax: the decode positions continue at the oracle's max + 1, + 2, ...
    expected = [prefill[:, -1]] + [s[:, -1] for s in steps[:-1]]
    for got, want in zip(out.logits, expected):
        assert torch.allclose(got, want, atol=1e-5)


@torch.no_grad()
def test_video_pruned_per_frame_group_equals_oracle(model):
    inputs = video_inputs()
    kept = uniform_indices(6, 4) + [6 + i for i in uniform_indices(6, 4)]  # 4 of 6 in each of the 2 frame groups
    prefill, tokens, steps = oracle_greedy(model, inputs, kept, steps=3)
    with apply_pruning(model, "uniform", visual_token_num=4) as handle:
        out = model(**inputs, use_cache=True)
        assert handle.last_v_token_num == 8
        assert torch.allclose(out.logits, prefill, atol=1e-5)
        step = model(input_ids=torch.tensor([[tokens[0]]]), cache=out.cache, use_cache=True)
        assert torch.allclose(step.logits, steps[0], atol=1e-5)
        generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated[0, inputs["input_ids"].shape[1]:].tolist() == tokens


@torch.no_grad()
def test_budget_above_an_image_keeps_all_of_it(model):
    inputs = image_inputs(IMAGE_B, seed=4)  # 8 merged tokens, budget 20
    ref = model(**inputs).logits
    with apply_pruning(model, "divprune", visual_token_num=20) as handle:
        assert torch.allclose(model(**inputs).logits, ref, atol=1e-5)
        assert handle.last_v_token_num == 8


def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(r.shape[1] for r in rows)
    out = torch.zeros(len(rows), longest, dtype=rows[0].dtype)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, longest - r.shape[1]:], mask[b, longest - r.shape[1]:] = r[0], 1
    return out, mask


@pytest.mark.parametrize("method", ["random", "divprune", pytest.param("attention_received", marks=needs_received)])
@torch.no_grad()
def test_batch_of_two_sizes_equals_batch_of_one(model, method):
    one, two = image_inputs(IMAGE_A, seed=5), image_inputs(IMAGE_B, seed=6)
    ids, mask = left_pad([one["input_ids"], two["input_ids"]])
    types, _ = left_pad([one["mm_token_type_ids"], two["mm_token_type_ids"]])
    batch = dict(input_ids=ids, attention_mask=mask, mm_token_type_ids=types,
                 pixel_values=torch.cat([one["pixel_values"], two["pixel_values"]]),
                 image_grid_thw=torch.cat([one["image_grid_thw"], two["image_grid_thw"]]))
    with apply_pruning(model, method, visual_token_num=5) as handle:
        singles, kept = [], []
        for single in (one, two):
            singles.append(model(**single).logits[0, -1])
            kept.append(handle.last.image_features[0])
        batched = model(**batch).logits[:, -1]
        assert handle.last_v_token_num == [5, 5]
        for b in range(2):
            assert torch.equal(handle.last.image_features[b], kept[b])  # the same kept set
            assert torch.allclose(batched[b], singles[b], atol=1e-5)
        if method != "random":
            return  # generate's batch path once is enough (the kept sets are compared above for each method)
        gen = model.generate(**batch, max_new_tokens=3, do_sample=False)[:, ids.shape[1]:]
        for b, single in enumerate((one, two)):
            alone = model.generate(**single, max_new_tokens=3, do_sample=False)[:, single["input_ids"].shape[1]:]
            assert gen[b].tolist() == alone[0].tolist()


@torch.no_grad()
def test_undo_restores_bit_identical_outputs(model):
    inputs = image_inputs(seed=7)
    before = model(**inputs).logits
    handle = apply_pruning(model, "random", visual_token_num=3)
    assert not torch.equal(model(**inputs).logits[:, -1], before[:, -1])
    handle.undo()
    assert "forward" not in model.__dict__ and "fastervlm" not in model.__dict__
    assert torch.equal(model(**inputs).logits, before)


@pytest.mark.parametrize("method", ["fastervlm", "visionzip", "vispruner"])
def test_cls_methods_are_refused_naming_alternatives(model, method):
    with pytest.raises(ValueError, match="no \\[CLS\\] token.*random.*divprune"):
        apply_pruning(model, method, visual_token_num=4)
    assert "fastervlm" not in model.__dict__


# -- attention received at the last full-attention block ----------------------------------------------------------
def rotate(x, cos, sin):
    """x (L, H, d), cos / sin (L, d): x cos + rotate_half(x) sin (RoFormer; Qwen2.5-VL's vision rotary)."""
    half = x.shape[-1] // 2
    return x * cos[:, None] + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin[:, None]


def oracle_received_keep(model, pixel_values, grid_thw, budget):
    """Kept merged-token indices per item (flattened over frame groups), from the full attention maps of the last
    full-attention block: softmax over each frame group, mean over heads and queries, summed over the 4 patches of
    each merged token, back from window order to raster order, top `budget` per frame group."""
    visual = model.model.visual
    block = visual.blocks[model.config.vision_config.fullatt_block_indexes[-1]]
    seen = {}
    hook = block.register_forward_pre_hook(
        lambda m, args, kwargs: seen.update(x=args[0], pe=kwargs["position_embeddings"]), with_kwargs=True)
    visual(pixel_values, grid_thw=grid_thw)
    hook.remove()
    attn = block.attn
    qkv = attn.qkv(block.norm1(seen["x"])).view(seen["x"].shape[0], 3, attn.num_heads, -1)
    q, k = rotate(qkv[:, 0], *seen["pe"]), rotate(qkv[:, 1], *seen["pe"])
    scores, start = [], 0
    for t, h, w in grid_thw.tolist():
        for _ in range(t):  # one full-attention segment per frame group
            n = h * w
            maps = torch.einsum("qhd,khd->hqk", q[start:start + n], k[start:start + n]) * attn.head_dim ** -0.5
            scores.append(maps.softmax(-1).mean(dim=(0, 1)))  # (n,) received per patch
            start += n
    patch_scores = torch.cat(scores)
    vision = model.config.vision_config
    order, _ = get_vision_window_index(grid_thw, vision.spatial_merge_size, vision.window_size, vision.patch_size)
    per_token = torch.zeros(len(order))
    per_token[order] = patch_scores.view(-1, 4).sum(-1)  # window slot i holds merged token order[i]
    kept, offset = [], 0
    for t, h, w in grid_thw.tolist():
        group = h * w // 4
        item = []
        for g in range(t):
            top = per_token[offset + g * group: offset + (g + 1) * group].topk(budget).indices.sort().values
            item += (top + g * group).tolist()
        kept.append(item)
        offset += t * group
    return kept


@needs_received
@pytest.mark.parametrize("block", [1024, 7])  # all 96 queries of the image at once, or 7 at a time
@torch.no_grad()
def test_attention_received_matches_full_attention_maps(model, block):
    inputs = image_inputs(seed=8)
    expected = oracle_received_keep(model, inputs["pixel_values"], inputs["image_grid_thw"], 7)[0]
    prefill, _, _ = oracle_greedy(model, inputs, expected, steps=0)
    with apply_pruning(model, "attention_received", visual_token_num=7) as handle:
        handle.adapter.received_block = block
        logits = model(**inputs).logits
    assert torch.allclose(logits, prefill, atol=1e-5)


@needs_received
@torch.no_grad()
def test_attention_received_on_video_frame_groups(model):
    inputs = video_inputs(seed=9)
    expected = oracle_received_keep(model, inputs["pixel_values_videos"], inputs["video_grid_thw"], 2)[0]
    full = torch.cat(model.model.get_video_features(inputs["pixel_values_videos"],
                                                    inputs["video_grid_thw"]).pooler_output)
    with apply_pruning(model, "attention_received", visual_token_num=2) as handle:
        model(**inputs)
        assert torch.equal(handle.last.features["video"][0], full[expected])


# -- FastV inside the Qwen2 LLM (engineer SC's llava/model/pruning/fastv.py, wired by the handle) ------------------
@torch.no_grad()
def test_fastv_keeps_the_image_tokens_the_last_token_attends_to(model):
    """FastV (arXiv 2403.06764) at K = 1: the 5 image tokens with the highest head-mean attention of the last prompt
    token in layer 0 are kept, with every text token. Oracle: transformers' eager attention maps of the unmodified
    LLM on the full prompt at its 3-D positions (output_attentions)."""
    inputs = image_inputs(seed=10)
    llm = model.model.language_model
    llm.config._attn_implementation = "eager"
    try:
        maps = llm(inputs_embeds=full_embeddings(model, inputs), position_ids=full_positions(model, inputs),
                   output_attentions=True).attentions[0]
    finally:
        llm.config._attn_implementation = "sdpa"
    ids = inputs["input_ids"][0]
    pads = (ids == IMAGE_PAD).nonzero().flatten()
    top = pads[maps[0, :, -1, pads].mean(0).topk(5).indices]
    expected = torch.cat([(ids != IMAGE_PAD).nonzero().flatten(), top]).sort().values
    ref = model(**inputs).logits
    with apply_pruning(model, "fastv", visual_token_num=None, llm_layer=1):
        assert torch.allclose(model(**inputs).logits, ref, atol=1e-5)  # every token kept: the model itself
    with apply_pruning(model, "fastv", visual_token_num=5, llm_layer=1) as handle:
        model(**inputs)
        assert handle.last_v_token_num == 5
        assert handle.llm_pruner.kept[0].tolist() == expected.tolist()
