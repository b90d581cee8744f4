"""FastV inside the LLM: the pruned forward (and greedy decoding with a KV cache) equals FastV by definition, i.e. a
reference that runs layers < K on every token, ranks the visual tokens by the eager attention of the last prompt token
at layer K, and re-runs layers >= K on the kept tokens (original positions) from scratch. With a cache this is the
public static KV-cache pruning (pkunlp-icler/FastV, llava-hf `LlamaModel.fastv_forward`: generated tokens attend to
the prefill's kept tokens); tests/test_baseline_oracles.py compares the inplace forward with the public code's."""

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.pruning import PruningConfig
from tests.tiny_checkpoints import PATCHES

BUDGET = 5


def build_model(clip_dir, attn: str, pruning: PruningConfig | None, layers: int = 4, seed: int = 3):
    """A tiny LLaVA-1.5 with a 4-layer GQA Llama (4 query heads, 2 KV heads) and peaked random weights."""
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
    from llava.model.multimodal_encoder.builder import build_vision_tower
    from llava.model.tiny import llava_config_dict, spread_weights

    raw = {k: v for k, v in llava_config_dict("v1.5", clip_dir, vocab_size=120).items()
           if k not in ("model_type", "architectures")}
    raw.update(num_hidden_layers=layers, num_key_value_heads=2)
    config = LlavaConfig(**raw)
    torch.manual_seed(seed)
    model = LlavaLlamaForCausalLM._from_config(config, attn_implementation=attn).eval()
    spread_weights(model, seed)
    model.attach_vision_tower(build_vision_tower(config, clip_dir), pruning)
    return model


@pytest.fixture(scope="module")
def models(clip_dir):
    """name -> model; the reference is eager, keeps every token and shares the weights."""
    def fastv(k):
        return PruningConfig(method="fastv", visual_token_num=BUDGET, tokens_per_crop=PATCHES, llm_layer=k)

    built = {"reference": build_model(clip_dir, "eager", None)}
    state = built["reference"].state_dict()
    for attn in ("sdpa", "eager"):
        for k in (1, 2):
            built[f"{attn}-{k}"] = build_model(clip_dir, attn, fastv(k))
            built[f"{attn}-{k}"].load_state_dict(state)
    return built


def prompt(text_before=(1, 5, 6, 7), text_after=(8, 9, 10, 11, 12)):
    return torch.tensor([[*text_before, IMAGE_TOKEN_INDEX, *text_after]])


def pixels(seed=0, n=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def causal_mask(n: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.full((n, n), torch.finfo(dtype).min, dtype=dtype).triu(1)[None, None]


def run_layers(llm, hidden, positions, layers):
    cos_sin = llm.rotary_emb(hidden, positions)
    mask = causal_mask(hidden.shape[1], hidden.dtype)
    for layer in layers:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=cos_sin, position_ids=positions)
    return hidden


@torch.no_grad()
def reference_logits(ref, embeds, visual, keep, k, extra=None):
    """FastV by definition, recomputed from scratch. embeds (1, L, D) prompt; visual (L,) bool; extra (1, T, D)
    generated tokens appended after the prompt. Returns logits (1, L' + T, V) and the kept prompt positions."""
    llm = ref.get_model()
    prompt_len = embeds.shape[1]
    attention = ref(inputs_embeds=embeds, output_attentions=True).attentions[k - 1][0, :, -1].mean(0)  # (L,)
    top = attention.masked_fill(~visual, float("-inf")).topk(keep).indices
    kept = sorted(set((~visual).nonzero().flatten().tolist()) | set(top.tolist()))
    sequence = embeds if extra is None else torch.cat([embeds, extra], dim=1)
    positions = torch.arange(sequence.shape[1])[None]
    hidden = run_layers(llm, sequence, positions, llm.layers[:k])
    rows = torch.tensor(kept + list(range(prompt_len, sequence.shape[1])))
    hidden = run_layers(llm, hidden[:, rows], positions[:, rows], llm.layers[k:])
    return ref.lm_head(llm.norm(hidden)), kept


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("k", [1, 2])
def test_pruned_prefill_equals_rerunning_later_layers_on_kept_tokens(models, attn, k):
    model, ref = models[f"{attn}-{k}"], models["reference"]
    ids, px = prompt(), pixels(seed=k)
    with torch.no_grad():
        out = model(ids, images=px)
    logits = out.logits
    mm = ref.prepare_multimodal_inputs(ids, None, px)
    expected, kept = reference_logits(ref, mm.inputs_embeds, mm.visual_mask[0], BUDGET, k)
    assert out.v_token_num == [BUDGET]
    assert model.llm_pruner.kept[0].tolist() == kept
    assert logits.shape == (1, ids.shape[1] - 1 + BUDGET, ref.config.vocab_size)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_greedy_decoding_with_cache_equals_reference(models, attn):
    k = 2
    model, ref = models[f"{attn}-{k}"], models["reference"]
    ids, px = prompt(), pixels(seed=4)
    out, v_token_num, _ = model.generate(ids, images=px, max_new_tokens=4, do_sample=False,
                                         return_dict_in_generate=True, output_logits=True)
    assert v_token_num == BUDGET
    tokens = out.sequences[0]
    mm = ref.prepare_multimodal_inputs(ids, None, px)
    embed = ref.get_model().embed_tokens
    for t in range(len(tokens)):
        extra = embed(tokens[:t])[None] if t else None
        expected, _ = reference_logits(ref, mm.inputs_embeds, mm.visual_mask[0], BUDGET, k, extra)
        torch.testing.assert_close(out.logits[t][0], expected[0, -1], atol=1e-4, rtol=1e-4)
        assert tokens[t].item() == expected[0, -1].argmax().item()


def test_scores_are_the_eager_attention_of_the_last_token(models):
    """The SDPA model never materialises attention maps: its one-row scores equal eager attention's."""
    model, ref = models["sdpa-2"], models["reference"]
    ids, px = prompt(), pixels(seed=5)
    with torch.no_grad():
        model(ids, images=px)
        mm = ref.prepare_multimodal_inputs(ids, None, px)
        eager = ref(inputs_embeds=mm.inputs_embeds, output_attentions=True).attentions[1][0, :, -1].mean(0)
    torch.testing.assert_close(model.llm_pruner.last_attention[0], eager, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_left_padded_batch_equals_batch_one(models, attn):
    model = models[f"{attn}-2"]
    prompts = [prompt()[0], prompt(text_before=(1, 5), text_after=(9, 10, 11, 12, 13, 14, 15))[0][:-2]]
    images = pixels(seed=6, n=2)
    singles = [model.generate(p[None], images=im[None], max_new_tokens=4, do_sample=False)[0][0]
               for p, im in zip(prompts, images)]
    longest = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.zeros(longest - len(p), dtype=torch.long), p]) for p in prompts])
    mask = torch.stack([torch.cat([torch.zeros(longest - len(p)), torch.ones(len(p))]).long() for p in prompts])
    out, counts, _ = model.generate(ids, attention_mask=mask, images=images, max_new_tokens=4, do_sample=False)
    assert counts == [BUDGET, BUDGET]
    for row, single in zip(out, singles):
        assert row.tolist() == single.tolist()


def test_projector_sees_every_token_and_full_budget_keeps_everything(models, clip_dir):
    model = models["sdpa-2"]
    mm = model.prepare_multimodal_inputs(prompt(), None, pixels())
    assert mm.v_token_num == [PATCHES] and int(mm.visual_mask.sum()) == PATCHES
    full = build_model(clip_dir, "sdpa", PruningConfig(method="fastv", visual_token_num=PATCHES,
                                                       tokens_per_crop=PATCHES))
    full.load_state_dict(models["reference"].state_dict())
    with torch.no_grad():
        pruned_all = full(prompt(), images=pixels()).logits
        unpruned = models["reference"](prompt(), images=pixels()).logits
    torch.testing.assert_close(pruned_all, unpruned, atol=1e-4, rtol=1e-4)


def test_text_only_prompt_after_an_image_prompt_is_not_pruned(models):
    model, ref = models["sdpa-2"], models["reference"]
    model.generate(prompt(), images=pixels(), max_new_tokens=2, do_sample=False)
    text = torch.tensor([[1, 5, 6, 7, 8, 9]])
    assert model.generate(text, max_new_tokens=3, do_sample=False)[0].tolist() == \
        ref.generate(text, max_new_tokens=3, do_sample=False)[0].tolist()


def test_switching_method_removes_the_hooks(clip_dir, models):
    model = build_model(clip_dir, "sdpa", PruningConfig(method="fastv", visual_token_num=BUDGET,
                                                        tokens_per_crop=PATCHES))
    layers = model.get_model().layers
    assert any(layer._forward_pre_hooks for layer in layers)
    model.set_pruning(model.pruning.replace(method="fastervlm"))
    assert model.llm_pruner is None and not any(layer._forward_pre_hooks for layer in layers)
    assert not layers[1].self_attn.q_proj._forward_hooks
    with torch.no_grad():
        assert model(prompt(), images=pixels()).logits.shape[1] == prompt().shape[1] - 1 + BUDGET


def test_layer_and_setup_validation(clip_dir):
    with pytest.raises(ValueError, match="llm_layer=0"):
        PruningConfig(method="fastv", llm_layer=0)
    with pytest.raises(TypeError, match="llm_layer must be an int"):
        PruningConfig(method="fastv", llm_layer=2.0)
    with pytest.raises(ValueError, match="between 1 and 3"):
        build_model(clip_dir, "sdpa", PruningConfig(method="fastv", visual_token_num=4, tokens_per_crop=PATCHES,
                                                    llm_layer=4))


def test_labels_are_refused(models):
    with pytest.raises(NotImplementedError, match="labels"):
        models["sdpa-2"](prompt(), images=pixels(), labels=prompt().clamp(min=0))


def test_llava_16_budget_is_per_crop_and_mixed_grids_in_a_batch_are_refused(v16_dir, load):
    from llava.mm_utils import process_images
    from tests.conftest import pil_image

    tok, model, proc, _ = load(v16_dir, visual_token_num=3)
    model.set_pruning(model.pruning.replace(method="fastv", llm_layer=1))
    size = (40, 40)  # paper mode: a 2x2 grid, 1 + 4 crops
    px = process_images([pil_image(*size)], proc, model.config)
    _, v_token_num, cls_attn = model.generate(prompt(), images=px, image_sizes=[size], max_new_tokens=2,
                                              do_sample=False)
    assert v_token_num == 3 * 5 and cls_attn.shape == (5, PATCHES)
    sizes = [(40, 40), (80, 30)]  # 5 and 4 crops: the samples would drop different numbers of tokens
    images = [process_images([pil_image(*s)], proc, model.config)[0] for s in sizes]
    ids = torch.cat([prompt(), prompt()])
    with pytest.raises(NotImplementedError, match="batch size 1"):
        model.generate(ids, images=images, image_sizes=sizes, max_new_tokens=1)


def test_beam_search_runs_on_the_expanded_batch(models):
    out, v_token_num, _ = models["sdpa-2"].generate(prompt(), images=pixels(), max_new_tokens=3, num_beams=2,
                                                    do_sample=False)
    assert out.shape == (1, 3) and v_token_num == BUDGET
