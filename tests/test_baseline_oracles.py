"""VisPruner and FastV against oracles transcribed from their public code (written here from reading it, not copied).

VisPruner: github.com/Theia-4869/VisPruner, `llava/model/llava_arch.py` `encode_images` (default
`--important_ratio 0.5` in `llava/eval/model_vqa_loader.py`). FastV: github.com/pkunlp-icler/FastV,
`src/transformers/src/transformers/models/llama/modeling_llama.py` (the `fast_v_inplace` branch of
`LlamaModel.forward`, run by `src/FastV/inference/eval/inference_aokvqa.py` with `use_cache=False`).

Documented departures, each pinned by a test here:
- VisPruner: exactly tied scores are ordered by index (stable sorts); the public `argsort` leaves their order open.
- VisPruner: the public indexing only works while the remaining count R is even and the round's r <= R / 2 (e.g. it
  fails at budget 58 of 576, where R = 547); ours runs every budget, splitting an odd list with the extra token in A.
- FastV: the public code ranks a whole batch by sample 0's attention (`mean(dim=1)[0]`); ours ranks every sample by
  its own, so a batch equals each sample's batch-1 run.
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llava.model.pruning import PruningConfig
from llava.model.pruning.fastv import FastV
from llava.model.pruning.vispruner import vispruner

# =====================================================================================================================
# VisPruner
# =====================================================================================================================
PATCHES = 576  # CLIP ViT-L/14-336: the public code's N
PAPER_BUDGETS = (64, 128, 192, 144, 29, 33, 101)  # every round of the public code runs at these
FAILING_BUDGETS = (58, 1, 3, 7, 99, 575)  # some round has an odd R (or r > R / 2): the public code fails there


class PublicCodeFails(Exception):
    """The public VisPruner's index tensors cannot be broadcast together in this round."""


def public_indexing_works(remaining: int, r: int) -> bool:
    """Whether the public round runs for R = `remaining` candidates: it indexes the (R + 1) // 2 - r surviving A tokens
    with a batch index expanded to R // 2 - r columns, which broadcasts only when the two agree (R even, r <= R / 2).
    (Odd R with R // 2 - r in {0, 1} also broadcasts by accident; no budget used here reaches that.)"""
    return remaining % 2 == 0 and r <= remaining // 2


def vispruner_oracle(features: torch.Tensor, cls_attn: torch.Tensor, budget: int, strict: bool = True) -> list:
    """VisPruner, one crop at a time. features (N, P, C), cls_attn (N, P) -> a sorted list of kept indices per crop.

    strict: raise PublicCodeFails where the public code fails; otherwise continue with A = even places (the larger
    half of an odd list) and drop at most |A| tokens, which is what ours defines for those rounds.
    """
    important = int(budget * 0.5)
    diverse = budget - important
    kept = []
    for feats, scores in zip(features.float(), cls_attn.float()):
        # descending score; Python's sort is stable, so exact ties stay in index order
        order = sorted(range(len(scores)), key=lambda i: -scores[i].item())
        unit = feats / feats.norm(dim=-1, keepdim=True)
        cosine = unit @ unit.T  # (P, P)
        chosen, rest = order[:important], order[important:]
        while diverse > 0 and len(rest) - diverse > 0:
            r = min(8, len(rest) - diverse)
            if strict and not public_indexing_works(len(rest), r):
                raise PublicCodeFails(f"R={len(rest)}, r={r}")
            side_a, side_b = rest[0::2], rest[1::2]
            similarity = cosine.index_select(0, torch.tensor(side_a)).index_select(1, torch.tensor(side_b))
            best_match = similarity.max(dim=1).values.tolist()  # each A token's closest B token
            by_redundancy = sorted(range(len(side_a)), key=lambda j: -best_match[j])
            rest = [side_a[j] for j in by_redundancy[r:]] + side_b
        kept.append(sorted(chosen + rest[:diverse]))
    return kept


NORM = 32  # every test feature vector has this exact Euclidean norm (times a power of two)
TWO_SQUARES = {a * a + b * b: (a, b) for a in range(NORM + 1) for b in range(a, NORM + 1)}


def exact_unit_features(gen: torch.Generator, shape: tuple, free: int = 14) -> torch.Tensor:
    """(..., free + 2) integer vectors of norm exactly NORM, scaled by random powers of two: normalising them is exact
    and every cosine is a multiple of 1 / NORM^2, so any summation order gives the same float32 scores and the
    comparison with the oracle cannot hinge on rounding. (Equal scores still occur; both sides order them by index.)"""
    rows = []
    flat = torch.randint(-7, 8, (int(torch.tensor(shape).prod()) * 4, free), generator=gen)
    for candidate in flat:
        rest = NORM * NORM - int((candidate * candidate).sum())
        if rest in TWO_SQUARES:
            rows.append(torch.cat([candidate, torch.tensor(TWO_SQUARES[rest])]))
        if len(rows) == int(torch.tensor(shape).prod()):
            break
    scale = 2.0 ** torch.randint(-3, 4, (len(rows), 1), generator=gen)
    return (torch.stack(rows).float() * scale).view(*shape, free + 2)


def tower_like_inputs(seed: int, n: int = 3, p: int = PATCHES):
    """Random patch features (exact norms, see above) and a softmaxed [CLS] attention row per crop.
    Returns (n, p, 16), (n, p)."""
    gen = torch.Generator().manual_seed(seed)
    features = exact_unit_features(gen, (n, p))
    cls_attn = (torch.randn(n, p, generator=gen) * 2).softmax(dim=-1)
    return features, cls_attn


@pytest.mark.parametrize("budget", PAPER_BUDGETS)
def test_vispruner_equals_public_code_at_paper_budgets(budget):
    """Every matching round of the public code (48 to 69 rounds here) is reproduced exactly, for 3 crops at once."""
    features, cls_attn = tower_like_inputs(seed=budget)
    assert vispruner(features, cls_attn, budget).tolist() == vispruner_oracle(features, cls_attn, budget)


def test_vispruner_equals_public_code_with_few_rounds_and_a_short_last_round():
    """Small crops: 2-4 rounds, the last one removing fewer than 8 (R - diverse < 8), budgets odd and even."""
    gen = torch.Generator().manual_seed(7)
    for p, budget in ((24, 13), (30, 9), (40, 17), (50, 20)):
        features, cls_attn = exact_unit_features(gen, (4, p)), torch.rand(4, p, generator=gen)
        assert vispruner(features, cls_attn, budget).tolist() == vispruner_oracle(features, cls_attn, budget)


@pytest.mark.parametrize("budget", FAILING_BUDGETS)
def test_vispruner_where_the_public_code_fails_continues_with_the_larger_half_in_a(budget):
    """At these budgets the public indexing fails in some round; ours runs and splits an odd list with the extra
    token in A (even places), dropping min(8, R - diverse, |A|) of A."""
    features, cls_attn = tower_like_inputs(seed=3)
    with pytest.raises(PublicCodeFails):
        vispruner_oracle(features, cls_attn, budget, strict=True)
    ours = vispruner(features, cls_attn, budget)
    assert ours.tolist() == vispruner_oracle(features, cls_attn, budget, strict=False)
    assert ours.shape == (3, budget) and all(len(set(row)) == budget for row in ours.tolist())


def test_vispruner_odd_list_hand_computed():
    """P = 8, budget 6 -> 3 important (0, 1, 2) + 3 diverse; the other 5 in attention order are [3, 4, 5, 6, 7], an
    odd list: A = [3, 5, 7] (even places, the extra token), B = [4, 6], r = min(8, 5 - 3) = 2. Token 3 equals
    token 4 (similarity 1), token 7 is close to token 6 (0.8), token 5 is orthogonal to B (0): 3 and 7 go."""
    cls_attn = torch.tensor([[0.3, 0.2, 0.15, 0.12, 0.1, 0.06, 0.04, 0.03]])
    features = torch.tensor([[[1.0, 1.0, 1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, 0.0, 0.0],
                              [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.8, 0.6]]])
    assert vispruner(features, cls_attn, 6).tolist() == [[0, 1, 2, 4, 5, 6]]


def test_vispruner_ties_are_broken_by_index():
    """Quantised attention and exactly duplicated features make many exact ties; ours orders them by index (stable),
    which is one of the orders the public `argsort` may return."""
    gen = torch.Generator().manual_seed(11)
    cls_attn = torch.randint(0, 4, (2, 96), generator=gen).float()
    features = exact_unit_features(gen, (2, 12)).repeat(1, 8, 1)  # every feature appears 8 times
    for budget in (16, 29, 48):
        assert vispruner(features, cls_attn, budget).tolist() == vispruner_oracle(features, cls_attn, budget)


def test_vispruner_important_half_is_the_attention_top_and_one_token_is_diverse():
    """int(k * 0.5) important tokens: budget 1 keeps no important token (the top-attention patch may go)."""
    features, cls_attn = tower_like_inputs(seed=5, n=1, p=64)
    top = cls_attn[0].argsort(descending=True)
    kept = set(vispruner(features, cls_attn, 10)[0].tolist())
    assert set(top[:5].tolist()) <= kept
    assert vispruner(features, cls_attn, 1).tolist() == vispruner_oracle(features, cls_attn, 1, strict=False)


# =====================================================================================================================
# FastV
# =====================================================================================================================
SYS, IMAGE, TEXT = 3, 12, 4  # the public code's fast_v_sys_length / fast_v_image_token_length, then the question


def tiny_llama(attn: str, layers: int = 4, seed: int = 0) -> LlamaForCausalLM:
    """4-layer GQA Llama (4 query heads, 2 KV heads) with large random weights, so attention is peaked."""
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False)
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / p.shape[-1] ** 0.5))
    return model


@pytest.fixture(scope="module")
def llamas():
    eager = tiny_llama("eager")
    sdpa = tiny_llama("sdpa")
    sdpa.load_state_dict(eager.state_dict())
    return {"eager": eager, "sdpa": sdpa}


def prompts(batch: int, seed: int) -> torch.Tensor:
    """(batch, SYS + IMAGE + TEXT) token ids; the same system and question tokens, different "image" tokens."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (1, SYS + IMAGE + TEXT), generator=gen).repeat(batch, 1)
    ids[:, SYS:SYS + IMAGE] = torch.randint(3, 97, (batch, IMAGE), generator=gen)
    return ids


def causal(n: int) -> torch.Tensor:
    return torch.full((n, n), torch.finfo(torch.float32).min).triu(1)[None, None]


@torch.no_grad()
def fastv_inplace_oracle(eager: LlamaForCausalLM, ids: torch.Tensor, k: int, rank: int):
    """The public inplace FastV forward on a batch: returns (kept positions (L',), logits (B, L', V)).

    Layers 0..K-1 see every token; before layer K the attention map of layer K-1 (what the public loop holds in
    `layer_outputs[1]`) is averaged over heads for **sample 0**, its last query row ranks the image tokens, the top
    `rank` of them plus all system/text tokens are kept in order for the whole batch, and layers K.. run on them with
    their original positions as position ids and a plain causal mask."""
    attention = eager(ids, output_attentions=True, use_cache=False).attentions[k - 1]  # (B, H, L, L)
    row = attention.mean(dim=1)[0][-1]  # (L,)
    top = row[SYS:SYS + IMAGE].topk(rank).indices + SYS
    kept = torch.cat([torch.arange(SYS), top, torch.arange(SYS + IMAGE, ids.shape[1])]).sort().values

    llm = eager.model
    hidden, positions = llm.embed_tokens(ids), torch.arange(ids.shape[1])[None]
    for idx, layer in enumerate(llm.layers):
        if idx == k:
            hidden, positions = hidden[:, kept], kept[None]
        hidden = layer(hidden, attention_mask=causal(hidden.shape[1]), position_ids=positions,
                       position_embeddings=llm.rotary_emb(hidden, positions))
    return kept, eager.lm_head(llm.norm(hidden))


def install_fastv(model: LlamaForCausalLM, k: int, budget: int) -> FastV:
    return FastV(model.model, PruningConfig(method="fastv", visual_token_num=budget, tokens_per_crop=IMAGE,
                                            llm_layer=k))


def visual_mask(batch: int, length: int) -> torch.Tensor:
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, SYS:SYS + IMAGE] = True
    return mask


@torch.no_grad()
def ours_prefill(model: LlamaForCausalLM, ids: torch.Tensor, k: int, budget: int):
    """Our FastV on a plain transformers Llama: (kept (B, L'), logits (B, L', V))."""
    pruner = install_fastv(model, k, budget)
    try:
        pruner.arm(visual_mask(*ids.shape), [budget] * ids.shape[0])
        logits = model(ids, use_cache=True).logits
        return pruner.kept, logits
    finally:
        pruner.remove()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("k,budget", [(2, 6), (2, 5), (1, 3), (3, 7)])
def test_fastv_batch_one_equals_public_inplace_forward(llamas, attn, k, budget):
    """Kept positions exactly, and the pruned prefill's logits (original positions for RoPE)."""
    for seed in (0, 1):
        ids = prompts(1, seed)
        kept, logits = ours_prefill(llamas[attn], ids, k, budget)
        expected_kept, expected_logits = fastv_inplace_oracle(llamas["eager"], ids, k, budget)
        assert kept[0].tolist() == expected_kept.tolist()
        assert len(expected_kept) == SYS + budget + TEXT
        torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("k,budget", [(2, 6), (3, 5)])
def test_fastv_batch_ranks_each_sample_by_its_own_attention(llamas, attn, k, budget):
    """Departure: the public code applies sample 0's ranking to the whole batch. Ours equals, per sample, the public
    code run on that sample alone; for these inputs the public batch ranking differs for samples 1 and 2."""
    ids = prompts(3, seed=4)
    kept, logits = ours_prefill(llamas[attn], ids, k, budget)
    public_batch_kept, _ = fastv_inplace_oracle(llamas["eager"], ids, k, budget)
    for b in range(3):
        alone_kept, alone_logits = fastv_inplace_oracle(llamas["eager"], ids[b:b + 1], k, budget)
        assert kept[b].tolist() == alone_kept.tolist()
        torch.testing.assert_close(logits[b:b + 1], alone_logits, atol=1e-4, rtol=1e-4)
    assert kept[0].tolist() == public_batch_kept.tolist()
    assert kept[1].tolist() != public_batch_kept.tolist() and kept[2].tolist() != public_batch_kept.tolist()


@pytest.mark.parametrize("k", [2, 3])
def test_fastv_cacheless_greedy_generation_equals_public_inplace(llamas, k):
    """The public evaluation runs inplace FastV with use_cache=False: every step re-runs the whole sequence and the
    newest token re-ranks the image tokens. Ours without a cache does the same (batch 1, greedy)."""
    budget, steps = 5, 4
    ids = prompts(1, seed=9)
    model = llamas["sdpa"]
    pruner = install_fastv(model, k, budget)
    try:
        pruner.arm(visual_mask(*ids.shape), [budget])
        out = model.generate(ids, max_new_tokens=steps, do_sample=False, use_cache=False,
                             pad_token_id=0, eos_token_id=None)
    finally:
        pruner.remove()
    sequence = ids
    for _ in range(steps):
        _, logits = fastv_inplace_oracle(llamas["eager"], sequence, k, budget)
        sequence = torch.cat([sequence, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    assert out.tolist() == sequence.tolist()
