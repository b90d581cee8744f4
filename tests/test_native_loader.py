"""load_pretrained_model and run_llava on transformers-native checkpoint directories (llava/model/native.py):
LLaVA-OneVision-hf written by the test with save_pretrained, loaded offline.

Sources of truth: transformers' own unmodified LlavaOnevisionForConditionalGeneration read from the same directory,
asked with the processor's inputs for a chat-template prompt written out here by hand from the template; the pruned
answer against `apply_pruning` put by hand on a fresh instance; the full count of visual tokens is the processor's
own number of `<image>` placeholders; tokens per crop (32 / 8)^2 = 16 by hand.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from unittest.mock import patch

import pytest
import torch
import transformers
from PIL import Image
from transformers import (
    AutoTokenizer,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2VLImageProcessorPil,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SiglipVisionConfig,
    VideoLlavaForConditionalGeneration,
)
from transformers.processing_utils import ProcessorMixin

from llava.eval import run_llava
from llava.integrations.transformers import apply_pruning
from llava.model.native import native_classes
from tests.conftest import pil_image
from tests.qwen_helpers import tiny_qwen2_5_vl_config

SIDE, PATCH = 32, 8
P = (SIDE // PATCH) ** 2  # OneVision: 16 tokens per crop
PINPOINTS = [[32, 64], [64, 32], [64, 64]]
QUERY = "What is shown?"
NEW_TOKENS = 6
QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _template(image: str) -> str:
    """A Qwen-style chat template as llava-onevision-qwen2-*-hf and Qwen2.5-VL / Qwen3-VL ship (shortened: no
    system turn), `image` written for each image entry."""
    return ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for item in message['content'] %}"
            "{% if item['type'] == 'image' %}" + image + "{% else %}{{ item['text'] }}{% endif %}{% endfor %}"
            "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@dataclass(frozen=True)
class Family:
    """One native family: its class, processor class name, the text each image entry becomes, the prompt the
    template gives for QUERY (written out by hand), the tokens one crop gives (None: dynamic resolution)."""

    model_class: type
    processor_class: str
    image_text: str
    prompt: str
    per_crop: int | None


QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
FAMILIES = {
    "onevision": Family(LlavaOnevisionForConditionalGeneration, "LlavaOnevisionProcessor", "<image>\n",
                        f"<|im_start|>user\n<image>\n{QUERY}<|im_end|>\n<|im_start|>assistant\n", P),
    "qwen2_5_vl": Family(Qwen2_5_VLForConditionalGeneration, "Qwen2_5_VLProcessor", QWEN_IMAGE,
                         f"<|im_start|>user\n{QWEN_IMAGE}{QUERY}<|im_end|>\n<|im_start|>assistant\n", None),
    "qwen3_vl": Family(Qwen3VLForConditionalGeneration, "Qwen3VLProcessor", QWEN_IMAGE,
                       f"<|im_start|>user\n{QWEN_IMAGE}{QUERY}<|im_end|>\n<|im_start|>assistant\n", None),
}


def _tokenizer(tok_dir, specials):
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    tokenizer.add_tokens(specials, special_tokens=True)
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def _onevision(tokenizer):
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
    model = LlavaOnevisionForConditionalGeneration._from_config(config).eval()
    torch.nn.init.normal_(model.model.image_newline, std=1.0)
    images = LlavaOnevisionImageProcessorPil(size={"height": SIDE, "width": SIDE}, image_grid_pinpoints=PINPOINTS)
    settings = {"num_image_tokens": P, "vision_feature_select_strategy": "full", "vision_aspect_ratio": "anyres_max_9"}
    return model, images, settings


def _qwen_ids(tokenizer) -> dict:
    return dict(image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
                video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
                vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
                vision_end_token_id=tokenizer.convert_tokens_to_ids("<|vision_end|>"))


def _qwen_images():
    """Patch 2, 2x2 merge: an image of 20x12 px becomes a grid of 10x6 patches, i.e. 15 merged tokens."""
    return Qwen2VLImageProcessorPil(size={"shortest_edge": 64, "longest_edge": 1024}, patch_size=2, merge_size=2,
                                    temporal_patch_size=2)


def _qwen2_5_vl(tokenizer):
    """Tiny random Qwen2.5-VL: 2 vision blocks (block 1 full attention), 2-layer LLM with M-RoPE."""
    config = tiny_qwen2_5_vl_config(len(tokenizer), 2, **_qwen_ids(tokenizer))
    return Qwen2_5_VLForConditionalGeneration(config).eval(), _qwen_images(), {}


def _qwen3_vl(tokenizer):
    """Tiny random Qwen3-VL: 3 vision blocks with DeepStack taps after blocks 0 and 1, 3-layer LLM."""
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                         rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 1, 1],
                                              mrope_interleaved=True)),
        vision_config=dict(depth=3, hidden_size=16, intermediate_size=32, num_heads=2, patch_size=2,
                           temporal_patch_size=2, spatial_merge_size=2, out_hidden_size=32,
                           num_position_embeddings=16, deepstack_visual_indexes=[0, 1]),
        **_qwen_ids(tokenizer))
    return Qwen3VLForConditionalGeneration(config).eval(), _qwen_images(), {}


BUILDERS = {"onevision": (_onevision, ["<image>", "<video>", "<|im_start|>", "<|im_end|>"]),
            "qwen2_5_vl": (_qwen2_5_vl, QWEN_SPECIALS), "qwen3_vl": (_qwen3_vl, QWEN_SPECIALS)}


def write_native_dir(path, tok_dir, name: str):
    """A transformers-native directory of family `name`: model, tokenizer and image processor by save_pretrained;
    processor_config.json and chat_template.jinja as the hub repositories hold them (the processor's own
    save_pretrained needs its torchvision video processor)."""
    build, specials = BUILDERS[name]
    tokenizer = _tokenizer(tok_dir, specials)
    torch.manual_seed(0)
    model, images, settings = build(tokenizer)
    model.generation_config.eos_token_id = None  # random weights: always generate NEW_TOKENS tokens
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    images.save_pretrained(path)
    (path / "processor_config.json").write_text(json.dumps(
        {"processor_class": FAMILIES[name].processor_class, **settings}))
    (path / "chat_template.jinja").write_text(_template(FAMILIES[name].image_text))
    return path


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory, tok_dir):
    """(name, directory) of each native family."""
    return request.param, write_native_dir(tmp_path_factory.mktemp(request.param), tok_dir, request.param)


@pytest.fixture(scope="module")
def ov_dir(tmp_path_factory, tok_dir):
    return write_native_dir(tmp_path_factory.mktemp("llava-onevision-hf"), tok_dir, "onevision")


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "wide.png"
    pil_image(40, 30, seed=5).save(path)  # OneVision: a 2x1 crop grid; Qwen: 20x14 patches, 70 merged tokens
    return path


def _transformers_processor(name: str, path):
    """transformers' processor class of the family on its tokenizer and pil image processor read from `path`, built
    here (not through llava/model/native.py); the class check is skipped for the absent video processor only."""
    check = ProcessorMixin.check_argument_for_proper_class

    def skip_none(self, argument_name, argument):
        return None if argument is None else check(self, argument_name, argument)

    settings = json.loads((path / "processor_config.json").read_text())
    cls = getattr(transformers, settings.pop("processor_class"))
    images = {"onevision": LlavaOnevisionImageProcessorPil}.get(name, Qwen2VLImageProcessorPil).from_pretrained(path)
    with patch.object(ProcessorMixin, "check_argument_for_proper_class", skip_none):
        return cls(image_processor=images, tokenizer=AutoTokenizer.from_pretrained(path), video_processor=None,
                   **settings)


def _reference(family, image_file, pruning: tuple | None = None):
    """(answer, visual tokens) of a fresh transformers model read from the family's directory, on its hand-written
    prompt with transformers' processor: unmodified (visual tokens = the processor's image placeholders), or with
    `apply_pruning(model, *pruning)` put on by hand."""
    name, path = family
    model = FAMILIES[name].model_class.from_pretrained(path).eval()
    processor = _transformers_processor(name, path)
    batch = processor(text=[FAMILIES[name].prompt], images=[Image.open(image_file).convert("RGB")],
                      return_tensors="pt")
    visual = int((batch["input_ids"] == model.config.image_token_id).sum())
    handle = apply_pruning(model, *pruning) if pruning else None
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
    text = processor.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    return text, (handle.last_v_token_num if handle else visual)


def _run_llava(path, image_file, capsys, *flags) -> tuple[str, str]:
    answer = run_llava.main(["--model-path", str(path), "--image-file", str(image_file), "--query", QUERY,
                             "--device", "cpu", "--max_new_tokens", str(NEW_TOKENS), *flags])
    return answer, capsys.readouterr().err


def test_native_classes_are_read_from_adapters():
    assert native_classes() == {"video_llava": VideoLlavaForConditionalGeneration,
                                "llava_onevision": LlavaOnevisionForConditionalGeneration,
                                "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
                                "qwen3_vl": Qwen3VLForConditionalGeneration}
    assert "llava" not in native_classes() and "llava_next" not in native_classes()  # converted into our model


def test_run_llava_at_full_budget_equals_transformers_generate(family, image_file, capsys):
    expected, visual = _reference(family, image_file)
    assert expected  # six random tokens decode to some text: the comparison below is not between two empties
    answer, err = _run_llava(family[1], image_file, capsys)
    assert answer == expected
    assert f"{visual} visual tokens kept" in err


@pytest.mark.parametrize("method, budget", [("uniform", 4), ("random", 3)])
def test_run_llava_pruned_equals_apply_pruning_by_hand(family, image_file, capsys, method, budget):
    expected, kept = _reference(family, image_file, (method, budget))
    _, full = _reference(family, image_file)
    assert kept < full  # the budget does prune
    answer, err = _run_llava(family[1], image_file, capsys, "--visual-token-num", str(budget),
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
        add_generation_prompt=True, tokenize=False) == FAMILIES["onevision"].prompt
    assert context == 512  # the Qwen2 text config's max_position_embeddings


def test_image_processor_is_the_pil_one_without_torchvision(family, load):
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: the default backend is used")
    name, path = family
    _, model, processor, _ = load(path)
    assert type(model) is FAMILIES[name].model_class
    expected = LlavaOnevisionImageProcessorPil if name == "onevision" else Qwen2VLImageProcessorPil
    assert type(processor.image_processor) is expected
    assert isinstance(processor, getattr(transformers, FAMILIES[name].processor_class))
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
    """Named before any weights are read (from_pretrained is never reached)."""
    path = _copy_without(ov_dir, tmp_path, *removed)
    never = AssertionError("weights were read before the missing file was reported")
    with patch.object(LlavaOnevisionForConditionalGeneration, "from_pretrained", side_effect=never):
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
