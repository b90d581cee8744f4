"""`load_pretrained_model` (and the eval entry points) on llava-hf directories: the layout is read from config.json
and the weights are renamed while loading, so a llava-hf directory gives the same model as the liuhaotian one."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llava.mm_utils import process_images
from tests.conftest import pil_image
from tests.hf_helpers import expand_image_tokens, make_llava_hf_dir
from tests.test_model import prompt_ids

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def hf15_dir(tmp_path_factory, v15_dir, clip_dir, tok_dir):
    """LLaVA-1.5 as most llava-hf hub revisions hold it (transformers 4.x names, shards, preprocessor_config.json)."""
    return make_llava_hf_dir(tmp_path_factory.mktemp("hf") / "llava-1.5-tiny-hf", "llava", v15_dir, clip_dir, tok_dir,
                             legacy=True)


@pytest.fixture(scope="module")
def hf16_dir(tmp_path_factory, v16_dir, clip_dir, tok_dir):
    """LLaVA-1.6 as transformers 5.x saves it."""
    return make_llava_hf_dir(tmp_path_factory.mktemp("hf") / "llava-v1.6-tiny-hf", "llava_next", v16_dir, clip_dir,
                             tok_dir)


@pytest.mark.parametrize("version,anyres_mode", [("v1.5", "paper"), ("v1.6", "paper"), ("v1.6", "upstream")])
def test_llava_hf_directory_loads_the_same_model(request, load, version, anyres_mode):
    liuhaotian, hf = (("v15_dir", "hf15_dir") if version == "v1.5" else ("v16_dir", "hf16_dir"))
    tok, model, proc, context = load(request.getfixturevalue(liuhaotian), visual_token_num=3, anyres_mode=anyres_mode)
    hf_tok, hf_model, hf_proc, hf_context = load(request.getfixturevalue(hf), visual_token_num=3,
                                                 anyres_mode=anyres_mode)
    for field in ("image_aspect_ratio", "image_grid_pinpoints", "mm_vision_select_layer", "mm_patch_merge_type",
                  "mm_hidden_size", "hidden_size", "num_hidden_layers"):
        assert getattr(hf_model.config, field, None) == getattr(model.config, field, None), field
    assert hf_model.pruning == model.pruning and hf_context == context
    theirs = hf_model.state_dict()
    for name, tensor in model.state_dict().items():  # the llava-hf embeddings carry one more row (<image>)
        assert torch.equal(theirs[name][: tensor.shape[0]], tensor), name

    image = pil_image(80, 30, seed=5)
    pixels = process_images([image], proc, model.config)
    assert torch.equal(process_images([image], hf_proc, hf_model.config), pixels)
    ids = prompt_ids(tok)
    assert torch.equal(prompt_ids(hf_tok), ids)
    out, v_token_num, cls_attn = model.generate(ids, images=pixels, image_sizes=[image.size], max_new_tokens=4,
                                                do_sample=False)
    hf_out, hf_v_token_num, hf_cls_attn = hf_model.generate(ids, images=pixels, image_sizes=[image.size],
                                                            max_new_tokens=4, do_sample=False)
    assert torch.equal(hf_out, out) and hf_v_token_num == v_token_num and torch.equal(hf_cls_attn, cls_attn)


@pytest.mark.parametrize("version", ["v1.5", "v1.6"])
def test_llava_hf_directory_equals_transformers_own_loading(request, load, version):
    """The test above compares two of our loading paths; here the reference is transformers reading the same
    llava-hf directory itself (AutoModelForImageTextToText.from_pretrained: its own weight renaming, its own
    config), at full budget, where FasterVLM is the unmodified model (LLaVA-1.6: upstream merge)."""
    from transformers import AutoModelForImageTextToText

    path = request.getfixturevalue("hf15_dir" if version == "v1.5" else "hf16_dir")
    tok, model, proc, _ = load(path, anyres_mode="upstream")
    reference = AutoModelForImageTextToText.from_pretrained(path, attn_implementation="eager").eval()
    vocab = reference.config.image_token_id  # transformers' <image> is the one id past the text vocabulary
    image = pil_image(80, 30, seed=5)
    pixels = process_images([image], proc, model.config)
    ids = prompt_ids(tok)
    ours = model(ids, images=pixels, image_sizes=[image.size]).logits  # keeps the llava-hf <image> row
    n_visual = ours.shape[1] - (ids.shape[1] - 1)
    inputs = {"input_ids": expand_image_tokens(ids, n_visual, vocab), "pixel_values": pixels}
    if version == "v1.6":
        inputs["image_sizes"] = torch.tensor([[image.size[1], image.size[0]]])  # transformers: (height, width)
    with torch.no_grad():
        expected = reference(**inputs).logits[..., :vocab]
    torch.testing.assert_close(ours[..., :vocab], expected, atol=1e-4, rtol=1e-4)


def test_config_reading_follows_the_layout(hf15_dir, hf16_dir):
    """read_llava_config serves llava-hf directories too, so the analyses refuse LLaVA-1.6 before loading."""
    from llava.analysis.samples import refuse_unsupported_checkpoint
    from llava.model.checkpoint import read_llava_config

    assert read_llava_config(hf15_dir).image_aspect_ratio == "pad"
    assert read_llava_config(hf16_dir).image_aspect_ratio == "anyres"
    refuse_unsupported_checkpoint(str(hf15_dir))
    with pytest.raises(NotImplementedError, match="anyres"):
        refuse_unsupported_checkpoint(str(hf16_dir))


def edited_copy(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for key, value in changes.items():
        if key == "text_model_type":
            cfg["text_config"]["model_type"] = value
        else:
            cfg[key] = value
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_llava_hf_loading_errors(hf15_dir, v15_dir, clip_dir, tmp_path, load):
    from llava.model.builder import load_pretrained_model

    with pytest.raises(ValueError, match="model_base is for projector-only"):
        load_pretrained_model(str(hf15_dir), str(v15_dir), None, device="cpu")
    with pytest.raises(ValueError, match="carries its own vision tower"):
        load(hf15_dir, vision_tower_path=str(clip_dir))
    with pytest.raises(NotImplementedError, match="'mistral'.*apply_pruning"):
        load(edited_copy(hf15_dir, tmp_path / "mistral", text_model_type="mistral"))
    with pytest.raises(NotImplementedError, match="model_type 'paligemma'"):
        load(edited_copy(hf15_dir, tmp_path / "paligemma", model_type="paligemma"))
    with pytest.raises(NotImplementedError, match="patch tokens only"):
        load(edited_copy(hf15_dir, tmp_path / "full", vision_feature_select_strategy="full"))


def test_textvqa_script_runs_on_a_llava_hf_directory(hf15_dir, v15_dir, tmp_path):
    """`bash scripts/v1_5/eval/textvqa.sh N` with MODEL_PATH at a llava-hf directory answers exactly as with the
    liuhaotian directory of the same weights."""
    from llava.eval import run_benchmark
    from tests.test_eval_runner import TOKENS, answers_path, make_textvqa, qa

    make_textvqa(tmp_path)
    run_benchmark.main(["--benchmark", "textvqa", "--visual-token-num", str(TOKENS), "--ckpt", "liuhaotian",
                        "--data-root", str(tmp_path), "--model-path", str(v15_dir), "--device", "cpu",
                        "--max_new_tokens", "3", "--no-score"])
    env = dict(os.environ, MODEL_PATH=str(hf15_dir), DATA_ROOT=str(tmp_path), CKPT="hf", PYTHON=sys.executable,
               CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    env.pop("METHOD", None)
    proc = subprocess.run(["bash", str(REPO / "scripts/v1_5/eval/textvqa.sh"), str(TOKENS), "--device", "cpu",
                           "--max_new_tokens", "3"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert qa(answers_path(tmp_path, "hf")) == qa(answers_path(tmp_path, "liuhaotian"))
    assert len(qa(answers_path(tmp_path, "hf"))) == 5
