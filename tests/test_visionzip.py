"""VisionZip against an oracle written from its public code (dvlab-research/VisionZip, `visionzip/clip_encoder.py`
`CLIPVisionTower_VisionZip.forward`, `visionzip/utils.py` `CLIPAttention_forward` and `visionzip/llava_arch.py`
`restore_image_features_sorted`), with the tower's inputs taken from transformers' own eager CLIPVisionModel.

The oracle works on the full token sequence ([CLS] at 0) as the public code does: per-head [CLS] attention summed
over heads, top (dominant - 1) patches plus [CLS] as dominant tokens (sequence order), the head-mean keys of the same
layer as the similarity metric, targets every (R // contextual)-th remaining token, contextual token = target hidden
state + mean of the hidden states assigned to it; output [dominant tokens, contextual tokens].
"""

import copy

import pytest
import torch
from transformers import CLIPVisionModel

from llava.mm_utils import process_images
from llava.model.pruning import METHODS
from llava.model.pruning.visionzip import split_budget, visionzip
from tests.conftest import pil_image
from tests.tiny_checkpoints import PATCHES


def oracle(hidden: torch.Tensor, cls_rows: torch.Tensor, metric: torch.Tensor, dominant: int, contextual: int):
    """hidden (B, T, C) with [CLS] at 0, cls_rows (B, H, T) the [CLS] query's attention per head, metric (B, T, Ck).
    Returns per sample (tokens (dominant + contextual, C), kept sequence positions of the dominant patches)."""
    results = []
    for b in range(hidden.shape[0]):
        ranking = cls_rows[b, :, 1:].double().sum(dim=0)
        top = sorted((ranking.topk(dominant - 1).indices + 1).tolist())
        chosen = [0] + top
        rest = [t for t in range(hidden.shape[1]) if t not in chosen]
        tokens = [hidden[b, t].double() for t in chosen]
        if contextual:
            step = max(1, len(rest) // contextual)
            targets = [rest[i] for i in range(0, len(rest), step)][:contextual]
            unit = metric[b].double() / metric[b].double().norm(dim=-1, keepdim=True)
            groups = {t: [] for t in targets}
            for t in rest:
                if t in groups:
                    continue
                sims = torch.stack([unit[t] @ unit[g] for g in targets])
                groups[targets[int(sims.argmax())]].append(t)
            for g in targets:
                joined = groups[g]
                extra = torch.stack([hidden[b, t].double() for t in joined]).mean(0) if joined else 0.0
                tokens.append(hidden[b, g].double() + extra)
        results.append((torch.stack(tokens), [t - 1 for t in top]))
    return results


def random_layer(b=2, p=576, c=24, heads=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, 1 + p, c, generator=gen)
    cls_rows = (torch.randn(b, heads, 1 + p, generator=gen) * 3).softmax(dim=-1)
    metric = torch.randn(b, 1 + p, c // heads, generator=gen)
    return hidden, cls_rows, metric


def run_ours(hidden, cls_rows, metric, budget):
    sel = visionzip(hidden[:, 1:], cls_rows[:, :, 1:].mean(dim=1), budget, keys=metric[:, 1:], cls_token=hidden[:, 0])
    return sel, sel.tokens(hidden[:, 1:])


def test_published_splits_count_the_cls_token_as_dominant():
    # visionzip(model, dominant=54, contextual=10) keeps [CLS] + 53 patches + 10 contextual = 64 tokens
    assert [split_budget(k) for k in (64, 128, 192)] == [(54, 10), (108, 20), (162, 30)]
    assert [split_budget(k) for k in (144, 58, 29, 1)] == [(121, 23), (49, 9), (24, 5), (1, 0)]


@pytest.mark.parametrize("budget", [64, 128, 192, 58, 144, 29, 7])
def test_equals_the_public_algorithm_on_random_inputs(budget):
    hidden, cls_rows, metric = random_layer(seed=budget)
    sel, tokens = run_ours(hidden, cls_rows, metric, budget)
    dominant, contextual = split_budget(budget)
    for b, (expected, kept) in enumerate(oracle(hidden, cls_rows, metric, dominant, contextual)):
        assert sel.keep[b].tolist() == kept
        assert tokens.shape[1] == budget
        torch.testing.assert_close(tokens[b].double(), expected, rtol=1e-5, atol=1e-5)


def test_similarity_is_measured_on_the_keys_not_the_hidden_states():
    # 14 patches, budget 13 = [CLS] + 10 dominant patches + 2 contextual tokens. Patch 11's hidden state is like
    # target 10's but its key like target 12's; patch 13 the other way round: each must follow its key.
    hidden13 = torch.zeros(1, 1 + 14, 2)
    metric13 = torch.zeros(1, 1 + 14, 2)
    cls13 = torch.zeros(1, 1, 15)
    cls13[0, 0, 1:11] = 2.0  # patches 0..9 have the highest [CLS] attention
    assert split_budget(13) == (11, 2)
    # dominant patches 0..9; rest = 10, 11, 12, 13; step 4 // 2 = 2 -> targets 10 and 12; others 11, 13
    hidden13[0, 1 + 10], hidden13[0, 1 + 12] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    hidden13[0, 1 + 11], metric13[0, 1 + 11] = torch.tensor([1.0, 0.1]), torch.tensor([0.1, 1.0])  # key like 12
    hidden13[0, 1 + 13], metric13[0, 1 + 13] = torch.tensor([0.1, 1.0]), torch.tensor([1.0, 0.1])  # key like 10
    metric13[0, 1 + 10], metric13[0, 1 + 12] = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    sel = visionzip(hidden13[:, 1:], cls13[:, 0, 1:], 13, keys=metric13[:, 1:], cls_token=hidden13[:, 0])
    assert sel.keep.tolist() == [list(range(10))]
    # target 10 + mean(patch 13), target 12 + mean(patch 11): hand-computed
    torch.testing.assert_close(sel.suffix[0], torch.tensor([[1.1, 1.0], [1.0, 1.1]]))


def test_cls_token_leads_and_contextual_tokens_follow():
    hidden, cls_rows, metric = random_layer(b=1, p=16, c=8, seed=3)
    sel, tokens = run_ours(hidden, cls_rows, metric, 9)  # split (8, 1): [CLS] + 7 patches + 1 contextual
    torch.testing.assert_close(tokens[0, 0], hidden[0, 0])
    torch.testing.assert_close(tokens[0, 1:8], hidden[0, 1 + sel.keep[0]])
    assert sel.n_prefix == 1 and sel.n_suffix == 1
    # a single contextual token: the first remaining patch + the mean of all other remaining patches
    rest = [i for i in range(16) if i not in sel.keep[0].tolist()]
    expected = hidden[0, 1 + rest[0]] + hidden[0, [1 + r for r in rest[1:]]].mean(0)
    torch.testing.assert_close(tokens[0, 8], expected)


def test_budget_one_is_the_cls_token_alone():
    hidden, cls_rows, metric = random_layer(b=2, p=16, c=8)
    sel, tokens = run_ours(hidden, cls_rows, metric, 1)
    assert sel.keep.shape == (2, 0)
    torch.testing.assert_close(tokens[:, 0], hidden[:, 0])


# --- through the model: the tower's layer from transformers' eager CLIPVisionModel ---------------------------------
def eager_layer(model, pixels):
    """An independent eager run of the model's own tower weights (LLaVA-1.6 checkpoints carry their own) in
    transformers' CLIPVisionModel: hidden (B, 1 + P, C) of layer -2's output, its [CLS] rows per head (B, H, 1 + P)
    and head-mean keys (B, 1 + P, d)."""
    ours = model.get_vision_tower().vision_tower
    config = copy.deepcopy(ours.config)
    config._attn_implementation = "eager"
    reference = CLIPVisionModel(config).eval()
    reference.load_state_dict(ours.state_dict())
    model = reference
    with torch.no_grad():
        out = model(pixel_values=pixels, output_hidden_states=True, output_attentions=True)
        layer = model.encoder.layers[-2]  # transformers 5: no `vision_model.` level
        keys = layer.self_attn.k_proj(layer.layer_norm1(out.hidden_states[-3]))  # the input of layer -2
    heads = model.config.num_attention_heads
    metric = keys.view(*keys.shape[:2], heads, -1).mean(dim=2)
    return out.hidden_states[-2], out.attentions[-2][:, :, 0], metric


def test_llava_15_visual_tokens_equal_the_oracle(v15_dir, load):
    budget = 11  # split (9, 2): [CLS] + 8 patches + 2 contextual, of 16 patches
    _, model, proc, _ = load(v15_dir, visual_token_num=budget, pruning_method="visionzip")
    images = [pil_image(32, 32, seed=s) for s in (4, 5)]
    pixels = process_images(images, proc, model.config)
    visual = model.visual_tokens(pixels)
    hidden, cls_rows, metric = eager_layer(model, pixels)
    projector = model.get_model().mm_projector
    for i, (expected, _) in enumerate(oracle(hidden, cls_rows, metric, *split_budget(budget))):
        torch.testing.assert_close(visual.embeds[i], projector(expected.float()), rtol=1e-4, atol=1e-4)


def test_llava_16_grid_order_equals_visionzip_restore(v16_dir, load):
    """VisionZip's LLaVA-NeXT order: base crop as is; grid crops' dominant patches on the stitched grid in raster
    order; then the grid crops' [CLS] tokens; then their contextual tokens (crop order)."""
    budget = 11
    _, model, proc, _ = load(v16_dir, visual_token_num=budget, pruning_method="visionzip")
    size = (64, 32)  # a 2x1 grid (two crops side by side) + the base crop
    pixels = process_images([pil_image(*size, seed=6)], proc, model.config)
    visual = model.visual_tokens(pixels, image_sizes=[size])
    crops = pixels[0] if pixels.ndim == 5 else pixels
    hidden, cls_rows, metric = eager_layer(model, crops.reshape(-1, *crops.shape[-3:]))
    per_crop = oracle(hidden, cls_rows, metric, *split_budget(budget))
    cols, rows = model.visual.grid_layout(size).cols, model.visual.grid_layout(size).rows
    assert (cols, rows) == (2, 1) and len(per_crop) == 3
    side, d = 4, split_budget(budget)[0]
    placed = {}  # (row, col) on the stitched grid -> token
    for c, (tokens, kept) in enumerate(per_crop[1:]):
        for j, pos in enumerate(kept):
            placed[((c // cols) * side + pos // side, (c % cols) * side + pos % side)] = tokens[1 + j]
    grid = [placed[key] for key in sorted(placed)]
    cls_tokens = [tokens[0] for tokens, _ in per_crop[1:]]
    contextual = [t for tokens, _ in per_crop[1:] for t in tokens[d:]]
    expected = torch.stack([*per_crop[0][0], *grid, *cls_tokens, *contextual]).float()
    torch.testing.assert_close(visual.embeds[0], model.get_model().mm_projector(expected), rtol=1e-4, atol=1e-4)


def test_registry_entry_declares_the_tower_outputs_it_needs():
    assert METHODS["visionzip"] is visionzip and set(visionzip.needs) == {"keys", "cls_token"}
    assert PATCHES == 16
