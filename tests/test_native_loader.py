"""load_pretrained_model and run_llava on transformers-native checkpoint directories (llava/model/native.py):
LLaVA-OneVision-hf written by the test with save_pretrained, loaded offline.

Sources of truth: transformers' own unmodified LlavaOnevisionForConditionalGeneration read from the same directory,
asked with the processor's inputs for a chat-template prompt written out here by hand from the template; the pruned
answer against `apply_pruning` put by hand on a fresh instance; the full count of visual tokens is the processor's
own number of `<image>` placeholders; tokens per crop (32 / 8)^2 = 16 by hand.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoTokenizer,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    Qwen2Config,
    SiglipVisionConfig,
)

from llava.eval import run_llava
from llava.integrations.transformers import apply_pruning
from llava.model.native import native_classes
from tests.conftest import pil_image

SIDE, PATCH = 32, 8
P = (SIDE // PATCH) ** 2  # 16 tokens per crop
PINPOINTS = [[32, 64], [64, 32], [64, 64]]
SPECIALS = ["<image>", "<video>", "<|im_start|>", "<|im_end|>"]
# A Qwen-style template as llava-hf/llava-onevision-qwen2-*-hf ship (shortened: no system turn)
TEMPLATE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for item in message['content'] %}"
            "{% if item['type'] == 'image' %}<image>\n{% else %}{{ item['text'] }}{% endif %}{% endfor %}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
QUERY = "What is shown?"
PROMPT = f"<|im_start|>user\n<image>\n{QUERY}<|im_end|>\n<|im_start|>assistant\n"  # TEMPLATE applied by hand
NEW_TOKENS = 6


def _tokenizer(tok_dir):
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    tokenizer.add_tokens(SPECIALS, special_tokens=True)
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def _model(tokenizer) -> LlavaOnevisionForConditionalGeneration:
    """Tiny random OneVision: 2-layer SigLIP (32 px, patch 8), 2-layer Qwen2, newline embedding not zero."""
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=SIDE, patch_size=PATCH)
    text = Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
                       tie_word_embeddings=False)
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text,
                                  image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
                                  video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
                                  vision_feature_layer=-1, vision_feature_select_strategy="full",
                                  image_grid_pinpoints=PINPOINTS, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlavaOnevisionForConditionalGeneration._from_config(config).eval()
    torch.nn.init.normal_(model.model.image_newline, std=1.0)
    model.generation_config.eos_token_id = None  # random weights: always generate NEW_TOKENS tokens
    return model


@pytest.fixture(scope="module")
def ov_dir(tmp_path_factory, tok_dir):
    """A llava-onevision-hf directory: model, tokenizer and image processor by save_pretrained; processor_config.json
    and chat_template.jinja as the hub repositories hold them (the processor's own save_pretrained needs its
    torchvision video processor)."""
    path = tmp_path_factory.mktemp("llava-onevision-hf")
    tokenizer = _tokenizer(tok_dir)
    _model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    LlavaOnevisionImageProcessorPil(size={"height": SIDE, "width": SIDE}, image_grid_pinpoints=PINPOINTS,
                                    ).save_pretrained(path)
    (path / "processor_config.json").write_text(json.dumps(
        {"processor_class": "LlavaOnevisionProcessor", "num_image_tokens": P, "vision_feature_select_strategy": "full",
         "vision_aspect_ratio": "anyres_max_9"}))
    (path / "chat_template.jinja").write_text(TEMPLATE)
    return path


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "wide.png"
    pil_image(40, 30, seed=5).save(path)  # a 2x1 crop grid
    return path


def _reference(ov_dir, image_file, pruning: tuple | None = None):
    """(answer, visual tokens) of a fresh transformers model from ov_dir on the hand-written PROMPT, with the
    processor's inputs: unmodified (visual tokens = the processor's `<image>` placeholders), or with
    `apply_pruning(model, *pruning)` put on by hand."""
    from PIL import Image

    from llava.model.native import load_native_processor

    model = LlavaOnevisionForConditionalGeneration.from_pretrained(ov_dir).eval()
    processor = load_native_processor(ov_dir, model)
    batch = processor(text=[PROMPT], images=[Image.open(image_file).convert("RGB")], return_tensors="pt")
    visual = int((batch["input_ids"] == model.config.image_token_id).sum())
    handle = apply_pruning(model, *pruning) if pruning else None
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    text = processor.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    return text, (handle.last_v_token_num if handle else visual)


def _run_llava(ov_dir, image_file, capsys, *flags) -> tuple[str, str]:
    answer = run_llava.main(["--model-path", str(ov_dir), "--image-file", str(image_file), "--query", QUERY,
                             "--device", "cpu", "--max_new_tokens", str(NEW_TOKENS), *flags])
    return answer, capsys.readouterr().err


def test_onevision_is_a_native_class():
    assert native_classes()["llava_onevision"] is LlavaOnevisionForConditionalGeneration
    assert "llava" not in native_classes() and "llava_next" not in native_classes()  # converted into our model


def test_run_llava_at_full_budget_equals_transformers_generate(ov_dir, image_file, capsys):
    expected, visual = _reference(ov_dir, image_file)
    assert expected  # six random tokens decode to some text: the comparison below is not between two empties
    answer, err = _run_llava(ov_dir, image_file, capsys)
    assert answer == expected
    assert f"{visual} visual tokens kept" in err


@pytest.mark.parametrize("method, budget", [("uniform", 4), ("random", 3)])
def test_run_llava_pruned_equals_apply_pruning_by_hand(ov_dir, image_file, capsys, method, budget):
    expected, kept = _reference(ov_dir, image_file, (method, budget))
    _, full = _reference(ov_dir, image_file)
    assert kept < full  # the budget does prune
    answer, err = _run_llava(ov_dir, image_file, capsys, "--visual-token-num", str(budget),
                             "--pruning-method", method)
    assert answer == expected
    assert f"{kept} visual tokens kept ({method}, {budget} per crop)" in err


def test_loader_returns_the_processor_and_honours_the_options(ov_dir, load):
    tokenizer, model, processor, context = load(ov_dir, visual_token_num=4, pruning_method="uniform",
                                                dtype="bfloat16", attn_implementation="eager")
    assert type(model) is LlavaOnevisionForConditionalGeneration
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"
    pruning = model.fastervlm.pruning
    assert (pruning.method, pruning.visual_token_num, pruning.tokens_per_crop) == ("uniform", 4, P)
    assert processor.tokenizer is tokenizer and processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUERY}]}],
        add_generation_prompt=True, tokenize=False) == PROMPT
    assert context == 512  # the Qwen2 text config's max_position_embeddings


def test_image_processor_is_the_pil_one_without_torchvision(ov_dir, load):
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: the default backend is used")
    _, _, processor, _ = load(ov_dir)
    assert type(processor.image_processor) is LlavaOnevisionImageProcessorPil
    assert processor.video_processor is None


def _copy_without(ov_dir, tmp_path, *names):
    import shutil

    target = tmp_path / "copy"
    shutil.copytree(ov_dir, target, ignore=shutil.ignore_patterns(*names))
    return target


@pytest.mark.parametrize("removed, named", [(("preprocessor_config.json",), "preprocessor_config.json"),
                                            (("tokenizer.json", "tokenizer.model"), "tokenizer"),
                                            (("config.json",), "config.json")])
def test_missing_files_are_named(ov_dir, tmp_path, load, removed, named):
    path = _copy_without(ov_dir, tmp_path, *removed)
    with pytest.raises(FileNotFoundError, match=named):
        load(path)


def test_missing_chat_template_is_named(ov_dir, tmp_path, image_file):
    path = _copy_without(ov_dir, tmp_path, "chat_template.jinja")
    with pytest.raises(ValueError, match="chat_template.jinja"):
        run_llava.main(["--model-path", str(path), "--image-file", str(image_file), "--query", QUERY,
                        "--device", "cpu", "--max_new_tokens", "1"])


def test_model_base_is_refused_for_a_native_directory(ov_dir, load, tmp_path):
    from llava.model.builder import load_pretrained_model

    with pytest.raises(ValueError, match="model_base"):
        load_pretrained_model(str(ov_dir), str(tmp_path), None, device="cpu")
