"""MMBench (tsv, base64 images, circular rounds) and ScienceQA (json list, text-only questions) entry points."""

import base64
import csv
import io
import json
from pathlib import Path

import pytest

from llava.eval import model_vqa_mmbench, model_vqa_science
from llava.eval.scoring import mmbench as mmbench_scoring
from tests.conftest import pil_image

COMMON = ["--device", "cpu", "--temperature", "0", "--max_new_tokens", "3", "--visual-token-num", "5"]


def b64_png(w, h, seed):
    buffer = io.BytesIO()
    pil_image(w, h, seed).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def write_tsv(path, rows):
    columns = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, delimiter="\t")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})


@pytest.fixture
def tsv(tmp_path):
    path = tmp_path / "mmbench_dev.tsv"
    write_tsv(path, [
        dict(index=11, question="Which animal is shown?", hint="Look closely.", A="cat", B="dog", C="bird", D="fish",
             answer="B", category="c1", image=b64_png(32, 24, 1)),
        dict(index=12, question="Which color dominates?", hint="nan", A="red", B="green", C="blue",
             answer="C", category="c2", image=b64_png(20, 32, 2)),
    ])
    return path


def test_mmbench_all_rounds_writes_one_line_per_rotation(v15_dir, tsv, tmp_path):
    out = tmp_path / "answers.jsonl"
    argv = ["--model-path", str(v15_dir), "--question-file", str(tsv), "--answers-file", str(out),
            "--all-rounds", "--single-pred-prompt", *COMMON]
    model_vqa_mmbench.main(argv)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["question_id"], r["round_id"]) for r in records] == [(11, 0), (11, 1), (11, 2), (11, 3),
                                                                   (12, 0), (12, 1), (12, 2)]
    assert records[1]["options"] == ["dog", "bird", "fish", "cat"]
    assert records[1]["option_char"] == ["B", "C", "D", "A"]
    assert records[1]["prompt"] == "Look closely.\nWhich animal is shown?\nA. dog\nB. bird\nC. fish\nD. cat"
    assert records[4]["prompt"] == "Which color dominates?\nA. red\nB. green\nC. blue"  # 'nan' hint dropped
    assert all(r["v_token_num"] == 5 for r in records)
    # the scorer reads this layout: both questions complete, nothing unknown or missing
    metrics = mmbench_scoring.evaluate(str(out), str(tsv))
    assert metrics["n_questions"] == 2 and metrics["layout"] == "round_id rotations"
    assert metrics["report"]["n_missing"] == 0 and metrics["report"]["n_unknown"] == 0
    model_vqa_mmbench.main(argv)  # rerun: every round already answered
    assert len(out.read_text().splitlines()) == 7


def test_mmbench_bad_index_names_the_line(v15_dir, tmp_path):
    path = tmp_path / "bad.tsv"
    write_tsv(path, [dict(index=1, question="q", A="a", B="b", image=b64_png(8, 8, 0)),
                     dict(index="x", question="q", A="a", B="b", image=b64_png(8, 8, 0))])
    with pytest.raises(ValueError, match=r"bad\.tsv:3: index 'x' is not a number"):
        model_vqa_mmbench.main(["--model-path", str(v15_dir), "--question-file", str(path),
                                "--answers-file", str(tmp_path / "a.jsonl"), *COMMON])


def test_science_mixes_text_only_questions_and_batches_like_batch_one(v15_dir, tmp_path):
    (tmp_path / "images" / "1").mkdir(parents=True)
    (tmp_path / "images" / "3").mkdir(parents=True)
    pil_image(30, 20, 3).save(tmp_path / "images" / "1" / "image.png")
    pil_image(20, 30, 4).save(tmp_path / "images" / "3" / "image.png")
    value = "<image>\nContext: N/A\nQuestion: Which is a mammal?\nOptions: (A) whale (B) shark"
    problems = [{"id": "1", "image": "1/image.png", "conversations": [{"from": "human", "value": value}]},
                {"id": "2", "conversations": [{"from": "human", "value": "Question: 2+2?\nOptions: (A) 4 (B) 5"}]},
                {"id": "3", "image": "3/image.png", "conversations": [{"from": "human", "value": value}]}]
    qfile = tmp_path / "llava_test_CQM-A.json"
    qfile.write_text(json.dumps(problems))
    runs = {}
    for batch in ("1", "2"):
        out = tmp_path / f"b{batch}.jsonl"
        model_vqa_science.main(["--model-path", str(v15_dir), "--question-file", str(qfile), "--image-folder",
                                str(tmp_path / "images"), "--answers-file", str(out), "--single-pred-prompt",
                                "--batch-size", batch, *COMMON])
        runs[batch] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["question_id"], r["text"]) for r in runs["1"]] == [(r["question_id"], r["text"]) for r in runs["2"]]
    first, text_only = runs["1"][0], runs["1"][1]
    assert first["prompt"].startswith("<image>\nContext: N/A") and first["prompt"].endswith("directly.")
    assert text_only["v_token_num"] == 0 and not text_only["prompt"].startswith("<image>")
    assert first["v_token_num"] == 5


def test_loader_batches_llava16_images_with_different_grids_like_batch_one(v16_dir, tmp_path):
    from llava.eval import model_vqa_loader

    sizes = [(32, 30), (16, 64), (64, 16)]  # different anyres grids, so different crop counts per sample
    with open(tmp_path / "q.jsonl", "w") as f:
        for i, (w, h) in enumerate(sizes):
            pil_image(w, h, seed=i).save(tmp_path / f"{i}.png")
            f.write(json.dumps({"question_id": i, "image": f"{i}.png", "text": "what is this?"}) + "\n")
    runs = {}
    for batch in ("1", "3"):
        out = tmp_path / f"b{batch}.jsonl"
        model_vqa_loader.main(["--model-path", str(v16_dir), "--question-file", str(tmp_path / "q.jsonl"),
                               "--image-folder", str(tmp_path), "--answers-file", str(out), "--batch-size", batch,
                               "--visual-token-num", "4", "--device", "cpu", "--temperature", "0",
                               "--max_new_tokens", "3"])
        runs[batch] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["text"], r["v_token_num"]) for r in runs["1"]] == [(r["text"], r["v_token_num"]) for r in runs["3"]]
    assert len({r["v_token_num"] for r in runs["1"]}) > 1  # the grids really differ: 4 per crop x crops
    assert {r["anyres_mode"] for r in runs["3"]} == {"paper"}


# --------------------------------------------------------------------------- answers unchanged by the #14 redesign

GOLDEN_ANSWERS = Path(__file__).parent / "golden" / "loader_answers.json"
GOLDEN_SIZES = [(80, 48), (40, 90), (64, 64), (120, 30), (33, 77)]  # wide, tall, square: several anyres grids


@pytest.mark.parametrize("case", ["v16-upstream-visionzip-4", "v16-paper-fastv-1", "v15-paper-fastv-4"])
def test_loader_answers_equal_those_recorded_before_the_redesign(case, v15_dir, v16_dir, tmp_path):
    """The answers (text, visual-token count) of `model_vqa_loader` equal those the code before the #14 redesign
    (commit 8e45172) wrote for the same tiny checkpoint, images and questions: batched left padding, the anyres
    crop grid of --anyres-mode upstream, and in-LLM pruning go through llava.inference / llava.eval.answering now."""
    from llava.eval import model_vqa_loader

    checkpoint, mode, method, batch = case.split("-")
    (tmp_path / "img").mkdir()
    with open(tmp_path / "q.jsonl", "w") as f:
        for i, (w, h) in enumerate(GOLDEN_SIZES):
            pil_image(w, h, seed=i).save(tmp_path / "img" / f"{i}.png")
            f.write(json.dumps({"question_id": i, "image": f"{i}.png", "text": f"what is {i}? " * (i + 1)}) + "\n")
    answers = tmp_path / "answers.jsonl"
    model_vqa_loader.main([
        "--model-path", str(v15_dir if checkpoint == "v15" else v16_dir), "--question-file", str(tmp_path / "q.jsonl"),
        "--image-folder", str(tmp_path / "img"), "--answers-file", str(answers), "--visual-token-num", "5",
        "--pruning-method", method, "--fastv-layer", "1", "--anyres-mode", mode, "--temperature", "0",
        "--max_new_tokens", "6", "--batch-size", batch, "--device", "cpu"])
    got = [[r["question_id"], r["text"], r["v_token_num"]] for r in map(json.loads, answers.read_text().splitlines())]
    assert got == json.loads(GOLDEN_ANSWERS.read_text())["answers"][case]
