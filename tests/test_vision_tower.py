"""The tower's features and [CLS] attention against an independent full eager computation."""

import pytest
import torch

from llava.model.multimodal_encoder.builder import build_vision_tower, clip_vision_state_dict
from llava.model.pruning import selectors
from llava.utils import load_state_dict


class Cfg:
    mm_vision_select_layer = -2
    mm_vision_select_feature = "patch"


def reference_model(clip_dir):
    """transformers' CLIPVisionModel, eager, with every layer's attention maps (the original approach)."""
    from transformers import CLIPVisionModel

    from llava.model.multimodal_encoder.builder import clip_vision_config

    model = CLIPVisionModel._from_config(clip_vision_config(clip_dir), attn_implementation="eager")
    model.load_state_dict(clip_vision_state_dict(load_state_dict(clip_dir)), strict=False)
    return model.eval()


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_cls_attention_equals_full_eager_map_at_selected_layer(clip_dir, backend):
    tower = build_vision_tower(Cfg(), clip_dir, attn_implementation=backend)
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = tower(pixels)
    with torch.no_grad():
        ref = reference_model(clip_dir)(pixels, output_attentions=True, output_hidden_states=True)
    assert out.features.shape == (3, 16, 32) and out.cls_attn.shape == (3, 16)
    torch.testing.assert_close(out.features, ref.hidden_states[-2][:, 1:], atol=1e-5, rtol=1e-5)
    expected = ref.attentions[-2].mean(dim=1)[:, 0, 1:]  # head mean, [CLS] query row, patch columns
    torch.testing.assert_close(out.cls_attn, expected, atol=1e-6, rtol=1e-5)
    # the [CLS] key's own share is excluded, so rows sum to a little less than one
    assert (out.cls_attn.sum(-1) < 1).all() and (out.cls_attn.sum(-1) > 0.5).all()


def test_layers_after_the_selected_one_never_run(clip_dir):
    tower = build_vision_tower(Cfg(), clip_dir)
    layers = tower.vision_tower.encoder.layers
    calls = []
    handles = [layer.register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n, layer in enumerate(layers)]
    tower(torch.zeros(1, 3, 32, 32))
    for h in handles:
        h.remove()
    assert calls == [0, 1]  # 3 layers, select -2: the last layer is skipped


@pytest.mark.parametrize("feature", ["pooled", "cls_patch"])
def test_unsupported_select_options(clip_dir, feature):
    class Bad(Cfg):
        mm_vision_select_feature = feature

    with pytest.raises(ValueError, match=f"unknown mm_vision_select_feature '{feature}'"):
        build_vision_tower(Bad(), clip_dir)

    class BadLayer(Cfg):
        mm_vision_select_layer = -5

    with pytest.raises(ValueError, match="mm_vision_select_layer=-5"):
        build_vision_tower(BadLayer(), clip_dir)


def test_cls_patch_is_rejected_before_loading(clip_dir):
    class WithCls(Cfg):
        mm_vision_select_feature = "cls_patch"

    with pytest.raises(ValueError, match="supported: \\('patch',\\)"):
        build_vision_tower(WithCls(), clip_dir)


def test_fastervlm_keeps_hand_checked_topk_in_raster_order():
    cls_attn = torch.tensor([[0.05, 0.30, 0.01, 0.20, 0.02, 0.25, 0.07, 0.10],
                             [0.50, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.29]])
    keep = selectors.fastervlm(None, cls_attn, 3)
    # row 0: top-3 scores 0.30 (1), 0.25 (5), 0.20 (3) -> raster order 1, 3, 5
    # row 1: 0.50 (0), 0.29 (7), 0.06 (6) -> 0, 6, 7
    assert keep.tolist() == [[1, 3, 5], [0, 6, 7]]
    assert selectors.fastervlm(None, cls_attn, 8).tolist() == [list(range(8))] * 2


def test_random_and_uniform_selectors():
    attn = torch.rand(2, 16)
    r1, r2 = selectors.random(None, attn, 5, seed=3), selectors.random(None, attn, 5, seed=3)
    assert torch.equal(r1, r2) and r1.shape == (2, 5)
    assert not torch.equal(r1[0], r1[1])  # each crop draws its own subset
    assert torch.equal(selectors.random(None, attn[1:], 5, seed=3)[0], r1[1])  # independent of the batch
    assert all(row == sorted(set(row)) for row in r1.tolist())
    assert selectors.uniform(None, attn, 4).tolist() == [[2, 6, 10, 14]] * 2
    assert selectors.uniform(None, attn, 16).tolist() == [list(range(16))] * 2
