"""`llava.hf.apply_pruning` on transformers' own LlavaForConditionalGeneration / LlavaNextForConditionalGeneration,
built from our tiny checkpoints: full budget = the unmodified model, pruned = our model tree with the same weights,
undo = the model as it was."""

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.hf import apply_pruning
from llava.mm_utils import process_images
from tests.conftest import pil_image
from tests.hf_helpers import expand_image_tokens, hf_model, hf_processor
from tests.oracle_llava import cls_attention_and_features, eager_llava, greedy_tokens, logits_from_embeds, pruned_embeds
from tests.test_model import prompt_ids
from tests.tiny_checkpoints import PATCHES

PROMPT = "USER: <image>\nwhat is in this image? ASSISTANT:"
CKPT = {"llava": "v15_dir", "llava_next": "v16_dir"}


@pytest.fixture(scope="module")
def models(request, clip_dir):
    """One transformers instance per class for the module (sdpa); each test undoes what it applied."""
    built = {}

    def get(kind):
        if kind not in built:
            built[kind] = hf_model(kind, request.getfixturevalue(CKPT[kind]), clip_dir, attn_implementation="sdpa")
        return built[kind]

    yield get
    for model, _ in built.values():
        assert "fastervlm" not in model.__dict__, "a test left its pruning installed"


@pytest.fixture(scope="module")
def processors(tok_dir, clip_dir):
    return {kind: hf_processor(kind, tok_dir, clip_dir) for kind in CKPT}


def hf_inputs(ids, image, kind, handle, image_token_id, pixels):
    """transformers' inputs for our prompt ids (one IMAGE_TOKEN_INDEX) and pixels."""
    full = handle.adapter.pipeline.full_tokens(image.size if kind != "llava" else None)
    inputs = {"input_ids": expand_image_tokens(ids, full, image_token_id), "pixel_values": pixels}
    if kind == "llava_next":
        inputs["image_sizes"] = torch.tensor([[image.size[1], image.size[0]]])  # transformers: (height, width)
    return inputs


# --- full budget: the unmodified model ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind,size", [("llava", (40, 24)), ("llava_next", (40, 24)), ("llava_next", (24, 24)),
                                       ("llava_next", (30, 70))])
def test_full_budget_equals_the_unmodified_model(models, processors, kind, size):
    """(24, 24) ties between the 1x2 and 2x1 grids: the handle must follow transformers' rule, as its processor."""
    model, _ = models(kind)
    inputs = processors[kind](images=pil_image(*size, seed=3), text=PROMPT, return_tensors="pt")
    with torch.no_grad():
        ref_logits = model(**inputs).logits
    ref = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    with apply_pruning(model) as handle:
        with torch.no_grad():
            logits = model(**inputs).logits
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    assert torch.equal(out, ref)
    placeholders = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert handle.last_v_token_num == placeholders
    crops = 1 if kind == "llava" else inputs["pixel_values"].shape[1]
    assert handle.last_cls_attn.shape == (crops, PATCHES)


# --- pruned: our own model tree with the same weights ------------------------------------------------------------
@pytest.mark.parametrize("kind,method", [("llava", "fastervlm"), ("llava", "visionzip"), ("llava", "fastv"),
                                         ("llava_next", "fastervlm"), ("llava_next", "fastv")])
def test_pruned_outputs_equal_our_model_tree(models, load, request, kind, method):
    model, image_token_id = models(kind)
    tok, ours, proc, _ = load(request.getfixturevalue(CKPT[kind]), visual_token_num=3, anyres_mode="upstream")
    ours.set_pruning(ours.pruning.replace(method=method, llm_layer=1))
    with apply_pruning(model, method=method, visual_token_num=3, llm_layer=1) as handle:
        for size in [(40, 24), (80, 30)]:  # grids 2x1 and 3x1: no tie, so both grid rules agree
            image = pil_image(*size, seed=4)
            pixels = process_images([image], proc, ours.config, anyres_mode=ours.pruning.anyres_mode)
            ids = prompt_ids(tok)
            expected = ours(ids, images=pixels, image_sizes=[image.size]).logits
            new, v_token_num, cls_attn = ours.generate(ids, images=pixels, image_sizes=[image.size],
                                                       max_new_tokens=4, do_sample=False)
            inputs = hf_inputs(ids, image, kind, handle, image_token_id, pixels)
            with torch.no_grad():
                logits = model(**inputs).logits[..., :image_token_id]  # transformers adds the image token row
            torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
            assert out[0, inputs["input_ids"].shape[1]:].tolist() == new[0].tolist()
            assert handle.last_v_token_num == v_token_num and torch.equal(handle.last_cls_attn, cls_attn)
            assert method == "fastv" or v_token_num < inputs["input_ids"].eq(image_token_id).sum()


@pytest.mark.parametrize("size", [(40, 24), (24, 40)])
def test_pruned_llava_equals_the_oracle(models, v15_dir, clip_dir, load, size):
    """The differential test above shares our selection code with its reference; here the reference shares none:
    FasterVLM written out in transformers' eager Llava (tests/oracle_llava.py: [CLS] attention from the eager CLIP
    maps, top-3 kept in raster order, projected and spliced), logits and greedy tokens."""
    model, image_token_id = models("llava")
    tok, ours, proc, _ = load(v15_dir)
    oracle, vocab = eager_llava(v15_dir, clip_dir)
    image = pil_image(*size, seed=7)
    pixels = process_images([image], proc, ours.config, anyres_mode=ours.pruning.anyres_mode)
    ids = prompt_ids(tok)
    embeds = pruned_embeds(oracle, ids, pixels, 3)
    expected_cls, _ = cls_attention_and_features(oracle.model.vision_tower, pixels)
    with apply_pruning(model, visual_token_num=3) as handle:
        inputs = hf_inputs(ids, image, "llava", handle, image_token_id, pixels)
        with torch.no_grad():
            logits = model(**inputs).logits[..., :vocab]
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    torch.testing.assert_close(handle.last_cls_attn, expected_cls, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits, logits_from_embeds(oracle, embeds, vocab), atol=1e-4, rtol=1e-4)
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == greedy_tokens(oracle, embeds, vocab, 4, tok.eos_token_id)


def test_labels_are_pruned_with_the_prompt(models, v15_dir, load):
    """labels lose the pruned positions: the loss is over the prompt's text targets, written out by hand (the text
    ids around the placeholder, IGNORE_INDEX over the 4 kept image positions)."""
    model, image_token_id = models("llava")
    tok, ours, proc, _ = load(v15_dir, visual_token_num=4)
    image = pil_image(32, 32, seed=6)
    pixels = process_images([image], proc, ours.config, anyres_mode=ours.pruning.anyres_mode)
    ids = prompt_ids(tok)
    spot = int((ids[0] == IMAGE_TOKEN_INDEX).nonzero())
    expected_labels = torch.cat([ids[0, :spot], torch.full((4,), IGNORE_INDEX), ids[0, spot + 1:]])
    with apply_pruning(model, visual_token_num=4) as handle:
        inputs = hf_inputs(ids, image, "llava", handle, image_token_id, pixels)
        labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == image_token_id, IGNORE_INDEX)
        with torch.no_grad():
            out = model(**inputs, labels=labels)
    assert out.logits.shape[1] == len(expected_labels) == ids.shape[1] - 1 + 4
    expected = torch.nn.functional.cross_entropy(out.logits[0, :-1], expected_labels[1:], ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, expected)
    assert (ids == IMAGE_TOKEN_INDEX).sum() == 1


def test_batch_with_different_grids_matches_batch_one(models, processors, v16_dir, clip_dir):
    """Left-padded batch, LLaVA-1.6 images with 2x1 and 3x1 grids (pixel crops padded by the processor)."""
    model, _ = models("llava_next")
    processor = processors["llava_next"]
    images = [pil_image(40, 24, seed=1), pil_image(80, 30, seed=2)]
    texts = [PROMPT, "USER: <image>\ndescribe ASSISTANT:"]
    with apply_pruning(model, visual_token_num=3) as handle:
        singles = []
        for image, text in zip(images, texts):
            one = processor(images=[image], text=[text], return_tensors="pt")
            out = model.generate(**one, max_new_tokens=4, do_sample=False)
            singles.append((out[0, one["input_ids"].shape[1]:].tolist(), handle.last_v_token_num,
                            handle.last_cls_attn))
        batch = processor(images=images, text=texts, return_tensors="pt", padding=True)
        out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    prompt_len = batch["input_ids"].shape[1]
    assert torch.equal(out[:, :prompt_len], batch["input_ids"])  # the caller's prompt, not the pruned one
    assert handle.last_v_token_num == [s[1] for s in singles] and singles[0][1] != singles[1][1]
    for row, (tokens, _, cls_attn), batch_attn in zip(out, singles, handle.last_cls_attn):
        assert row[prompt_len:].tolist() == tokens
        torch.testing.assert_close(batch_attn, cls_attn)
    # independent of batch 1: each sample's [CLS] attention is the eager CLIP's on that sample's own crops
    # (base + 2x1 grid = 3 crops, base + 3x1 grid = 4; the processor pads the first sample's crops to 4)
    tower = hf_model("llava_next", v16_dir, clip_dir, attn_implementation="eager")[0].model.vision_tower
    for i, crops in enumerate((3, 4)):
        expected, _ = cls_attention_and_features(tower, batch["pixel_values"][i, :crops])
        torch.testing.assert_close(handle.last_cls_attn[i], expected, atol=1e-6, rtol=1e-5)


# --- undo --------------------------------------------------------------------------------------------------------
def test_undo_restores_the_model(models, processors):
    model, _ = models("llava")
    layers = model.model.language_model.layers
    hooks_before = [len(layer._forward_pre_hooks) for layer in layers]
    inputs = processors["llava"](images=pil_image(40, 24), text=PROMPT, return_tensors="pt")
    ref = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    first = apply_pruning(model, method="fastervlm", visual_token_num=2)
    pruned = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    handle = apply_pruning(model, method="fastv", visual_token_num=2, llm_layer=1)  # replaces the first
    assert not first.active and model.fastervlm is handle
    assert [len(layer._forward_pre_hooks) for layer in layers] != hooks_before
    handle.undo()
    handle.undo()  # idempotent
    assert not any(name in model.__dict__ for name in ("forward", "generate", "fastervlm"))
    assert [len(layer._forward_pre_hooks) for layer in layers] == hooks_before
    assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), ref)
    assert not torch.equal(pruned, ref)


def test_text_only_generate_and_forward_pass_through(models, processors):
    model, _ = models("llava")
    inputs = processors["llava"].tokenizer(["USER: hello ASSISTANT:"], return_tensors="pt")
    ref = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    with apply_pruning(model, visual_token_num=2) as handle:
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), ref)
        assert handle.last_v_token_num == 0 and handle.last_cls_attn is None


# --- refusals ----------------------------------------------------------------------------------------------------
def test_an_existing_instance_forward_is_wrapped_and_put_back(models, processors):
    """e.g. accelerate's hooks replace `forward` on the instance: pruning wraps it and undo restores it."""
    model, _ = models("llava")
    calls = []
    original = model.forward

    def hooked(*args, **kwargs):
        calls.append(kwargs.get("input_ids").shape[1])
        return original(*args, **kwargs)

    model.forward = hooked
    inputs = processors["llava"](images=pil_image(40, 24), text=PROMPT, return_tensors="pt")
    try:
        with apply_pruning(model, visual_token_num=2):
            with torch.no_grad():
                model(**inputs)
        assert calls == [inputs["input_ids"].shape[1] - 14]  # the hooked forward saw the pruned prompt
        assert model.__dict__["forward"] is hooked
    finally:
        del model.forward


def test_precomputed_image_features_are_refused(models, processors):
    model, _ = models("llava")
    inputs = processors["llava"](images=pil_image(40, 24), text=PROMPT, return_tensors="pt")
    features = model.get_image_features(pixel_values=inputs.pop("pixel_values"))
    with apply_pruning(model, visual_token_num=2):
        with pytest.raises(ValueError, match="pass pixel_values, not mm_encoder_outputs"):
            model.generate(**inputs, mm_encoder_outputs={"image": features}, max_new_tokens=2)


def test_llava_next_refuses_the_paper_layout(models):
    model, _ = models("llava_next")
    with pytest.raises(ValueError, match="only 'upstream'.*load_pretrained_model"):
        apply_pruning(model, anyres_mode="paper")
    assert "forward" not in model.__dict__


def test_unsupported_models_and_settings_are_refused(models):
    model, _ = models("llava")
    with pytest.raises(TypeError, match="LlavaForConditionalGeneration"):
        apply_pruning(model.model.language_model)
    model.config.vision_feature_select_strategy = "full"
    try:
        with pytest.raises(NotImplementedError, match="patch tokens only"):
            apply_pruning(model)
    finally:
        model.config.vision_feature_select_strategy = "default"
    with pytest.raises(ValueError, match="between 1 and 16"):
        apply_pruning(model, visual_token_num=17)


def test_placeholders_that_do_not_fit_the_images_are_an_error(models, processors):
    model, image_token_id = models("llava")
    inputs = processors["llava"](images=pil_image(40, 24), text=PROMPT, return_tensors="pt")
    ids = inputs["input_ids"]
    spot = int((ids[0] == image_token_id).nonzero()[0])
    inputs["input_ids"] = torch.cat([ids[:, :spot], ids[:, spot + 1:]], dim=1)  # one placeholder short
    inputs["attention_mask"] = inputs["attention_mask"][:, 1:]
    with apply_pruning(model, visual_token_num=2):
        with pytest.raises(ValueError, match=r"\[15\] image placeholder tokens.*need \[16\]"):
            model.generate(**inputs, max_new_tokens=2)
