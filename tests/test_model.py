"""End to end on tiny liuhaotian-layout checkpoints: loading, parity with transformers' own LLaVA classes,
kept-token counts, generation."""

import json
import shutil

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import conv_templates
from llava.mm_utils import process_images, tokenizer_image_token
from llava.utils import load_state_dict
from tests.conftest import pil_image
from tests.hf_helpers import expand_image_tokens, hf_model
from tests.oracle_llava import cls_attention_and_features as eager_cls_attention
from tests.tiny_checkpoints import PATCHES, PINPOINTS


def prompt_ids(tokenizer, question="what is in this image?", n_images=1):
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\n" * n_images + question)
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt").unsqueeze(0)


# --- parity with transformers' LlavaForConditionalGeneration / LlavaNextForConditionalGeneration ---------------
def test_full_budget_v15_matches_transformers_llava(v15_dir, clip_dir, load):
    tok, model, proc, _ = load(v15_dir)
    image = pil_image(40, 24)  # non-square: exercises the pad-to-square path
    pixels = process_images([image], proc, model.config, anyres_mode=model.pruning.anyres_mode)
    ids = prompt_ids(tok)
    ours = model(ids, images=pixels).logits
    ref_model, vocab = hf_model("llava", v15_dir, clip_dir)
    with torch.no_grad():
        ref = ref_model(input_ids=expand_image_tokens(ids, PATCHES, vocab), pixel_values=pixels).logits[..., :vocab]
    assert ours.shape == ref.shape == (1, ids.shape[1] - 1 + PATCHES, vocab)
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [(40, 40), (80, 30), (30, 70)])
def test_full_budget_v16_upstream_matches_transformers_llava_next(v16_dir, clip_dir, load, size):
    tok, model, proc, _ = load(v16_dir, anyres_mode="upstream")
    image = pil_image(*size, seed=1)
    # (1, 1 + crops, 3, 32, 32)
    pixels = process_images([image], proc, model.config, anyres_mode=model.pruning.anyres_mode)
    ids = prompt_ids(tok)
    out = model(ids, images=pixels, image_sizes=[image.size])
    ours, n_visual = out.logits, out.v_token_num[0]
    ref_model, vocab = hf_model("llava_next", v16_dir, clip_dir)
    w, h = image.size
    with torch.no_grad():
        ref = ref_model(input_ids=expand_image_tokens(ids, n_visual, vocab), pixel_values=pixels,
                        image_sizes=torch.tensor([[h, w]])).logits[..., :vocab]  # transformers: (height, width)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


# --- kept-token counts -------------------------------------------------------------------------------------------
def test_v15_v_token_num_and_cls_attn(v15_dir, clip_dir, load):
    """cls_attn: transformers' own eager attention map of the selected layer, head mean of the [CLS] row."""
    tok, model, proc, _ = load(v15_dir, visual_token_num=5)
    pixels = process_images([pil_image(32, 32)], proc, model.config, anyres_mode=model.pruning.anyres_mode)
    out, v_token_num, cls_attn = model.generate(prompt_ids(tok), images=pixels, max_new_tokens=3, do_sample=False)
    assert v_token_num == 5 and isinstance(v_token_num, int)
    expected, _ = eager_cls_attention(hf_model("llava", v15_dir, clip_dir)[0].model.vision_tower, pixels)
    torch.testing.assert_close(cls_attn, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("size,grid", [((40, 40), (2, 2)), ((80, 30), (3, 1)), ((30, 70), (1, 2))])
def test_v16_paper_mode_keeps_budget_per_crop(v16_dir, load, size, grid):
    from llava.image_geometry import get_anyres_image_grid_shape

    assert get_anyres_image_grid_shape(size, PINPOINTS, 32, "paper") == grid
    tok, model, proc, _ = load(v16_dir, visual_token_num=3)
    pixels = process_images([pil_image(*size)], proc, model.config, anyres_mode=model.pruning.anyres_mode)
    crops = 1 + grid[0] * grid[1]
    assert pixels.shape[1] == crops
    _, v_token_num, cls_attn = model.generate(prompt_ids(tok), images=pixels, image_sizes=[size], max_new_tokens=2,
                                              do_sample=False)
    assert v_token_num == 3 * crops
    assert cls_attn.shape == (crops, PATCHES)


def test_v16_upstream_mode_counts_unpadded_tokens_and_newlines(v16_dir, load):
    tok, model, proc, _ = load(v16_dir, anyres_mode="upstream")
    size = (80, 30)
    # upstream rule: 96x32 has the largest effective resolution (85x32 fitted, capped at 80*30) -> 3x1 crops.
    # The patch grid is 4 rows x 12 cols; the image spans 80 * 4/30 = 10.67 -> 10 cols, 1 padded col each side.
    pixels = process_images([pil_image(*size)], proc, model.config, anyres_mode=model.pruning.anyres_mode)
    assert pixels.shape[1] == 4
    out = model(prompt_ids(tok), images=pixels, image_sizes=[size])
    assert out.v_token_num == [16 + 4 * (10 + 1)]  # base crop + 4 rows x (10 patches + newline)


def test_pruned_generation_is_deterministic_and_prompt_shrinks(v15_dir, load):
    tok, model, proc, _ = load(v15_dir, visual_token_num=4)
    pixels = process_images([pil_image(32, 32, seed=5)], proc, model.config, anyres_mode=model.pruning.anyres_mode)
    ids = prompt_ids(tok)
    pruned = model.prepare_multimodal_inputs(ids, None, pixels)
    assert pruned.inputs_embeds.shape[1] == ids.shape[1] - 1 + 4 and pruned.v_token_num == [4]
    full_tok, full_model, _, _ = load(v15_dir)
    full = full_model.prepare_multimodal_inputs(ids, None, pixels)
    assert full.inputs_embeds.shape[1] - pruned.inputs_embeds.shape[1] == PATCHES - 4
    a = model.generate(ids, images=pixels, max_new_tokens=6, do_sample=False)[0]
    b = model.generate(ids, images=pixels, max_new_tokens=6, do_sample=False)[0]
    assert torch.equal(a, b) and a.shape == (1, 6)  # new tokens only


def test_kept_tokens_are_the_top_cls_attention_patches(v15_dir, clip_dir, load):
    """Oracle: transformers' eager CLIP attention map and hidden state, torch.topk, transformers' projector."""
    _, model, proc, _ = load(v15_dir, visual_token_num=4)
    pixels = process_images([pil_image(32, 32, seed=2)], proc, model.config, anyres_mode=model.pruning.anyres_mode)
    out = model.visual.encode(pixels)
    keep = model.visual.select(out.features, out.cls_attn).keep
    ref = hf_model("llava", v15_dir, clip_dir)[0]
    attn, feats = eager_cls_attention(ref.model.vision_tower, pixels)
    expected = sorted(attn[0].topk(4).indices.tolist())
    assert keep[0].tolist() == expected
    projected = model.visual.project(out.features, keep)
    with torch.no_grad():
        torch.testing.assert_close(projected[0], ref.model.multi_modal_projector(feats[0, expected]), atol=1e-5,
                                   rtol=1e-5)


def test_batched_generation_matches_batch_one(v15_dir, load):
    tok, model, proc, _ = load(v15_dir, visual_token_num=6)
    images = [pil_image(32, 32, seed=s) for s in (7, 8)]
    prompts = [prompt_ids(tok, "what is in this image?")[0], prompt_ids(tok, "describe")[0]]
    mode = model.pruning.anyres_mode
    singles = [model.generate(p[None], images=process_images([im], proc, model.config, anyres_mode=mode),
                              max_new_tokens=5, do_sample=False)[0][0] for p, im in zip(prompts, images)]
    longest = max(len(p) for p in prompts)
    ids = torch.stack([torch.cat([torch.zeros(longest - len(p), dtype=torch.long), p]) for p in prompts])
    mask = torch.stack([torch.cat([torch.zeros(longest - len(p)), torch.ones(len(p))]).long() for p in prompts])
    out, counts, attn = model.generate(ids, attention_mask=mask,
                                       images=process_images(images, proc, model.config, anyres_mode=mode),
                                       max_new_tokens=5, do_sample=False)
    assert counts == [6, 6] and len(attn) == 2 and attn[0].shape == (1, PATCHES)
    for row, single in zip(out, singles):
        assert row.tolist() == single.tolist()


# --- tower weights -----------------------------------------------------------------------------------------------
def test_v16_uses_its_own_fine_tuned_tower_weights(v16_dir, clip_dir, load):
    _, model, _, _ = load(v16_dir)
    loaded = model.get_vision_tower().vision_tower.state_dict()
    own = load_state_dict(v16_dir, prefix="model.vision_tower.vision_tower.vision_model.")
    base = load_state_dict(clip_dir, prefix="vision_model.")
    key = "encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(own[key], base[key])
    for k, v in own.items():
        assert torch.equal(loaded[k], v), k


def test_v15_uses_the_mm_vision_tower_weights(v15_dir, clip_dir, load):
    _, model, _, _ = load(v15_dir)
    loaded = model.get_vision_tower().vision_tower.state_dict()
    for k, v in load_state_dict(clip_dir, prefix="vision_model.").items():
        if not k.endswith("position_ids"):
            assert torch.equal(loaded[k], v), k


def test_vision_tower_override_and_missing_tower_error(v15_dir, clip_dir, tmp_path, load, monkeypatch):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(v15_dir, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["mm_vision_tower"] = "openai/clip-vit-tiny-patch8-32"  # a hub name (not cached) promising the tiny geometry
    (ckpt / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.delenv("FASTERVLM_VISION_TOWER", raising=False)
    with pytest.raises(FileNotFoundError, match="vision_tower_path=DIR.*FASTERVLM_VISION_TOWER"):
        load(ckpt)
    _, model, _, _ = load(ckpt, vision_tower_path=str(clip_dir))
    assert model.get_vision_tower().num_patches == PATCHES
    monkeypatch.setenv("FASTERVLM_VISION_TOWER", str(clip_dir))
    assert load(ckpt)[1].get_vision_tower() is not None


def test_projector_only_checkpoint_with_model_base(v15_dir, tmp_path, load):
    proj = tmp_path / "llava-v1.5-tiny-pretrain"
    proj.mkdir()
    shutil.copy(v15_dir / "config.json", proj / "config.json")
    state = {k: v * 2 for k, v in load_state_dict(v15_dir).items() if k.startswith("model.mm_projector.")}
    torch.save(state, proj / "mm_projector.bin")
    with pytest.raises(ValueError, match="pass the base LLM as model_base"):
        load(proj)
    from llava.model.builder import load_pretrained_model

    _, model, _, _ = load_pretrained_model(str(proj), str(v15_dir), "llava-v1.5-tiny-pretrain", device="cpu")
    torch.testing.assert_close(model.get_model().mm_projector[0].weight, state["model.mm_projector.0.weight"])


def test_generate_returns_llm_attentions_for_the_analyses(v15_dir, load):
    """return_dict_in_generate + output_attentions (needs eager attention in the LLM) still gives the triple."""
    tok, model, proc, _ = load(v15_dir, visual_token_num=4, attn_implementation="eager")
    ids = prompt_ids(tok)
    pixels = process_images([pil_image(32, 32)], proc, model.config, anyres_mode=model.pruning.anyres_mode)
    out, v_token_num, cls_attn = model.generate(ids, images=pixels, max_new_tokens=3, do_sample=False,
                                                return_dict_in_generate=True, output_attentions=True)
    prompt_len = ids.shape[1] - 1 + 4
    assert out.sequences.shape == (1, 3) and v_token_num == 4 and cls_attn.shape == (1, PATCHES)
    assert len(out.attentions) == 3  # one entry per generated token
    assert out.attentions[0][0].shape == (1, 4, prompt_len, prompt_len)  # layer 0 over the pruned prompt


@pytest.mark.parametrize("dtype", ["bfloat16", torch.float16])
def test_half_precision_loading_and_generation(v15_dir, load, dtype):
    """`dtype` accepts a name or a torch dtype (and `torch_dtype` the older spelling); pruning still keeps the
    top-k of the float32 [CLS] attention."""
    tok, model, proc, _ = load(v15_dir, visual_token_num=4, **({"dtype": dtype} if isinstance(dtype, str)
                                                              else {"torch_dtype": dtype}))
    expected = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    assert model.dtype == expected and model.get_vision_tower().dtype == expected
    pixels = process_images([pil_image(32, 32)], proc, model.config, anyres_mode=model.pruning.anyres_mode)
    out, n, cls_attn = model.generate(prompt_ids(tok), images=pixels, max_new_tokens=2, do_sample=False)
    assert out.shape == (1, 2) and n == 4 and cls_attn.dtype == torch.float32


def test_forward_with_labels_ignores_visual_positions(v15_dir, load):
    from llava.constants import IGNORE_INDEX

    tok, model, proc, _ = load(v15_dir, visual_token_num=4)
    ids = prompt_ids(tok)
    labels = ids.clone()
    pixels = process_images([pil_image(32, 32)], proc, model.config, anyres_mode=model.pruning.anyres_mode)
    out = model(ids, images=pixels, labels=labels)
    mm = model.prepare_multimodal_inputs(ids, None, pixels, labels=labels)
    spot = (ids[0] == IMAGE_TOKEN_INDEX).nonzero().item()
    assert mm.labels[0, spot:spot + 4].tolist() == [IGNORE_INDEX] * 4
    assert mm.labels[0, spot + 4:].tolist() == labels[0, spot + 1:].tolist()
    logits = out.logits[0, :-1]
    targets = mm.labels[0, 1:]
    valid = targets != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[valid], targets[valid])
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)


def test_anyres_without_image_sizes_is_a_clear_error(v16_dir, load):
    tok, model, proc, _ = load(v16_dir)
    pixels = process_images([pil_image(40, 40)], proc, model.config, anyres_mode=model.pruning.anyres_mode)
    with pytest.raises(ValueError, match="need image_sizes"):
        model.generate(prompt_ids(tok), images=pixels, max_new_tokens=1)
