"""Qwen3-VL (transformers' Qwen3VLForConditionalGeneration: a ViT without [CLS], a 2x2 patch merger and DeepStack
features added to the first LLM layers) pruned through `apply_pruning`.

Sources of truth: the unmodified transformers model (its own logits and greedy tokens at full budget, before apply
and after undo); an oracle written here with transformers' own pieces: `get_image_features` / `get_video_features`
(merged features and every DeepStack level), `get_rope_index` on the UNPRUNED ids (the 3-D positions the kept tokens
must keep), and `model.model.language_model` + `lm_head` run by hand on the kept embeddings with
`visual_pos_masks` / `deepstack_visual_embeds` restricted to the kept tokens, including greedy decode steps through
its cache at positions max + 1, max + 2, ...; for attention_received, the vision model's last-block attention maps
as transformers' own eager attention computes them (recorded through a registered attention function), averaged
over heads and queries and summed over the 4 patches of each merged token.

Inputs are hand-built in `Qwen3VLProcessor`'s layout (processing_qwen3_vl.py): an image is
`<|vision_start|>` + `<|image_pad|>` x (t h w / 4) + `<|vision_end|>`; a video is, per frame, a timestamp text token,
`<|vision_start|>`, its `<|video_pad|>` x (h w / 4), `<|vision_end|>`; `mm_token_type_ids` 1 / 2 at the pads. Pixel
rows are random (one row per patch, as the processor flattens them; the model reads nothing else).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AttentionInterface, Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.cache_utils import DynamicCache
from transformers.models.qwen3_vl.modeling_qwen3_vl import eager_attention_forward

from llava.integrations.transformers import apply_pruning

IMAGE, VIDEO, START, END, PAD = 60, 61, 62, 63, 0
PATCH, TEMPORAL = 2, 2
ROW = 3 * TEMPORAL * PATCH * PATCH  # one pixel row per patch
PREFIX, SUFFIX = [5, 6, 7], [8, 9, 10, 11]


def tiny_config(deepstack=(0, 1), text_layers=3) -> Qwen3VLConfig:
    """3 vision blocks, DeepStack taps after blocks 0 and 1 (added after LLM layers 0 and 1), a 3-layer LLM with
    interleaved M-RoPE (sections 2/1/1 of a 4-frequency half head)."""
    return Qwen3VLConfig(
        text_config=dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=text_layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 1, 1],
                                              mrope_interleaved=True)),
        vision_config=dict(depth=3, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=PATCH,
                           temporal_patch_size=TEMPORAL, spatial_merge_size=2, out_hidden_size=32,
                           num_position_embeddings=16, deepstack_visual_indexes=list(deepstack)),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Qwen3VLForConditionalGeneration(tiny_config()).eval()
    m.generation_config.pad_token_id = PAD
    return m


def sample_ids(grids: list[tuple[int, int, int]], kind: int = IMAGE) -> tuple[list[int], list[int]]:
    """One sample's ids and mm_token_type_ids in the processor's layout: prefix, each image (or each video's
    frames, each behind a timestamp token), suffix. grids: (t, h, w) in patches."""
    ids, types = list(PREFIX), [0] * len(PREFIX)
    for t, h, w in grids:
        frames = [(1, h, w)] * t if kind == VIDEO else [(t, h, w)]
        for i, (ft, fh, fw) in enumerate(frames):
            if kind == VIDEO:
                ids, types = ids + [20 + i], types + [0]  # "<0.5 seconds>"-like timestamp text
            n = ft * fh * fw // 4
            ids += [START] + [kind] * n + [END]
            types += [0] + [1 if kind == IMAGE else 2] * n + [0]
    return ids + SUFFIX, types + [0] * len(SUFFIX)


def batch(samples: list[list[tuple[int, int, int]]], kind: int = IMAGE, seed: int = 0) -> dict:
    """Left-padded processor-style inputs for samples of images (or one video each), grids (t, h, w)."""
    rows = [sample_ids(s, kind) for s in samples]
    length = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), length), PAD)
    types = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, (i, t) in enumerate(rows):
        ids[b, length - len(i):], types[b, length - len(t):], mask[b, length - len(i):] = (
            torch.tensor(i), torch.tensor(t), 1)
    grid = torch.tensor([g for s in samples for g in s])
    pixels = torch.randn(int(grid.prod(-1).sum()), ROW, generator=torch.Generator().manual_seed(seed))
    key = "image" if kind == IMAGE else "video"
    pixel_name = "pixel_values" if kind == IMAGE else "pixel_values_videos"
    return {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types, pixel_name: pixels,
            f"{key}_grid_thw": grid}


# -- the oracle --------------------------------------------------------------------------------------------------
def oracle_features(model, inputs: dict, key: str = "image"):
    """transformers' own per-item merged features and DeepStack levels: (list of (n_i, D), list over levels of
    lists of (n_i, D)) for the images (key "image") or videos ("video") of `inputs`."""
    with torch.no_grad():
        if key == "image":
            out = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        else:
            out = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    return list(out.pooler_output), [list(level) for level in out.deepstack_features]


KINDS = (("image", IMAGE, "pixel_values", "image_grid_thw"), ("video", VIDEO, "pixel_values_videos", "video_grid_thw"))


def oracle_run(model, inputs: dict, kept, steps: int = 3):
    """The unmodified language model on the kept tokens at their ORIGINAL 3-D positions, DeepStack restricted to the
    kept tokens; then `steps` greedy decode steps through its cache at positions max + 1, ... per sample.

    kept: per item, the kept merged-token indices (ascending): a list for the one kind of input, or a dict
    {"image": [...], "video": [...]}. Returns (prefill logits at the last position (B, V), greedy tokens
    (B, steps), the logits of each decode step [(B, V)])."""
    lm, ids, mask = model.model.language_model, inputs["input_ids"], inputs["attention_mask"]
    present = [kind for kind in KINDS if inputs.get(kind[2]) is not None]
    kept = kept if isinstance(kept, dict) else {present[0][0]: kept}
    with torch.no_grad():
        grids = {grid: inputs[grid].clone() for _, _, _, grid in present}
        positions, _ = model.model.get_rope_index(ids, inputs["mm_token_type_ids"], attention_mask=mask, **grids)
        embeds = lm.embed_tokens(ids)
        keep = torch.ones_like(ids, dtype=torch.bool)
        levels = len(model.config.vision_config.deepstack_visual_indexes)
        deep_at = torch.zeros(levels, *ids.shape, embeds.shape[-1])  # each level's feature at each position
        for key, token_id, _, _ in present:
            merged, deep = oracle_features(model, inputs, key)
            spots = ids == token_id
            embeds[spots] = torch.cat(merged)  # row-major over the batch, as masked_scatter fills
            for level in range(levels):
                deep_at[level][spots] = torch.cat(deep[level])
            # which placeholders stay: per item, its kept indices among its own placeholders (items in batch order)
            keep[spots] = torch.cat([torch.zeros(len(m), dtype=torch.bool).index_fill_(0, k, True)
                                     for m, k in zip(merged, kept[key])])
        placeholders = (ids == IMAGE) | (ids == VIDEO)
        rows = [keep[b].nonzero().flatten() for b in range(ids.shape[0])]
        width = max(len(r) for r in rows)
        # left-pad the kept columns again (as the pruned model's prompt is)
        take = torch.stack([torch.cat([r.new_zeros(width - len(r)), r]) for r in rows])
        valid = torch.stack([torch.arange(width) >= width - len(r) for r in rows])
        new_mask = torch.gather(mask, 1, take) * valid
        new_embeds = torch.gather(embeds, 1, take[..., None].expand(-1, -1, embeds.shape[-1]))
        new_pos = torch.gather(positions, 2, take[None].expand(3, -1, -1))
        new_pos = new_pos.masked_fill(~valid[None], 1)
        visual = torch.gather(placeholders, 1, take) & valid
        deepstack = [torch.gather(d, 1, take[..., None].expand(-1, -1, d.shape[-1]))[visual] for d in deep_at]
        cache = DynamicCache(config=lm.config)
        out = lm(inputs_embeds=new_embeds, attention_mask=new_mask, position_ids=new_pos, cache=cache,
                 use_cache=True, visual_pos_masks=visual, deepstack_visual_embeds=deepstack)
        logits = model.lm_head(out.last_hidden_state[:, -1])
        prefill, tokens, steps_logits = logits, [], []
        next_pos = (positions.masked_fill(mask[None] == 0, 0).amax(dim=(0, 2)) + 1)  # (B,)
        for _ in range(steps):
            token = logits.argmax(-1)
            tokens.append(token)
            new_mask = torch.cat([new_mask, new_mask.new_ones(len(token), 1)], dim=1)
            out = lm(inputs_embeds=lm.embed_tokens(token[:, None]), attention_mask=new_mask,
                     position_ids=next_pos.view(1, -1, 1).expand(3, -1, 1), cache=cache, use_cache=True)
            logits, next_pos = model.lm_head(out.last_hidden_state[:, -1]), next_pos + 1
            steps_logits.append(logits)
    return prefill, torch.stack(tokens, dim=1), steps_logits


def kept_flat(handle, key: str, grid_thw: torch.Tensor) -> list[torch.Tensor]:
    """Per image (or video) the kept merged-token indices into the item's t * n tokens (n per frame), from the
    adapter's per-frame (t, m) kept sets of the last call."""
    out = []
    for keep, (t, h, w) in zip(handle.adapter.last_keep[key], grid_thw.tolist()):
        out.append((keep + torch.arange(t)[:, None] * (h * w // 4)).flatten())
    return out


def uniform_keep(n: int, k: int) -> torch.Tensor:
    """uniform's rule by hand: floor((i + 0.5) n / k), i < k (llava/model/pruning/selectors.py docstring)."""
    return torch.tensor([int((i + 0.5) * n / k) for i in range(k)])


def logits_of(model, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


# -- tests -------------------------------------------------------------------------------------------------------
def test_full_budget_equals_the_unmodified_model(model):
    inputs = batch([[(1, 4, 6)], [(1, 4, 4)]])
    reference = logits_of(model, dict(inputs))
    greedy = model.generate(**dict(inputs), max_new_tokens=3, do_sample=False)
    with apply_pruning(model, "uniform", None):
        torch.testing.assert_close(logits_of(model, dict(inputs))[:, -1], reference[:, -1], rtol=0, atol=1e-5)
        assert torch.equal(model.generate(**dict(inputs), max_new_tokens=3, do_sample=False), greedy)


@pytest.mark.parametrize("method", ["uniform", "random", "divprune"])
def test_pruned_image_forward_and_decode_equal_the_oracle(model, method):
    inputs = batch([[(1, 4, 6), (1, 6, 4)]])  # one sample, two images of 6 merged tokens each
    with apply_pruning(model, method, 2) as handle:
        logits = logits_of(model, dict(inputs))[:, -1]
        kept = kept_flat(handle, "image", inputs["image_grid_thw"])
        tokens = model.generate(**dict(inputs), max_new_tokens=3, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    if method == "uniform":
        assert [k.tolist() for k in kept] == [uniform_keep(6, 2).tolist()] * 2
    prefill, greedy, _ = oracle_run(model, inputs, kept)
    torch.testing.assert_close(logits, prefill, rtol=0, atol=1e-5)
    assert torch.equal(tokens, greedy)


def test_direct_decode_step_through_the_cache_equals_the_oracle(model):
    """A forward with use_cache, then one forward of the next token with that cache and no position ids: the model
    continues from `rope_deltas`, which must put the token at the UNPRUNED prompt's max position + 1. (No mask in
    the step: transformers 5.24's own Qwen3-VL fails a masked direct decode step, `compute_3d_position_ids` builds
    positions over the whole mask; so one unpadded sample.)"""
    inputs = batch([[(1, 6, 6)]])
    with apply_pruning(model, "uniform", 3) as handle:
        with torch.no_grad():
            out = model(**dict(inputs), use_cache=True)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            step = model(input_ids=token, cache=out.cache, use_cache=True).logits[:, -1]
        kept = kept_flat(handle, "image", inputs["image_grid_thw"])
    prefill, greedy, steps = oracle_run(model, inputs, kept, steps=1)
    torch.testing.assert_close(out.logits[:, -1], prefill, rtol=0, atol=1e-5)
    assert torch.equal(token[:, 0], greedy[:, 0])
    torch.testing.assert_close(step, steps[0], rtol=0, atol=1e-5)


def test_batch_of_two_sizes_equals_batch_one(model):
    samples = [[(1, 4, 6)], [(1, 6, 6)]]
    both = batch(samples)
    with apply_pruning(model, "divprune", 3) as handle:
        together = logits_of(model, dict(both))[:, -1]
        kept_together = kept_flat(handle, "image", both["image_grid_thw"])
        tokens = model.generate(**dict(both), max_new_tokens=3, do_sample=False)[:, both["input_ids"].shape[1]:]
        for b, sample in enumerate(samples):
            one = batch([sample])
            one["pixel_values"] = both["pixel_values"][:24] if b == 0 else both["pixel_values"][24:]
            torch.testing.assert_close(logits_of(model, dict(one))[0, -1], together[b], rtol=0, atol=1e-5)
            assert torch.equal(kept_flat(handle, "image", one["image_grid_thw"])[0], kept_together[b])
            alone = model.generate(**dict(one), max_new_tokens=3, do_sample=False)[:, one["input_ids"].shape[1]:]
            assert torch.equal(alone[0], tokens[b])
    prefill, greedy, _ = oracle_run(model, both, kept_together)  # the padded batch against the oracle too
    torch.testing.assert_close(together, prefill, rtol=0, atol=1e-5)
    assert torch.equal(tokens, greedy)


def test_video_pruned_per_frame_equals_the_oracle(model):
    inputs = batch([[(2, 4, 6)]], kind=VIDEO)  # one video: 2 frames of 6 merged tokens, each behind a timestamp
    full_logits = logits_of(model, dict(inputs))[:, -1]
    with apply_pruning(model, "uniform", None):
        torch.testing.assert_close(logits_of(model, dict(inputs))[:, -1], full_logits, rtol=0, atol=1e-5)
    with apply_pruning(model, "uniform", 2) as handle:
        logits = logits_of(model, dict(inputs))[:, -1]
        kept = kept_flat(handle, "video", inputs["video_grid_thw"])
        assert handle.last_v_token_num == 4  # 2 per frame
        tokens = model.generate(**dict(inputs), max_new_tokens=3, do_sample=False)[:, inputs["input_ids"].shape[1]:]
    by_hand = uniform_keep(6, 2)
    assert kept[0].tolist() == torch.cat([by_hand, by_hand + 6]).tolist()
    prefill, greedy, _ = oracle_run(model, inputs, kept)
    torch.testing.assert_close(logits, prefill, rtol=0, atol=1e-5)
    assert torch.equal(tokens, greedy)


def test_undo_restores_bit_identical_outputs(model):
    inputs = batch([[(1, 4, 6)]])
    before = logits_of(model, dict(inputs))
    handle = apply_pruning(model, "random", 1)
    assert logits_of(model, dict(inputs)).shape[1] < before.shape[1]  # pruned: 5 of 6 placeholders dropped
    handle.undo()
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert torch.equal(logits_of(model, dict(inputs)), before)


def test_cls_methods_are_refused_naming_the_alternatives(model):
    with pytest.raises(ValueError, match="no \\[CLS\\] token.*random"):
        apply_pruning(model, "fastervlm", 2)
    assert "forward" not in model.__dict__


def test_fastv_before_the_last_deepstack_level_is_refused(model):
    with pytest.raises(NotImplementedError, match="DeepStack.*use llm_layer >= 2"):
        apply_pruning(model, "fastv", 2, llm_layer=1)
    assert "forward" not in model.__dict__


# -- attention_received ------------------------------------------------------------------------------------------
def recording_eager(store: list):
    """An attention function for transformers' AttentionInterface: its own eager attention, with the maps kept."""
    def attend(module, query, key, value, attention_mask, **kwargs):
        out, weights = eager_attention_forward(module, query, key, value, attention_mask, **kwargs)
        store.append((module, weights))
        return out, weights
    return attend


def test_attention_received_keeps_the_oracle_top_tokens():
    torch.manual_seed(1)
    m = Qwen3VLForConditionalGeneration(tiny_config()).eval()
    m.generation_config.pad_token_id = PAD
    with torch.no_grad():  # sharpen the last block's attention so that the ranking is far from a tie
        m.model.visual.blocks[-1].attn.qkv.weight.mul_(8.0)
    inputs = batch([[(1, 4, 8), (1, 6, 4)]], seed=3)  # 8 and 6 merged tokens
    store = []
    AttentionInterface.register("q3_recording_eager", recording_eager(store))
    vision = m.model.visual.config
    vision._attn_implementation = "q3_recording_eager"
    try:
        with torch.no_grad():
            m.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
    finally:
        vision._attn_implementation = "sdpa"
    last = m.model.visual.blocks[-1].attn
    maps = [w for module, w in store if module is last]  # one (1, H, n, n) map per image at the last block
    expected = []
    for w in maps:
        per_patch = w[0].float().mean(dim=(0, 1))  # mean over heads and queries: attention each patch receives
        per_token = per_patch.view(-1, 4).sum(-1)  # the 4 patches of each merged token are consecutive rows
        expected.append(per_token.topk(3).indices.sort().values)
    with apply_pruning(m, "attention_received", 3) as handle:
        logits = logits_of(m, dict(inputs))[:, -1]
        kept = kept_flat(handle, "image", inputs["image_grid_thw"])
    assert len(maps) == 2 and [k.tolist() for k in kept] == [e.tolist() for e in expected]
    assert [k.tolist() for k in kept] != [uniform_keep(8, 3).tolist(), uniform_keep(6, 3).tolist()]
    prefill, _, _ = oracle_run(m, inputs, kept, steps=1)
    torch.testing.assert_close(logits, prefill, rtol=0, atol=1e-5)


def test_fastv_after_the_deepstack_levels_equals_the_oracle(model):
    """FastV at K = 2 (both DeepStack levels added before it): the kept set is the top-2 visual tokens of the last
    prompt token's head-mean attention at layer K, from transformers' own eager attention maps (after Qwen3's
    q_norm / k_norm, which the model applies before the rotary); the pruned logits equal layers run by hand, every
    token up to layer K, the kept ones at their original 3-D positions after, DeepStack at the kept visual tokens."""
    inputs = batch([[(1, 4, 6)]])
    ids = inputs["input_ids"]
    lm, k = model.model.language_model, 2
    with torch.no_grad():
        positions, _ = model.model.get_rope_index(ids, inputs["mm_token_type_ids"],
                                                  image_grid_thw=inputs["image_grid_thw"].clone())
        merged, deep = oracle_features(model, inputs)
        visual = ids == IMAGE
        embeds = lm.embed_tokens(ids)
        embeds[visual] = torch.cat(merged)
        deepstack = [torch.cat(level) for level in deep]
        lm.config._attn_implementation = "eager"
        try:
            maps = lm(inputs_embeds=embeds, position_ids=positions, visual_pos_masks=visual,
                      deepstack_visual_embeds=deepstack, output_attentions=True).attentions
        finally:
            lm.config._attn_implementation = "sdpa"
        row = maps[k - 1][0].float().mean(dim=0)[-1]  # (L,) last query, head mean
        visual_columns = visual[0].nonzero().flatten()
        top = visual_columns[row[visual_columns].topk(2).indices]
        kept = (~visual[0]).nonzero().flatten().tolist() + top.tolist()
        kept = torch.tensor(sorted(kept))
        hidden = embeds
        for i, layer in enumerate(lm.layers):
            if i == k:
                hidden, positions, visual = hidden[:, kept], positions[:, :, kept], visual[:, kept]
            hidden = layer(hidden, attention_mask=None, position_embeddings=lm.rotary_emb(hidden, positions))
            if i < len(deepstack):
                hidden = lm._deepstack_process(hidden, visual, deepstack[i])
        expected = model.lm_head(lm.norm(hidden))[:, -1]
    with apply_pruning(model, "fastv", 2, llm_layer=k) as handle:
        logits = logits_of(model, dict(inputs))[:, -1]
        assert handle.llm_pruner.kept[0].tolist() == kept.tolist()
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def test_image_and_video_in_one_prompt_equal_the_oracle(model):
    """An image then a 2-frame video in one prompt: transformers interleaves the two kinds' DeepStack rows by
    position (`visual_pos_masks` = image | video); the oracle places each level's rows at their own positions."""
    image_ids, image_types = sample_ids([(1, 4, 6)], IMAGE)
    video_ids, video_types = sample_ids([(2, 4, 4)], VIDEO)
    ids = torch.tensor([image_ids[:-len(SUFFIX)] + video_ids[len(PREFIX):]])
    types = torch.tensor([image_types[:-len(SUFFIX)] + video_types[len(PREFIX):]])
    generator = torch.Generator().manual_seed(5)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": types,
              "pixel_values": torch.randn(24, ROW, generator=generator), "image_grid_thw": torch.tensor([[1, 4, 6]]),
              "pixel_values_videos": torch.randn(32, ROW, generator=generator),
              "video_grid_thw": torch.tensor([[2, 4, 4]])}
    reference = logits_of(model, dict(inputs))[:, -1]
    with apply_pruning(model, "uniform", None):
        torch.testing.assert_close(logits_of(model, dict(inputs))[:, -1], reference, rtol=0, atol=1e-5)
    with apply_pruning(model, "uniform", 2) as handle:
        logits = logits_of(model, dict(inputs))[:, -1]
        kept = {"image": kept_flat(handle, "image", inputs["image_grid_thw"]),
                "video": kept_flat(handle, "video", inputs["video_grid_thw"])}
        assert handle.last_v_token_num == 2 + 2 * 2
        tokens = model.generate(**dict(inputs), max_new_tokens=3, do_sample=False)[:, ids.shape[1]:]
    assert kept["image"][0].tolist() == uniform_keep(6, 2).tolist()
    assert kept["video"][0].tolist() == torch.cat([uniform_keep(4, 2), uniform_keep(4, 2) + 4]).tolist()
    prefill, greedy, _ = oracle_run(model, inputs, kept)
    torch.testing.assert_close(logits, prefill, rtol=0, atol=1e-5)
    assert torch.equal(tokens, greedy)
