"""The model path against references that do not run our selection, merge or splice code.

Sources of truth, all written or run inside this file:
- the original FasterVLM merge (Theia-4869/FasterVLM, llava/model/llava_arch.py,
  `prepare_inputs_labels_for_multimodal`), transcribed as `fastervlm_spatial` / `fastervlm_spatial_unpad`: full
  per-crop feature maps, a boolean top-k mask per crop, the grid crops stitched into one (rows * side, cols * side)
  map, flattened, masked; base crop first;
- haotian-liu/LLaVA's `unpad_image` (llava/model/llava_arch.py), transcribed as `llava_unpad_image` (it truncates
  with `int(x)`), and transformers' own `unpad_image` (llava_next), which rounds first, to show which sizes differ;
- transformers' eager `CLIPVisionModel` with `output_attentions=True` for the [CLS] attention and the patch features
  (`tests.hf_helpers.eager_cls_attention`), transformers' projector / `image_newline` modules, and
  `LlavaForConditionalGeneration` for whole-model logits;
- plain `torch.topk` and a float64 softmax for the kept sets.
"""

from __future__ import annotations

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import process_images
from llava.model.merge import GridLayout, merge_grid_paper, merge_grid_upstream, unpad_window
from llava.model.pruning import as_selection
from tests.conftest import pil_image
from tests.hf_helpers import hf_model, hf_processor
from tests.oracle_llava import cls_attention_and_features as eager_cls_attention
from tests.test_model import prompt_ids
from tests.tiny_checkpoints import IMAGE_SIZE, PATCH_SIZE, PATCHES

SIDE = IMAGE_SIZE // PATCH_SIZE  # patches per crop side (4)
SELECT_LAYER = -2  # mm_vision_select_layer of the tiny checkpoints (as of every LLaVA-1.5 / 1.6 checkpoint)


# ---------------------------------------------------------------------------------------------------------------
# oracles
# ---------------------------------------------------------------------------------------------------------------
def llava_unpad_image(tensor: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
    """haotian-liu/LLaVA `unpad_image`, transcribed: tensor (C, H, W) of the padded canvas, original_size (w, h)."""
    original_width, original_height = original_size
    current_height, current_width = tensor.shape[1:]
    if original_width / original_height > current_width / current_height:
        new_height = int(original_height * (current_width / original_width))
        padding = (current_height - new_height) // 2
        return tensor[:, padding:current_height - padding, :]
    new_width = int(original_width * (current_height / original_height))
    padding = (current_width - new_width) // 2
    return tensor[:, :, padding:current_width - padding]


def window_of(unpad, size, height, width, **kw) -> tuple[int, int, int, int]:
    """(r0, r1, c0, c1) an unpad function keeps, read off a (2, height, width) tensor of row / column indices."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    kept = unpad(torch.stack([rows, cols]), size, **kw)
    return int(kept[0].min()), int(kept[0].max()) + 1, int(kept[1].min()), int(kept[1].max()) + 1


def fastervlm_spatial(feats: torch.Tensor, mask: torch.Tensor, cols: int, rows: int) -> torch.Tensor:
    """FasterVLM's 'spatial' merge: feats (crops, P, D) of every patch, mask (crops, P) bool -> (kept, D)."""
    base = feats[0][mask[0]]
    if feats.shape[0] == 1:
        return base
    d = feats.shape[-1]
    grid = feats[1:].view(rows, cols, SIDE, SIDE, d).permute(0, 2, 1, 3, 4).flatten(0, 3)
    grid_mask = mask[1:].view(rows, cols, SIDE, SIDE).permute(0, 2, 1, 3).flatten(0, 3)
    return torch.cat([base, grid[grid_mask]])


def fastervlm_spatial_unpad(feats, mask, cols, rows, image_size, newline) -> torch.Tensor:
    """FasterVLM's 'spatial_unpad' merge (LLaVA-1.6's layout with the top-k mask; newlines always kept), using
    haotian's `unpad_image`. feats (crops, P, D), mask (crops, P), newline (D,) -> (kept, D)."""
    d = feats.shape[-1]
    grid = feats[1:].view(rows, cols, SIDE, SIDE, d).permute(4, 0, 2, 1, 3).flatten(1, 2).flatten(2, 3)  # (D, H, W)
    grid_mask = mask[1:].view(rows, cols, SIDE, SIDE).permute(0, 2, 1, 3).unsqueeze(0).flatten(1, 2).flatten(2, 3)
    grid, grid_mask = llava_unpad_image(grid, image_size), llava_unpad_image(grid_mask, image_size)
    grid = torch.cat([grid, newline[:, None, None].expand(d, grid.shape[1], 1)], dim=-1)
    grid_mask = torch.cat([grid_mask, torch.ones(1, grid_mask.shape[1], 1, dtype=torch.bool)], dim=-1)
    grid = grid.flatten(1, 2).transpose(0, 1)
    return torch.cat([feats[0][mask[0]], grid[grid_mask.flatten(1, 2).squeeze(0)]])


def topk_mask(attn: torch.Tensor, k: int) -> torch.Tensor:
    """(N, P) scores -> (N, P) bool mask of each row's top k (the original's scatter of torch.topk indices). The
    k-th and (k+1)-th scores must be apart, so that float noise between eager and sdpa cannot flip the set."""
    ordered = attn.sort(dim=-1, descending=True).values
    if k < attn.shape[-1]:
        assert (ordered[:, k - 1] - ordered[:, k]).min() > 1e-5, "test case has a near tie at the budget boundary"
    mask = torch.zeros_like(attn, dtype=torch.bool)
    return mask.scatter_(1, attn.topk(k, dim=-1).indices, True)


@pytest.fixture(scope="module")
def hf_llava(v15_dir, clip_dir):
    """(transformers' LlavaForConditionalGeneration with the v1.5 tiny weights, eager; its image token id)."""
    return hf_model("llava", v15_dir, clip_dir, attn_implementation="eager")


@pytest.fixture(scope="module")
def hf_next(v16_dir, clip_dir):
    """transformers' LlavaNextForConditionalGeneration with the v1.6 tiny weights (own tower), eager."""
    return hf_model("llava_next", v16_dir, clip_dir, attn_implementation="eager")[0]


def spy_selection(model) -> list[torch.Tensor]:
    """Record the kept indices (N, m) of every `select` call of this model's pipeline (install after set_pruning)."""
    calls, original = [], model.visual.select

    def select(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append(as_selection(result).keep.clone())
        return result

    model.visual.select = select
    return calls


def oracle_visual_tokens(hf, pixels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One image's crops (crops, 3, S, S) through transformers' modules: ([CLS] attention (crops, P), top-k mask
    (crops, P), projected features of every patch (crops, P, D)), as FasterVLM's `encode_images` computes them."""
    attn, feats = eager_cls_attention(hf.model.vision_tower, pixels)
    with torch.no_grad():
        projected = hf.model.multi_modal_projector(feats)
    return attn, topk_mask(attn, k), projected


# ---------------------------------------------------------------------------------------------------------------
# a. paper-mode anyres merge: the original FasterVLM token order
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cols,rows", [(2, 2), (1, 2), (2, 1)])
def test_paper_merge_equals_fastervlm_order_on_hand_chosen_keeps(cols, rows):
    """Distinct features per (crop, patch); each crop keeps a different scattered set, so the order is observable."""
    gen = torch.Generator().manual_seed(cols * 10 + rows)
    n_grid, k, d = cols * rows, 5, 3
    feats = torch.randn(1 + n_grid, PATCHES, d, generator=gen)
    keep = torch.stack([torch.randperm(PATCHES, generator=gen)[:k].sort().values for _ in range(1 + n_grid)])
    mask = torch.zeros(1 + n_grid, PATCHES, dtype=torch.bool).scatter_(1, keep, True)
    expected = fastervlm_spatial(feats, mask, cols, rows)
    gathered = feats.gather(1, keep.unsqueeze(-1).expand(-1, -1, d))  # (crops, k, D): what the projector returns
    ours = torch.cat([gathered[0], merge_grid_paper(gathered[1:], keep[1:], GridLayout(cols=cols, rows=rows,
                                                                                      side=SIDE))])
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("size,cols,rows", [((40, 40), 2, 2), ((30, 70), 1, 2), ((60, 30), 2, 1)])
def test_paper_mode_visual_tokens_equal_fastervlm_on_transformers_modules(v16_dir, hf_next, load, size, cols, rows):
    """End to end: our v1.6 model in paper mode vs the original's merge over transformers' tower and projector.
    Grids by the paper rule, by hand: 40x40 fills 64x64 best (2x2), 30x70 fills 32x64 (1 across, 2 down), 60x30
    fills 64x32 (2 across, 1 down)."""
    _, model, proc, _ = load(v16_dir, visual_token_num=3)
    # (crops, 3, S, S)
    pixels = process_images([pil_image(*size, seed=11)], proc, model.config,
                            anyres_mode=model.pruning.anyres_mode)[0]
    assert pixels.shape[0] == 1 + cols * rows
    _, mask, projected = oracle_visual_tokens(hf_next, pixels, 3)
    expected = fastervlm_spatial(projected, mask, cols, rows)
    ours = model.visual_tokens([pixels], image_sizes=[size]).embeds[0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# b. batches: per-sample [CLS] attention and kept indices
# ---------------------------------------------------------------------------------------------------------------
def left_padded(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.zeros(longest - len(p), dtype=torch.long), p]) for p in prompts])
    mask = torch.stack([torch.cat([torch.zeros(longest - len(p)), torch.ones(len(p))]).long() for p in prompts])
    return ids, mask


def test_batch_cls_attn_and_kept_indices_per_sample_v15(v15_dir, hf_llava, load):
    tok, model, proc, _ = load(v15_dir, visual_token_num=4)
    images = [pil_image(32, 32, seed=s) for s in (7, 8, 9)]
    prompts = [prompt_ids(tok, q)[0] for q in ("what is in this image?", "describe", "color?")]
    pixels = process_images(images, proc, model.config, anyres_mode=model.pruning.anyres_mode)
    spy = spy_selection(model)
    singles = []
    for p, px in zip(prompts, pixels):
        _, _, attn = model.generate(p[None], images=px[None], max_new_tokens=1, do_sample=False)
        singles.append((attn, spy[-1]))
    ids, mask = left_padded(prompts)
    _, counts, batch_attn = model.generate(ids, attention_mask=mask, images=pixels, max_new_tokens=1,
                                           do_sample=False)
    batch_keep = spy[-1]  # (3, 4): one row per image
    expected_attn, expected_mask, _ = oracle_visual_tokens(hf_llava[0], pixels, 4)
    assert counts == [4, 4, 4]
    for i, (single_attn, single_keep) in enumerate(singles):
        torch.testing.assert_close(batch_attn[i], expected_attn[i:i + 1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(single_attn, expected_attn[i:i + 1], atol=1e-5, rtol=1e-4)
        oracle_keep = expected_mask[i].nonzero().flatten().tolist()  # raster order, as the boolean mask reads
        assert batch_keep[i].tolist() == single_keep[0].tolist() == oracle_keep
    # Different images rank differently: a bug that hands sample 0's values to everyone cannot pass.
    assert len({tuple(k.tolist()) for k in batch_keep}) == 3
    assert not torch.allclose(batch_attn[0], batch_attn[1], atol=1e-3)


def test_batch_cls_attn_and_kept_indices_per_sample_v16_paper(v16_dir, hf_next, load):
    """Two LLaVA-1.6 images with different grids (2x2 and 1x2): per sample (crops_i, P) attention, base crop first."""
    tok, model, proc, _ = load(v16_dir, visual_token_num=3)
    sizes = [(40, 40), (30, 70)]
    images = [pil_image(*s, seed=20 + i) for i, s in enumerate(sizes)]
    pixels = process_images(images, proc, model.config, anyres_mode=model.pruning.anyres_mode)  # a list: 5 and 3 crops
    prompts = [prompt_ids(tok)[0], prompt_ids(tok, "describe")[0]]
    spy = spy_selection(model)
    ids, mask = left_padded(prompts)
    _, counts, batch_attn = model.generate(ids, attention_mask=mask, images=pixels, image_sizes=sizes,
                                           max_new_tokens=1, do_sample=False)
    keep = spy[-1].split([5, 3])
    assert counts == [3 * 5, 3 * 3]
    for i, px in enumerate(pixels):
        expected_attn, expected_mask, _ = oracle_visual_tokens(hf_next, px, 3)
        torch.testing.assert_close(batch_attn[i], expected_attn, atol=1e-5, rtol=1e-4)
        assert keep[i].tolist() == [row.nonzero().flatten().tolist() for row in expected_mask]
        _, _, single_attn = model.generate(prompts[i][None], images=[px], image_sizes=[sizes[i]], max_new_tokens=1,
                                           do_sample=False)
        torch.testing.assert_close(single_attn, expected_attn, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# c. multi-image prompts at full budget: transformers' Llava
# ---------------------------------------------------------------------------------------------------------------
def expand_all_image_tokens(ids: torch.Tensor, n_tokens: int, image_token_id: int) -> torch.Tensor:
    """(1, L) ids -> every IMAGE_TOKEN_INDEX replaced by `n_tokens` copies of transformers' image token."""
    pieces = [torch.full((n_tokens,), image_token_id) if t == IMAGE_TOKEN_INDEX else t.view(1) for t in ids[0]]
    return torch.cat(pieces).unsqueeze(0)


def test_two_images_in_one_prompt_match_transformers_llava_in_order(v15_dir, hf_llava, load):
    tok, model, proc, _ = load(v15_dir)
    ref_model, vocab = hf_llava
    pixels = process_images([pil_image(32, 32, seed=31), pil_image(40, 24, seed=32)], proc, model.config,
                            anyres_mode=model.pruning.anyres_mode)
    ids = prompt_ids(tok, "compare the two images", n_images=2)
    hf_ids = expand_all_image_tokens(ids, PATCHES, vocab)
    results = {}
    for name, order in (("as given", [0, 1]), ("swapped", [1, 0])):
        ours = model(ids, images=pixels[order]).logits
        with torch.no_grad():
            ref = ref_model(input_ids=hf_ids, pixel_values=pixels[order]).logits[..., :vocab]
        assert ours.shape == ref.shape == (1, ids.shape[1] - 2 + 2 * PATCHES, vocab)
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)
        results[name] = ours
    # The images matter and so does their order: the swapped prompt is a different input.
    assert (results["as given"] - results["swapped"]).abs().max() > 1e-2


def test_batch_of_multi_image_prompts_gives_each_sample_its_images_in_order(v15_dir, hf_llava, load):
    """Sample 0 holds images 0 and 1, sample 1 holds image 2: each sample's spliced, left-padded prompt through the
    LLM equals transformers' Llava on that sample alone with its own images."""
    tok, model, proc, _ = load(v15_dir)
    ref_model, vocab = hf_llava
    pixels = process_images([pil_image(32, 32, seed=51), pil_image(40, 24, seed=52), pil_image(24, 40, seed=53)],
                            proc, model.config, anyres_mode=model.pruning.anyres_mode)
    prompts = [prompt_ids(tok, "compare", n_images=2)[0], prompt_ids(tok, "what is in this image?")[0]]
    ids, mask = left_padded(prompts)
    mm = model.prepare_multimodal_inputs(ids, mask, pixels)
    for b, own_images in enumerate(([0, 1], [2])):
        embeds = mm.inputs_embeds[b][mm.attention_mask[b].bool()]  # this sample's tokens, padding dropped
        with torch.no_grad():
            ours = model(inputs_embeds=embeds[None]).logits
            ref = ref_model(input_ids=expand_all_image_tokens(prompts[b][None], PATCHES, vocab),
                            pixel_values=pixels[own_images]).logits[..., :vocab]
        torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# d. upstream (LLaVA-1.6 spatial_unpad) rounding: haotian's `unpad_image`
# ---------------------------------------------------------------------------------------------------------------
# (w, h) image, (height, width) of the patch grid, branch. Found by a loop over sizes: haotian's int(x) and
# transformers' int(round(x, 7)) give different windows here (the scaled side is 2.9999999999999996 and the like).
# The tiny ones are also the grids the upstream rule picks for them (188x47 -> 96x32 canvas, 3x1 crops of 4x4).
DIFFERING = [((188, 47), (4, 12), "wide"), ((47, 188), (12, 4), "tall"), ((392, 343), (8, 8), "wide"),
             ((343, 392), (8, 8), "tall"),
             # LLaVA-1.6 (336px crops, 24x24 patches) at the grids upstream picks for these sizes
             ((88, 55), (48, 24), "wide"), ((328, 205), (48, 24), "wide"), ((352, 748), (72, 24), "wide"),
             ((55, 176), (48, 24), "tall"), ((205, 984), (72, 24), "tall"), ((396, 704), (48, 48), "tall")]


@pytest.mark.parametrize("size,grid,branch", DIFFERING)
def test_unpad_window_follows_llava_where_transformers_rounds_differently(size, grid, branch):
    from transformers.models.llava_next.modeling_llava_next import unpad_image as transformers_unpad_image

    height, width = grid
    w, h = size
    assert (w / h > width / height) == (branch == "wide")
    expected = window_of(llava_unpad_image, size, height, width)
    theirs = window_of(lambda t, s: transformers_unpad_image(t, (s[1], s[0])), size, height, width)
    assert expected != theirs  # the case discriminates the two rules
    assert unpad_window(size, height, width) == expected
    assert unpad_window(size, height, width, "transformers") == theirs


def test_unpad_window_equals_llava_on_a_sweep_of_sizes():
    grids = [(4, 8), (8, 4), (8, 8), (4, 12), (12, 4), (24, 48), (48, 24), (48, 48), (24, 72), (72, 24)]
    branches = set()
    for height, width in grids:
        positions = torch.arange(height * width).view(1, height, width)
        for w in range(1, 120, 7):
            for h in range(1, 120, 5):
                branches.add(w / h > width / height)
                r0, r1, c0, c1 = unpad_window((w, h), height, width)
                expected = llava_unpad_image(positions, (w, h))  # may be empty for extreme aspect ratios
                assert torch.equal(positions[:, r0:r1, c0:c1], expected), ((w, h), height, width)
    assert branches == {True, False}


@pytest.mark.parametrize("size,cols,rows,budget", [((188, 47), 3, 1, 5), ((47, 188), 1, 3, 5),
                                                   ((188, 47), 3, 1, PATCHES), ((47, 188), 1, 3, PATCHES)])
def test_upstream_mode_visual_tokens_equal_fastervlm_unpad_with_llava_rounding(v16_dir, hf_next, load, size, cols,
                                                                                rows, budget):
    """Our v1.6 model in upstream mode vs FasterVLM's spatial_unpad merge with haotian's unpad_image, over
    transformers' modules (tower, projector, image_newline). Both branches, pruned and full budget; at these sizes
    transformers' rounding would keep one more patch row (column) of padding."""
    _, model, proc, _ = load(v16_dir, visual_token_num=budget, anyres_mode="upstream")
    pixels = process_images([pil_image(*size, seed=12)], proc, model.config, anyres_mode=model.pruning.anyres_mode)[0]
    assert pixels.shape[0] == 1 + cols * rows  # upstream rule by hand: 188x47 fits 96x32 with most pixels
    _, mask, projected = oracle_visual_tokens(hf_next, pixels, budget)
    newline = hf_next.model.image_newline.detach()
    expected = fastervlm_spatial_unpad(projected, mask, cols, rows, size, newline)
    ours = model.visual_tokens([pixels], image_sizes=[size]).embeds[0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_pure_upstream_merge_equals_fastervlm_unpad_on_hand_chosen_keeps():
    gen = torch.Generator().manual_seed(3)
    for size, cols, rows in [((188, 47), 3, 1), ((47, 188), 1, 3), ((80, 20), 2, 1)]:
        n_grid, d = cols * rows, 2
        feats = torch.randn(1 + n_grid, PATCHES, d, generator=gen)
        keep = torch.stack([torch.randperm(PATCHES, generator=gen)[:6].sort().values for _ in range(1 + n_grid)])
        mask = torch.zeros(1 + n_grid, PATCHES, dtype=torch.bool).scatter_(1, keep, True)
        newline = torch.tensor([-7.0, 7.0])
        gathered = feats.gather(1, keep.unsqueeze(-1).expand(-1, -1, d))
        layout = GridLayout(cols=cols, rows=rows, side=SIDE)
        ours = torch.cat([gathered[0], merge_grid_upstream(gathered[1:], keep[1:], layout, size, newline)])
        assert torch.equal(ours, fastervlm_spatial_unpad(feats, mask, cols, rows, size, newline)), size


def test_llava_hf_models_keep_transformers_rounding(v16_dir, clip_dir, tok_dir):
    """`llava.hf.apply_pruning` on a transformers LlavaNext: its processor counted the placeholders with
    transformers' rounding, so at full budget the pruned model must still be the unmodified one at 188x47."""
    from llava.hf import apply_pruning

    model, _ = hf_model("llava_next", v16_dir, clip_dir, attn_implementation="eager")
    processor = hf_processor("llava_next", tok_dir, clip_dir)
    inputs = processor(images=pil_image(188, 47, seed=5), text="USER: <image>\nwhat is it? ASSISTANT:",
                       return_tensors="pt")
    with torch.no_grad():
        ref = model(**inputs).logits
        with apply_pruning(model) as handle:
            logits = model(**inputs).logits
    assert handle.last_v_token_num == int((inputs["input_ids"] == model.config.image_token_id).sum())
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# e. the projector sees only the kept tokens
# ---------------------------------------------------------------------------------------------------------------
def projector_inputs(model) -> list[torch.Tensor]:
    seen = []
    model.get_model().mm_projector.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    return seen


def test_projector_input_is_the_kept_tower_features_v15(v15_dir, hf_llava, load):
    _, model, proc, _ = load(v15_dir, visual_token_num=5)
    pixels = process_images([pil_image(32, 32, seed=41), pil_image(40, 24, seed=42)], proc, model.config,
                            anyres_mode=model.pruning.anyres_mode)
    seen = projector_inputs(model)
    model.visual_tokens(pixels)
    attn, feats = eager_cls_attention(hf_llava[0].model.vision_tower, pixels)
    mask = topk_mask(attn, 5)
    assert len(seen) == 1 and seen[0].shape == (2, 5, feats.shape[-1])  # 5 of 16 tokens per image: the saving
    for i in range(2):
        torch.testing.assert_close(seen[0][i], feats[i][mask[i]], atol=1e-5, rtol=1e-5)


def test_projector_input_is_the_kept_tower_features_v16(v16_dir, hf_next, load):
    _, model, proc, _ = load(v16_dir, visual_token_num=3)
    # 5 crops
    pixels = process_images([pil_image(40, 40, seed=43)], proc, model.config, anyres_mode=model.pruning.anyres_mode)[0]
    seen = projector_inputs(model)
    model.visual_tokens([pixels], image_sizes=[(40, 40)])
    attn, feats = eager_cls_attention(hf_next.model.vision_tower, pixels)
    mask = topk_mask(attn, 3)
    assert len(seen) == 1 and seen[0].shape == (5, 3, feats.shape[-1])
    torch.testing.assert_close(seen[0], torch.stack([feats[i][mask[i]] for i in range(5)]), atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# f. low-precision towers score in float32
# ---------------------------------------------------------------------------------------------------------------
def attention_from_qk(q: torch.Tensor, k: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """Oracle: softmax(q_cls . K^T / sqrt(d)) of each head, head mean, patch columns; computed in `dtype`.
    q, k (N, T, C) -> (N, T - 1)."""
    n, t, c = k.shape
    d = c // heads
    q_cls = q[:, :1].to(dtype).view(n, 1, heads, d).transpose(1, 2)
    keys = k.to(dtype).view(n, t, heads, d).transpose(1, 2)
    scores = (q_cls @ keys.transpose(-1, -2)) / d**0.5
    return scores.softmax(dim=-1).mean(dim=1).squeeze(1)[:, 1:]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_kept_set_equals_float_scoring_of_the_same_qk(v15_dir, load, dtype):
    """Captured low-precision q/k of the selected layer; oracle: float64 scores. Over several images and every
    budget the kept set must equal the oracle's, and for at least one case scoring in the tower's own dtype would
    pick a different set (so the test guards the upcast)."""
    _, model, proc, _ = load(v15_dir, dtype=dtype)
    tower = model.get_vision_tower()
    attn_module = tower.vision_tower.encoder.layers[SELECT_LAYER].self_attn  # layer whose output is selected
    captured = {}
    attn_module.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o.detach()))
    attn_module.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o.detach()))
    pixels = process_images([pil_image(32, 32, seed=s) for s in range(40)], proc, model.config)  # LLaVA-1.5: pad
    guarded, checked = 0, 0
    for budget in range(1, PATCHES):
        model.set_pruning(model.pruning.replace(visual_token_num=budget))
        keep = torch.cat(model.visual_tokens(pixels).keep)  # (40, budget): one crop per image
        assert captured["q"].dtype == dtype
        exact = attention_from_qk(captured["q"], captured["k"], attn_module.num_heads, torch.float64)
        naive = attention_from_qk(captured["q"], captured["k"], attn_module.num_heads, dtype)
        ordered = exact.sort(dim=-1, descending=True).values
        for i in range(len(pixels)):
            if ordered[i, budget - 1] - ordered[i, budget] < 1e-6:
                continue  # a float64 near tie: float32 may legitimately order it either way
            expected = set(exact[i].topk(budget).indices.tolist())
            assert set(keep[i].tolist()) == expected, (i, budget)
            checked += 1
            guarded += set(naive[i].float().topk(budget).indices.tolist()) != expected
    assert checked > 0.9 * len(pixels) * (PATCHES - 1)
    assert guarded >= 1, f"no case where {dtype} scoring changes the kept set: the upcast is untested"
