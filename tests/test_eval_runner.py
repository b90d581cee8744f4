"""The benchmark runner and its scripts on a synthetic TextVQA-layout benchmark and the tiny LLaVA-1.5.

One reference run goes through the real script (bash -> run_benchmark -> model_vqa_loader -> scorer);
the other runs (resumed, batched, chunked) must reproduce its greedy answers.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from llava.eval import model_vqa_loader, run_benchmark
from llava.eval.answers import AnswersMismatchError
from llava.mm_utils import load_image, load_image_processor, process_images, tokenizer_image_token
from tests.conftest import pil_image
from tests.oracle_llava import eager_llava, fastervlm_answer, sentencepiece_decode, vicuna_v1_prompt

REPO = Path(__file__).resolve().parents[1]
TOKENS = 6
# (question_id, question): LLaVA's TextVQA file uses the image id as question_id, so img1 repeats.
QUESTIONS = [("img0", "what is written here?"), ("img1", "what brand is this?"), ("img1", "what number is shown?"),
             ("img2", "what color is the sign?"), ("img3", "what is the title?")]
SIZES = {"img0": (32, 32), "img1": (40, 24), "img2": (24, 40), "img3": (36, 30)}


def question_text(question: str) -> str:
    """The question file's `text`, as LLaVA's TextVQA file words it (OCR tokens, then the answer instruction)."""
    return f"{question}\nReference OCR token: abc\nAnswer the question using a single word or phrase."


def make_textvqa(root: Path) -> Path:
    """<root>/textvqa with LLaVA's file names: question jsonl, train_images/, the val annotations."""
    folder = root / "textvqa"
    (folder / "train_images").mkdir(parents=True)
    for seed, (image_id, (w, h)) in enumerate(SIZES.items()):
        pil_image(w, h, seed=seed).save(folder / "train_images" / f"{image_id}.png")
    with open(folder / "llava_textvqa_val_v051_ocr.jsonl", "w") as f:
        for image_id, question in QUESTIONS:
            f.write(json.dumps({"question_id": image_id, "image": f"{image_id}.png", "text": question_text(question)})
                    + "\n")
    data = [{"question_id": 100 + i, "question": q, "image_id": image_id, "answers": ["sign"] * 10}
            for i, (image_id, q) in enumerate(QUESTIONS)]
    (folder / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": data}))
    return folder


def answers_path(root: Path, ckpt: str, tokens: int = TOKENS) -> Path:
    return root / "textvqa" / "answers" / ckpt / "fastervlm" / f"n_{tokens}.jsonl"


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def qa(path: Path) -> list[tuple]:
    return [(r["question_id"], r["text"]) for r in load(path)]


def driver(root: Path, v15_dir, ckpt: str, *extra: str):
    return run_benchmark.main(["--benchmark", "textvqa", "--visual-token-num", str(TOKENS), "--ckpt", ckpt,
                               "--data-root", str(root), "--model-path", str(v15_dir), "--device", "cpu",
                               "--max_new_tokens", "3", *extra])


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    make_textvqa(root)
    return root


@pytest.fixture(scope="module")
def reference(root, v15_dir):
    """bash scripts/v1_5/eval/textvqa.sh 6, pointed at the tiny checkpoint and the synthetic data by env vars."""
    env = dict(os.environ, MODEL_PATH=str(v15_dir), DATA_ROOT=str(root), CKPT="tiny", PYTHON=sys.executable,
               CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    env.pop("METHOD", None)
    proc = subprocess.run(["bash", str(REPO / "scripts/v1_5/eval/textvqa.sh"), str(TOKENS), "--device", "cpu",
                           "--max_new_tokens", "3"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return answers_path(root, "tiny"), proc.stdout


def test_script_writes_answers_and_prints_the_metric(reference, v15_dir):
    path, stdout = reference
    records = load(path)
    assert [r["question_id"] for r in records] == [q for q, _ in QUESTIONS]
    assert [r["metadata"].get("repeat", 0) for r in records] == [0, 0, 1, 0, 0]
    # the original model_vqa_loader records the question file's text as the prompt, unchanged
    assert [r["prompt"] for r in records] == [question_text(q) for _, q in QUESTIONS]
    for r in records:
        assert r["model_id"] == Path(v15_dir).name and r["pruning_method"] == "fastervlm"
        assert r["visual_token_num"] == TOKENS and r["v_token_num"] == TOKENS
        assert set(r) >= {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert "[textvqa] accuracy: " in stdout and "[textvqa] coverage: 5/5 (100.0%)" in stdout
    assert "n_scored: 5" in stdout  # every answer found its annotation
    assert (path.parent / f"n_{TOKENS}.metrics.json").exists()


def test_script_answers_equal_the_oracle(reference, root, v15_dir, clip_dir):
    """Each answer of the script's run (6 of 16 tokens) is the greedy answer of FasterVLM run in transformers' eager
    Llava (tests/oracle_llava.py) on the hand-written vicuna_v1 prompt `<image>\n` + the question file's text: the
    runner's prompt, image, pruning and decoding are checked against code that shares none of them."""
    tokenizer = AutoTokenizer.from_pretrained(v15_dir)
    processor = load_image_processor(clip_dir)
    hf, vocab = eager_llava(v15_dir, clip_dir)
    decode = sentencepiece_decode(v15_dir)
    expected = []
    for image_id, question in QUESTIONS:
        ids = tokenizer_image_token(vicuna_v1_prompt(question_text(question)), tokenizer, return_tensors="pt")[None]
        image = load_image(root / "textvqa" / "train_images" / f"{image_id}.png")
        pixels = process_images([image], processor, SimpleNamespace(image_aspect_ratio="pad"))
        expected.append((image_id, fastervlm_answer(hf, vocab, decode, ids, pixels, TOKENS, max_new_tokens=3)))
    assert qa(reference[0]) == expected


def test_resume_after_a_kill_gives_the_uninterrupted_answers(reference, root, v15_dir, capsys):
    path = answers_path(root, "resumed")
    path.parent.mkdir(parents=True)
    done = reference[0].read_text().splitlines(keepends=True)
    path.write_text("".join(done[:2]) + done[2][: len(done[2]) // 2])  # killed while writing the 3rd line
    driver(root, v15_dir, "resumed", "--no-score")
    err = capsys.readouterr().err
    assert "dropped a truncated last line" in err and "2 of 5 already answered" in err
    assert qa(path) == qa(reference[0])
    assert [r["answer_id"] for r in load(path)[:2]] == [r["answer_id"] for r in load(reference[0])[:2]]
    driver(root, v15_dir, "resumed", "--no-score")  # a finished file: nothing to redo, nothing appended
    assert "all 5 questions answered" in capsys.readouterr().err
    assert qa(path) == qa(reference[0])


def test_batched_answers_equal_batch_one(reference, root, v15_dir):
    driver(root, v15_dir, "batched", "--batch-size", "3", "--no-score")
    assert qa(answers_path(root, "batched")) == qa(reference[0])


def test_two_chunks_merged_equal_a_single_run(reference, root, v15_dir, capsys):
    driver(root, v15_dir, "chunked", "--num-chunks", "2", "--no-score")
    chunk_dir = answers_path(root, "chunked").with_suffix("")
    assert [len(load(chunk_dir / f"2_{k}.jsonl")) for k in range(2)] == [3, 2]  # split_list: ceil(5 / 2) = 3
    assert qa(answers_path(root, "chunked")) == qa(reference[0])
    assert "chunk 1:" in capsys.readouterr().out


def test_refuses_to_mix_budgets_or_models_in_one_answers_file(reference, root, v15_dir, tmp_path):
    target = tmp_path / "answers.jsonl"
    shutil.copy(reference[0], target)
    folder = root / "textvqa"
    argv = ["--model-path", str(v15_dir), "--question-file", str(folder / "llava_textvqa_val_v051_ocr.jsonl"),
            "--image-folder", str(folder / "train_images"), "--answers-file", str(target), "--device", "cpu",
            "--temperature", "0", "--max_new_tokens", "3"]
    with pytest.raises(AnswersMismatchError, match=r"visual_token_num: 6 in the file, 5 in this run.*--overwrite"):
        model_vqa_loader.main(argv + ["--visual-token-num", "5"])
    other_model = tmp_path / "llava-other"
    shutil.copytree(v15_dir, other_model)
    with pytest.raises(AnswersMismatchError, match="model_id: 'llava-v1.5-tiny' in the file, 'llava-other'"):
        run_benchmark.main(["--benchmark", "textvqa", "--visual-token-num", str(TOKENS), "--ckpt", "tiny",
                            "--data-root", str(root), "--model-path", str(other_model), "--device", "cpu"])
    model_vqa_loader.main(argv + ["--visual-token-num", "5", "--overwrite"])
    assert {r["visual_token_num"] for r in load(target)} == {5}


def test_missing_image_names_the_question_and_file(root, v15_dir, tmp_path):
    broken = tmp_path / "data"
    shutil.copytree(root / "textvqa", broken / "textvqa", ignore=shutil.ignore_patterns("answers"))
    (broken / "textvqa" / "train_images" / "img2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"question 'img2': image file not found: .*img2\.png"):
        driver(broken, v15_dir, "x")


def test_malformed_question_line_names_file_and_line(root, v15_dir, tmp_path):
    broken = tmp_path / "data"
    shutil.copytree(root / "textvqa", broken / "textvqa", ignore=shutil.ignore_patterns("answers"))
    qfile = broken / "textvqa" / "llava_textvqa_val_v051_ocr.jsonl"
    lines = qfile.read_text().splitlines()
    lines[2] = lines[2][:-5]
    qfile.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"llava_textvqa_val_v051_ocr\.jsonl:3: malformed JSON line"):
        driver(broken, v15_dir, "x")


def test_missing_question_file_or_image_folder(v15_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"textvqa: question file not found: .*llava_textvqa_val_v051_ocr"):
        driver(tmp_path, v15_dir, "x")
    folder = tmp_path / "textvqa"
    folder.mkdir()
    (folder / "llava_textvqa_val_v051_ocr.jsonl").write_text("")
    with pytest.raises(FileNotFoundError, match=r"image folder not found: .*train_images"):
        driver(tmp_path, v15_dir, "x")


def test_every_script_maps_to_its_benchmark(tmp_path):
    """All 20 scripts, dry run: entry point, default checkpoint, answers path and scorer."""
    env = dict(os.environ, DATA_ROOT=str(tmp_path), PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="")
    for key in ("CKPT", "MODEL_PATH", "METHOD"):
        env.pop(key, None)
    expected = {"gqa": ("gqa", "model_vqa_loader"), "mmbench": ("mmbench", "model_vqa_mmbench"),
                "mmbench_cn": ("mmbench_cn", "model_vqa_mmbench"), "mme": ("MME", "model_vqa_loader"),
                "mmvet": ("mm-vet", "model_vqa"), "pope": ("pope", "model_vqa_loader"),
                "sqa": ("scienceqa", "model_vqa_science"), "textvqa": ("textvqa", "model_vqa_loader"),
                "vizwiz": ("vizwiz", "model_vqa_loader"), "vqav2": ("vqav2", "model_vqa_loader")}
    script = "; ".join(f"echo '=== {fam} {b}'; bash scripts/{fam}/eval/{b}.sh 144 --dry-run"
                       for fam in ("v1_5", "v1_6") for b in expected)
    out = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    sections = out.stdout.split("=== ")[1:]
    assert len(sections) == 20
    for section in sections:
        fam, bench = section.split("\n", 1)[0].split()
        folder, entry = expected[bench]
        ckpt = {"v1_5": "llava-v1.5-7b", "v1_6": "llava-v1.6-vicuna-7b"}[fam]
        assert f"-m llava.eval.{entry} --model-path liuhaotian/{ckpt} " in section
        assert f"{tmp_path}/{folder}/answers/{ckpt}/fastervlm/n_144.jsonl" in section
        assert "--visual-token-num 144 --pruning-method fastervlm" in section
        assert f"-m llava.eval.scoring.{'mmbench' if bench.startswith('mmbench') else bench} --result-file" in section
    usage = subprocess.run(["bash", "scripts/v1_5/eval/gqa.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: bash scripts/v1_5/eval/gqa.sh TOKEN" in usage.stderr
