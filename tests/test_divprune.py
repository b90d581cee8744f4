"""DivPrune against an oracle transcribed from its public algorithm (vbdi/divprune, `LLaVA/llava/model/llava_arch.py`:
`pairwise_cosine_similarity`, `DivPrune`; paper arXiv 2503.02175, the max-min diversity problem solved greedily),
hand-computed cases, and the tiny LLaVA-1.5 checkpoint with the tower's features taken from transformers' own
CLIPVisionModel.

The oracle works as the public code does, one crop at a time, in float64: the distance matrix 1 - cos; first pick
the argmax over columns of each column's second-smallest entry (the smallest being the token's own zero distance);
then, while fewer than k are kept, the argmax over columns of the column minimum over the kept rows; the kept
indices sorted (the public code sorts them back into the prompt). torch.argmax takes the first maximum on ties.
"""

import copy
import math

import pytest
import torch
from transformers import CLIPVisionModel

from llava.mm_utils import process_images
from llava.model.pruning import METHODS
from llava.model.pruning.divprune import divprune
from tests.conftest import pil_image
from tests.tiny_checkpoints import PATCHES


def oracle(features: torch.Tensor, k: int) -> list[int]:
    """features (P, C) of one crop -> the k kept indices, ascending (the public greedy loop, float64)."""
    x = features.double()
    unit = x / x.norm(dim=1, keepdim=True)
    dist = 1.0 - unit @ unit.t()
    kept = []
    for i in range(k):
        if i == 0:
            scores = torch.topk(dist, 2, dim=0, largest=False).values[1, :]  # distance to the nearest other token
        else:
            scores = dist[kept].min(dim=0).values  # distance to the nearest kept token
        kept.append(int(torch.argmax(scores)))
    assert len(set(kept)) == k  # random features: never a repeat (the public loop does not exclude kept tokens)
    return sorted(kept)


def random_features(n: int, p: int, c: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, p, c, generator=torch.Generator().manual_seed(seed))


# --- against the oracle ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p, budget", [(16, 1), (16, 2), (16, 7), (16, 16), (576, 64), (576, 128), (576, 192)])
def test_equals_the_public_algorithm_on_random_features(p, budget):
    features = random_features(3, p, 8, seed=p + budget)
    keep = divprune(features, None, budget)  # no attention at all: the method reads only the features
    assert keep.dtype == torch.long
    assert keep.tolist() == [oracle(features[i], budget) for i in range(3)]


def test_attention_is_ignored():
    features = random_features(2, 16, 8, seed=3)
    cls_attn = torch.rand(2, 16, generator=torch.Generator().manual_seed(4)).softmax(dim=-1)
    expected = [oracle(features[i], 5) for i in range(2)]
    assert divprune(features, cls_attn, 5).tolist() == expected
    assert divprune(features, cls_attn.flip(-1), 5).tolist() == expected


def test_half_precision_features_are_scored_in_float32():
    """fp16 features are read as float32: the kept set is the oracle's on the same (rounded) values. Among 576
    tokens many scores lie closer than fp16's resolution (~1e-3 near distance 1), so fp16 scores would differ."""
    features = random_features(2, 576, 64, seed=5).half()
    assert divprune(features, None, 64).tolist() == [oracle(features[i].float(), 64) for i in range(2)]


# --- hand-computed -------------------------------------------------------------------------------------------------
def directions(degrees: list[float]) -> torch.Tensor:
    """Unit vectors in the plane at these angles, as one crop (1, P, 2); the cosine distance is 1 - cos(angle)."""
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in degrees])[None]


def test_hand_computed_max_min_order():
    """Tokens at 0, 5, 90 and 180 degrees. Nearest-neighbour distances: 0 and 5 -> 1 - cos 5 = 0.004; 90 -> 1 - cos 85
    = 0.913; 180 -> 1 - cos 90 = 1, so 180 (token 3) comes first. From it: 0 -> 2, 5 -> 1.996, 90 -> 1: token 0.
    From {180, 0}: 5 -> 0.004, 90 -> 1: token 2. Then token 1."""
    features = directions([0, 5, 90, 180]) * torch.tensor([[[3.0], [0.5], [2.0], [7.0]]])  # lengths do not matter
    assert divprune(features, None, 1).tolist() == [[3]]
    assert divprune(features, None, 2).tolist() == [[0, 3]]
    assert divprune(features, None, 3).tolist() == [[0, 2, 3]]
    assert divprune(features, None, 4).tolist() == [[0, 1, 2, 3]]


def test_ties_are_broken_by_the_lowest_index():
    """Up, right, down, left: every nearest-neighbour distance is exactly 1, so token 0 (up) comes first; down
    (distance 2) next; then right and left are both at distance 1 from {up, down}: right (token 1) wins."""
    features = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [-1.0, 0.0]]])
    assert divprune(features, None, 1).tolist() == [[0]]
    assert divprune(features, None, 2).tolist() == [[0, 2]]
    assert divprune(features, None, 3).tolist() == [[0, 1, 2]]


def test_kept_tokens_are_never_picked_twice():
    """Three copies of one direction and one other: after both directions are kept, every remaining token is at
    distance 0; the public loop could pick a kept token again, ours takes the lowest unkept index."""
    features = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]])
    # nearest-neighbour distances: 0, 0, 1, 0 -> token 2; then tokens 0, 1, 3 at distance 1 -> token 0; then 1, 3.
    assert divprune(features, None, 2).tolist() == [[0, 2]]
    assert divprune(features, None, 3).tolist() == [[0, 1, 2]]
    assert divprune(features, None, 4).tolist() == [[0, 1, 2, 3]]


def test_budget_above_the_patch_count_is_refused():
    with pytest.raises(ValueError, match="divprune.py.*exceeds"):
        divprune(random_features(1, 4, 2), None, 5)


# --- through the model ---------------------------------------------------------------------------------------------
def reference_patch_features(model, pixels: torch.Tensor) -> torch.Tensor:
    """The tower's selected-layer patch features (B, P, C) from transformers' CLIPVisionModel on the same weights."""
    ours = model.get_vision_tower().vision_tower
    reference = CLIPVisionModel(copy.deepcopy(ours.config)).eval()
    reference.load_state_dict(ours.state_dict())
    with torch.no_grad():
        hidden = reference(pixel_values=pixels, output_hidden_states=True).hidden_states
    return hidden[model.config.mm_vision_select_layer][:, 1:]  # drop [CLS]


def test_llava_15_projects_the_oracle_kept_features(v15_dir, load):
    budget = 5
    _, model, proc, _ = load(v15_dir, visual_token_num=budget, pruning_method="divprune")
    assert METHODS["divprune"] is divprune and model.pruning.method == "divprune"
    pixels = process_images([pil_image(32, 32, seed=s) for s in (7, 8)], proc, model.config)
    seen = []
    hook = model.get_model().mm_projector.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        visual = model.visual_tokens(pixels)
    finally:
        hook.remove()
    features = reference_patch_features(model, pixels)
    assert features.shape[1] == PATCHES and len(seen) == 1
    expected_keep = [oracle(features[i], budget) for i in range(2)]
    assert [k[0].tolist() for k in visual.keep] == expected_keep
    expected = torch.stack([features[i, keep] for i, keep in enumerate(expected_keep)])
    torch.testing.assert_close(seen[0], expected, rtol=1e-4, atol=1e-4)
