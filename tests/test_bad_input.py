"""Every documented bad input raises an error that names the problem."""

import json
import shutil

import pytest
import torch

from llava.mm_utils import process_images
from llava.model.pruning import PruningConfig
from tests.conftest import pil_image
from tests.oracle_llava import cls_attention_and_features, eager_llava, greedy_tokens, logits_from_embeds, pruned_embeds
from tests.test_model import prompt_ids


@pytest.mark.parametrize("budget,bound", [(0, "at least 1"), (-3, "at least 1"), (17, "between 1 and 16")])
def test_budget_out_of_range(v15_dir, load, budget, bound):
    """The tiny tower has 4 x 4 = 16 patches per crop; a request below 1 is refused before the tower is known."""
    with pytest.raises(ValueError, match=f"visual_token_num={budget} is out of range.*{bound}"):
        load(v15_dir, visual_token_num=budget)


def test_unknown_method_and_anyres_mode():
    with pytest.raises(ValueError, match="unknown pruning method 'topk'.*fastervlm"):
        PruningConfig(method="topk")
    with pytest.raises(ValueError, match="anyres_mode must be one of"):
        PruningConfig(anyres_mode="spatial")


def test_prompt_without_image_placeholder(v15_dir, load):
    tok, model, proc, _ = load(v15_dir)
    ids = tok("USER: hello ASSISTANT:", return_tensors="pt").input_ids
    pixels = process_images([pil_image(32, 32)], proc, model.config, anyres_mode=model.pruning.anyres_mode)
    with pytest.raises(ValueError, match=r"hold 0 <image> placeholder\(s\).*but 1 image\(s\) were given"):
        model.generate(ids, images=pixels, max_new_tokens=2)


def test_more_placeholders_than_images(v15_dir, load):
    tok, model, proc, _ = load(v15_dir)
    pixels = process_images([pil_image(32, 32)], proc, model.config, anyres_mode=model.pruning.anyres_mode)
    with pytest.raises(ValueError, match=r"hold 2 <image> placeholder\(s\).*but 1 image\(s\)"):
        model.generate(prompt_ids(tok, n_images=2), images=pixels, max_new_tokens=2)
    with pytest.raises(ValueError, match="no images were given"):
        model.generate(prompt_ids(tok), max_new_tokens=2)


def test_two_images_two_placeholders_equal_the_oracle(v15_dir, clip_dir, load):
    """Two different images, 3 tokens each: the [CLS] attention per image, the logits (kept tokens spliced in
    placeholder order) and the greedy answer equal FasterVLM run in transformers' eager Llava (tests/oracle_llava.py);
    a swapped image order or a wrong kept set would change the logits."""
    tok, model, proc, _ = load(v15_dir, visual_token_num=3)
    pixels = process_images([pil_image(40, 24, seed=1), pil_image(30, 50, seed=2)], proc, model.config,
                            anyres_mode=model.pruning.anyres_mode)
    ids = prompt_ids(tok, n_images=2)
    out, n, cls_attn = model.generate(ids, images=pixels, max_new_tokens=4, do_sample=False)
    logits = model(ids, images=pixels).logits
    hf, vocab = eager_llava(v15_dir, clip_dir)
    expected_cls, _ = cls_attention_and_features(hf.model.vision_tower, pixels)
    embeds = pruned_embeds(hf, ids, pixels, 3)
    assert n == 6 and embeds.shape[1] == ids.shape[1] - 2 + 6
    torch.testing.assert_close(cls_attn, expected_cls, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(logits, logits_from_embeds(hf, embeds, vocab), atol=1e-4, rtol=1e-4)
    assert out[0].tolist() == greedy_tokens(hf, embeds, vocab, 4, tok.eos_token_id)


@pytest.mark.parametrize("remove,message", [
    ("config.json", "config.json is missing"),
    ("weights", "no model weights in"),
    ("tokenizer.model", "no tokenizer in"),
])
def test_incomplete_checkpoint_directory(v15_dir, tmp_path, load, remove, message):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(v15_dir, ckpt)
    weights = [p for p in ckpt.iterdir() if p.name.startswith("pytorch_model")]
    doomed = weights if remove == "weights" else [ckpt / remove]
    for p in doomed:
        p.unlink()
    with pytest.raises(FileNotFoundError, match=message):
        load(ckpt)


def test_missing_shard_is_named(v15_dir, tmp_path, load):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(v15_dir, ckpt)
    (ckpt / "pytorch_model-00002-of-00002.bin").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_model-00002-of-00002.bin"):
        load(ckpt)


def test_not_a_llava_checkpoint(v15_dir, tmp_path, load):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(v15_dir, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg["mm_vision_tower"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="no mm_vision_tower: not a LLaVA checkpoint"):
        load(ckpt)


@pytest.mark.parametrize("field,value,message", [
    ("mm_projector_type", "qformer", "unknown mm_projector_type 'qformer'"),
    ("mm_vision_select_feature", "pooled", "unknown mm_vision_select_feature 'pooled'"),
])
def test_unknown_config_values(v15_dir, tmp_path, load, field, value, message):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(v15_dir, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg[field] = value
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message):
        load(ckpt)


def test_wrong_image_tensor_shape(v15_dir, load):
    tok, model, _, _ = load(v15_dir)
    with pytest.raises(ValueError, match=r"images tensor must be \(B, 3, S, S\)"):
        model.generate(prompt_ids(tok), images=torch.zeros(3, 32, 32), max_new_tokens=1)


def test_fastv_layer_flows_from_the_loader_and_is_checked_against_the_llm(v15_dir, load):
    _, model, _, _ = load(v15_dir, visual_token_num=4, pruning_method="fastv", llm_layer=1)
    assert model.pruning.llm_layer == 1
    with pytest.raises(ValueError, match="FastV llm_layer=2 must be between 1 and 1"):
        load(v15_dir, visual_token_num=4, pruning_method="fastv")  # the tiny LLM has only 2 layers
