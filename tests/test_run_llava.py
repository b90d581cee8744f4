from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from llava import inference
from llava.eval import run_llava
from llava.mm_utils import load_image, load_image_processor, process_images, tokenizer_image_token
from tests.conftest import pil_image
from tests.oracle_llava import eager_llava, fastervlm_answer, sentencepiece_decode, vicuna_v1_prompt

LLAVA_15_PAD = SimpleNamespace(image_aspect_ratio="pad")  # LLaVA-1.5's preprocessing: pad to square, then CLIP


def test_cli_answers_with_several_images(v15_dir, clip_dir, tmp_path, capsys):
    """The CLI's answer for two images at 5 tokens per crop is the oracle's (tests/oracle_llava.py: FasterVLM in
    transformers' eager Llava on the hand-written vicuna_v1 prompt, images in --image-file order)."""
    images = [pil_image(30, 20, seed=2), pil_image(20, 36, seed=3)]  # seeds whose swap changes the answer
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"img{i}.png")
        image.save(paths[-1])
    query = "what is in this image?"
    text = run_llava.main(["--model-path", str(v15_dir), "--image-file", ",".join(map(str, paths)),
                           "--query", query, "--visual-token-num", "5", "--device", "cpu",
                           "--temperature", "0", "--max_new_tokens", "4"])
    captured = capsys.readouterr()
    assert captured.out.strip() == text
    assert "10 visual tokens kept (fastervlm, 5 per crop)" in captured.err

    tokenizer = AutoTokenizer.from_pretrained(v15_dir)
    ids = tokenizer_image_token(vicuna_v1_prompt(query, n_images=2), tokenizer, return_tensors="pt")[None]
    pixels = process_images([load_image(p) for p in paths], load_image_processor(clip_dir), LLAVA_15_PAD)
    hf, vocab = eager_llava(v15_dir, clip_dir)
    decode = sentencepiece_decode(v15_dir)
    assert text == fastervlm_answer(hf, vocab, decode, ids, pixels, 5, max_new_tokens=4)
    assert text != fastervlm_answer(hf, vocab, decode, ids, pixels.flip(0), 5, max_new_tokens=4)  # order shows


def test_prompt_building():
    prompt = inference.build_prompt("compare <image-placeholder> and <image-placeholder>", 2, "vicuna_v1")
    assert prompt.endswith("USER: compare <image> and <image> ASSISTANT:")
    assert "USER: <image>\n<image>\nhi ASSISTANT:" in inference.build_prompt("hi", 2, "vicuna_v1")


def test_cli_missing_image_is_named(v15_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        run_llava.main(["--model-path", str(v15_dir), "--image-file", str(tmp_path / "nope.png"), "--query", "q"])


def test_upstream_anyres_answer_equals_the_one_recorded_before_the_redesign(v16_dir, tmp_path, capsys):
    """LLaVA-1.6 with --anyres-mode upstream, two images whose crop grids differ between the two grid rules: the
    answer and kept-token count equal those `python -m llava.eval.run_llava` printed at commit 8e45172 (before the
    #14 redesign) for the same tiny checkpoint, images and flags."""
    paths = []
    for i, (w, h) in enumerate([(80, 48), (40, 90)]):
        paths.append(tmp_path / f"{i}.png")
        pil_image(w, h, seed=i).save(paths[-1])
    text = run_llava.main(["--model-path", str(v16_dir), "--image-file", ",".join(map(str, paths)), "--query", "hi",
                           "--visual-token-num", "3", "--anyres-mode", "upstream", "--max_new_tokens", "6",
                           "--device", "cpu"])
    assert text == "#onin>\ufffd gives"
    assert "40 visual tokens kept (fastervlm, 3 per crop)" in capsys.readouterr().err
