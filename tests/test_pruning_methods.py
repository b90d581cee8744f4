"""Every registered pruning method: kept positions on hand-built attention / feature tensors, budgets at the edges,
one crop at a time equals all crops at once, and the same per-crop budget through the whole model."""

import pytest
import torch

from llava.model.pruning import METHODS, PruningConfig, as_selection, get_llm_pruner, get_selector
from llava.model.pruning.vispruner import vispruner
from tests.tiny_checkpoints import PATCHES

SELECTORS = sorted(name for name in METHODS if get_llm_pruner(name) is None)


def random_inputs(n=3, p=16, c=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n, p, c, generator=gen)
    cls_attn = torch.rand(n, p, generator=gen).softmax(dim=-1)
    return features, cls_attn


def run(name, features, cls_attn, budget, seed=0):
    """A registered selector, given the further tower outputs it declares (VisionZip: keys and the [CLS] row)."""
    gen = torch.Generator().manual_seed(1)
    signals = {"keys": torch.randn(*features.shape[:2], 4, generator=gen),
               "cls_token": torch.randn(features.shape[0], features.shape[2], generator=gen),
               "received": features[..., 0].sigmoid()}  # per crop, so one crop alone gets its own row
    selector = METHODS[name]
    extra = {k: signals[k] for k in getattr(selector, "needs", ())}
    return as_selection(selector(features, cls_attn, budget, seed=seed, **extra)), signals


def test_registry_names_and_kinds():
    assert {"fastervlm", "random", "uniform", "fastv", "visionzip", "vispruner"} <= set(METHODS)
    assert get_llm_pruner("fastv") is not None
    assert all(get_llm_pruner(name) is None for name in SELECTORS)
    with pytest.raises(ValueError, match="registered methods"):
        get_selector("nope")


# --- hand-built cases ---------------------------------------------------------------------------------------------
def test_fastervlm_keeps_the_top_cls_attention_in_raster_order():
    cls_attn = torch.tensor([[0.05, 0.30, 0.02, 0.20, 0.01, 0.25, 0.07, 0.10]])
    keep = as_selection(METHODS["fastervlm"](torch.zeros(1, 8, 2), cls_attn, 3)).keep
    assert keep.tolist() == [[1, 3, 5]]


def test_uniform_spreads_the_budget_over_the_grid():
    keep = as_selection(METHODS["uniform"](torch.zeros(2, 16, 2), torch.rand(2, 16), 4)).keep
    assert keep.tolist() == [[2, 6, 10, 14]] * 2


def test_random_is_seeded_and_differs_per_image():
    features, cls_attn = random_inputs(n=2)
    a = METHODS["random"](features, cls_attn, 5, seed=0)
    assert torch.equal(a, METHODS["random"](features, cls_attn, 5, seed=0))
    assert not torch.equal(a, METHODS["random"](features, cls_attn, 5, seed=1))
    assert not torch.equal(a[0], a[1])


def test_vispruner_removes_near_duplicates_among_the_rest():
    p, budget = 12, 10  # 5 important + 5 diverse
    cls_attn = torch.linspace(1.0, 0.1, p)[None]  # attention order 0, 1, ..., 11
    features = torch.eye(p)[None].clone()
    features[0, 7] = features[0, 8] + 0.01  # near-duplicate of 8
    features[0, 11] = features[0, 6]  # duplicate of 6
    # rest in attention order: 5..11; A = 5, 7, 9, 11 and B = 6, 8, 10; remove min(8, 7 - 5) = 2 most redundant of A
    keep = vispruner(features, cls_attn, budget)
    assert keep.tolist() == [[0, 1, 2, 3, 4, 5, 6, 8, 9, 10]]


# --- all selectors: budgets, shapes, per-crop independence --------------------------------------------------------
@pytest.mark.parametrize("name", SELECTORS)
@pytest.mark.parametrize("budget", [1, 7, 16])
def test_selector_budget_order_and_crops_independent(name, budget):
    features, cls_attn = random_inputs()
    sel, _ = run(name, features, cls_attn, budget)
    assert sel.n_prefix + sel.keep.shape[1] + sel.n_suffix == budget
    assert sel.tokens(features).shape == (3, budget, 8)
    assert bool((sel.keep.diff(dim=-1) > 0).all())  # ascending, unique
    if sel.keep.numel():
        assert int(sel.keep.min()) >= 0 and int(sel.keep.max()) < 16
    for i in range(3):  # one crop alone gives the same answer
        alone, signals = run(name, features[i:i + 1], cls_attn[i:i + 1], budget)
        assert torch.equal(alone.keep[0], sel.keep[i])
    if budget == 16 and sel.n_prefix + sel.n_suffix == 0:  # everything kept, features untouched
        assert sel.keep.tolist() == [list(range(16))] * 3
        torch.testing.assert_close(sel.tokens(features), features)


def test_budget_one_keeps_the_top_token_for_attention_methods():
    features, cls_attn = random_inputs()
    top = cls_attn.argmax(dim=-1, keepdim=True)
    assert torch.equal(as_selection(METHODS["fastervlm"](features, cls_attn, 1)).keep, top)
    zipped, signals = run("visionzip", features, cls_attn, 1)  # [CLS] alone: 1 dominant + 0 contextual
    assert zipped.keep.shape == (3, 0)
    torch.testing.assert_close(zipped.tokens(features)[:, 0], signals["cls_token"])
    assert vispruner(features, cls_attn, 1).shape == (3, 1)  # 0 important + 1 diverse


def test_in_llm_method_keeps_every_token_before_the_projector():
    features, cls_attn = random_inputs()
    assert get_selector("fastv")(features, cls_attn, 16).tolist() == [list(range(16))] * 3
    assert PruningConfig(method="fastv", visual_token_num=58).pre_projector_budget == 576
    assert PruningConfig(method="visionzip", visual_token_num=58).pre_projector_budget == 58


# --- through the model: every method keeps budget x crops ---------------------------------------------------------
@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_reports_budget_per_crop(name, v15_dir, v16_dir, load):
    from llava.mm_utils import process_images
    from tests.conftest import pil_image
    from tests.test_model import prompt_ids

    for ckpt, size, crops in ((v15_dir, (32, 32), 1), (v16_dir, (40, 40), 5)):
        tok, model, proc, _ = load(ckpt, visual_token_num=3)
        model.set_pruning(model.pruning.replace(method=name, llm_layer=1))
        px = process_images([pil_image(*size)], proc, model.config)
        for budget in (1, 3, PATCHES):
            model.set_pruning(model.pruning.replace(visual_token_num=budget))
            out, v_token_num, cls_attn = model.generate(prompt_ids(tok), images=px, image_sizes=[size],
                                                        max_new_tokens=2, do_sample=False)
            assert v_token_num == budget * crops, (name, ckpt.name, budget)
            assert out.shape == (1, 2) and cls_attn.shape == (crops, PATCHES)


def test_method_parameters_are_the_ones_the_method_reads():
    from llava.model.pruning import method_parameters

    assert method_parameters(PruningConfig(method="fastv", llm_layer=3, seed=5)) == {"llm_layer": 3}
    assert method_parameters(PruningConfig(method="random", llm_layer=3, seed=5)) == {"seed": 5}
    for name in ("fastervlm", "uniform", "visionzip", "vispruner"):
        assert method_parameters(PruningConfig(method=name, llm_layer=3, seed=5)) == {}, name
