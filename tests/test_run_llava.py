import pytest

from llava.eval import run_llava
from tests.conftest import pil_image


def test_cli_answers_with_several_images(v15_dir, tmp_path, capsys):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"img{i}.png")
        pil_image(30, 20, seed=i).save(paths[-1])
    text = run_llava.main(["--model-path", str(v15_dir), "--image-file", ",".join(map(str, paths)),
                           "--query", "what is in this image?", "--visual-token-num", "5", "--device", "cpu",
                           "--temperature", "0", "--max_new_tokens", "4"])
    captured = capsys.readouterr()
    assert captured.out.strip() == text
    assert "10 visual tokens kept (fastervlm, 5 per crop)" in captured.err


def test_prompt_building():
    prompt = run_llava.build_prompt("compare <image-placeholder> and <image-placeholder>", 2, "vicuna_v1")
    assert prompt.endswith("USER: compare <image> and <image> ASSISTANT:")
    assert "USER: <image>\n<image>\nhi ASSISTANT:" in run_llava.build_prompt("hi", 2, "vicuna_v1")


def test_cli_missing_image_is_named(v15_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        run_llava.main(["--model-path", str(v15_dir), "--image-file", str(tmp_path / "nope.png"), "--query", "q"])
