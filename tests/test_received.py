"""Scores for towers without [CLS] (issue #16 item 2): `received_attention` (the attention each token receives,
blockwise), the registry method `attention_received`, SigLIP's `received` signal, and the per-method [CLS]
declarations (`needs_cls`) behind `check_tower_supports`.

Sources of truth: a two-token case worked by hand; an eager oracle written here (the full softmax map of each
segment, averaged over heads and queries, no blocks); transformers' own `SiglipVisionModel` with eager attention and
`output_attentions=True` (its last layer's map); hand-picked top-k on hand-written scores; the list of methods that
read no [CLS] written out by hand from what each method reads.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import SiglipVisionConfig, SiglipVisionModel

from llava.integrations.transformers.adapters import check_tower_supports
from llava.model.attention_rows import received_attention
from llava.model.multimodal_encoder.clip_encoder import TowerOutput
from llava.model.multimodal_encoder.siglip_encoder import SiglipTower
from llava.model.pipeline import VisualTokenPipeline
from llava.model.pruning import METHODS, PruningConfig
from llava.model.pruning.registry import methods_without_cls, needs_cls

SIDE, PATCH = 32, 8
P = (SIDE // PATCH) ** 2


def eager_received(q, k, bounds):
    """Oracle: per segment the whole (H, n, n) softmax map at once, column means over heads and queries."""
    out = torch.zeros(q.shape[1])
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e > s:
            probs = torch.softmax(q[:, s:e] @ k[:, s:e].transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)
            out[s:e] = probs.mean(dim=(0, 1))
    return out


def test_two_tokens_by_hand():
    """One head, d = 1: query 0 is 0 (softmax 1/2, 1/2); query 1 is 1 against keys 0 and ln 3 (softmax 1/4, 3/4).
    Token 0 receives (1/2 + 1/4) / 2 = 0.375, token 1 (1/2 + 3/4) / 2 = 0.625."""
    q = torch.tensor([[[0.0], [1.0]]])
    k = torch.tensor([[[0.0], [math.log(3.0)]]])
    for block in (1, 2, 1024):
        torch.testing.assert_close(received_attention(q, k, block=block), torch.tensor([0.375, 0.625]))


@pytest.mark.parametrize("block", [1, 3, 1024])
def test_segments_and_blocks_equal_the_eager_oracle(block):
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 11, 4, generator=gen), torch.randn(3, 11, 4, generator=gen)
    bounds = [0, 4, 4, 11]  # an empty segment in the middle
    got = received_attention(q, k, cu_seqlens=torch.tensor(bounds), block=block)
    torch.testing.assert_close(got, eager_received(q, k, bounds))
    torch.testing.assert_close(received_attention(q, k, block=block), eager_received(q, k, [0, 11]))
    # bf16 inputs are scored in float32
    assert received_attention(q.bfloat16(), k.bfloat16(), block=block).dtype == torch.float32


def test_bad_segments_are_refused():
    q = torch.zeros(1, 4, 2)
    for bounds in ([0, 3], [1, 4], [0, 3, 2, 4]):
        with pytest.raises(ValueError, match="cu_seqlens"):
            received_attention(q, q, cu_seqlens=bounds)


def test_selector_keeps_the_top_received_in_raster_order():
    received = torch.tensor([[0.05, 0.30, 0.02, 0.20, 0.01, 0.25, 0.07, 0.10],
                             [0.50, 0.00, 0.10, 0.00, 0.20, 0.00, 0.15, 0.05]])
    keep = METHODS["attention_received"](torch.zeros(2, 8, 2), torch.zeros(2, 0), 3, received=received)
    assert keep.tolist() == [[1, 3, 5], [0, 4, 6]]


@pytest.fixture(scope="module")
def siglip():
    config = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                                image_size=SIDE, patch_size=PATCH)
    torch.manual_seed(0)
    return SiglipVisionModel._from_config(config, attn_implementation="eager").eval()


@pytest.mark.parametrize("select_layer", [-1, 2])
def test_siglip_received_equals_transformers_attention_map(siglip, select_layer):
    """The map transformers' eager SigLIP returns for the feature layer (hidden_states[s] is the output of layer
    s - 1), averaged over heads and queries; SigLIP has no [CLS], so every column is a patch."""
    pixels = torch.randn(3, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))
    tower = SiglipTower(siglip, select_layer=select_layer)
    out = tower(pixels, received=True)
    with torch.no_grad():
        ref = siglip(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
    s = select_layer if select_layer >= 0 else 3 + 1 + select_layer
    torch.testing.assert_close(out.received, ref.attentions[s - 1].mean(dim=(1, 2)))
    torch.testing.assert_close(out.features, ref.hidden_states[s])
    assert tower(pixels).received is None  # scored only when asked for


def test_pipeline_prunes_siglip_by_received(siglip):
    """Through the pipeline (identity projector): the kept patches are the top 5 of the oracle map, ascending."""
    pixels = torch.randn(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2))
    tower = SiglipTower(siglip)
    embed = torch.nn.Embedding(4, 32)
    pipeline = VisualTokenPipeline(tower, torch.nn.Identity(), embed,
                                   PruningConfig(method="attention_received", visual_token_num=5))
    tokens = pipeline(pixels)
    with torch.no_grad():
        ref = siglip(pixel_values=pixels, output_attentions=True, output_hidden_states=True)
    expected = ref.attentions[-1].mean(dim=(1, 2)).topk(5, dim=-1).indices.sort(dim=-1).values
    assert [k[0].tolist() for k in tokens.keep] == expected.tolist()
    for i in range(2):
        torch.testing.assert_close(tokens.embeds[i], ref.hidden_states[-1][i, expected[i]])


class FeaturesOnlyTower(torch.nn.Module):
    """A tower that gives features only (no [CLS], no received scores)."""

    has_cls = False
    num_patches = 4

    def forward(self, pixels):
        n = pixels.shape[0]
        return TowerOutput(features=torch.randn(n, 4, 8), cls_attn=torch.zeros(n, 0))


def test_a_tower_without_received_scores_is_named_in_the_error():
    pipeline = VisualTokenPipeline(FeaturesOnlyTower(), torch.nn.Identity(), torch.nn.Embedding(2, 8),
                                   PruningConfig(method="attention_received", visual_token_num=2))
    with pytest.raises(ValueError, match=r"needs the tower's \['received'\]"):
        pipeline(torch.zeros(1, 3, 4, 4))


def test_cls_declarations_and_the_error_naming_the_alternatives(siglip):
    # by hand: fastervlm / visionzip / vispruner read the [CLS] attention (and VisionZip the [CLS] token); the others
    # read features (random's seed, uniform's shape, divprune), the LLM (fastv) or the received scores.
    without = {"random", "uniform", "fastv", "divprune", "attention_received"}
    assert set(methods_without_cls()) == without
    assert all(needs_cls(m) for m in ("fastervlm", "visionzip", "vispruner"))
    tower = SiglipTower(siglip)
    for method in without:
        check_tower_supports(tower, method, "SigLIP model")
    with pytest.raises(ValueError) as error:
        check_tower_supports(tower, "vispruner", "SigLIP model")
    message = str(error.value)
    assert "'vispruner' ranks patches by the [CLS] token's attention" in message and "SiglipTower" in message
    assert all(name in message for name in without)


def test_a_new_method_is_refused_on_no_cls_towers_until_it_declares(siglip, monkeypatch):
    def new_method(features, cls_attn, budget, seed=0):
        return cls_attn.topk(budget).indices

    monkeypatch.setitem(METHODS, "new_method", new_method)
    tower = SiglipTower(siglip)
    with pytest.raises(ValueError, match="has no \\[CLS\\] token"):
        check_tower_supports(tower, "new_method", "SigLIP model")
    new_method.needs_cls = False
    check_tower_supports(tower, "new_method", "SigLIP model")
