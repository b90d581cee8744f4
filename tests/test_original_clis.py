"""LLaVA's original scoring command lines (eval_science_qa.py, eval_textvqa.py, eval_pope.py) as subprocesses.

Each runs both as ``python -m llava.eval.X`` and as ``python llava/eval/X.py`` from another directory, on
hand-made data. Expected printed lines and files are written out by hand from what the haotian-liu/LLaVA
(and Theia-4869/FasterVLM, for POPE's last line) scripts print and ``json.dump(obj, f, indent=2)``.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.test_scoring_pope import ANSWERS, write_pope_inputs
from tests.helpers_io import write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, args, tmp_path, as_module):
    """Run one alias. As a file it runs from tmp_path with no PYTHONPATH and without site-packages (``-S``: the
    venv's editable install would make ``llava`` importable anyway), so only the script's own sys.path fix helps;
    the scorers need nothing outside the standard library."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if as_module:
        cmd, cwd = [sys.executable, "-m", f"llava.eval.{script}"], REPO
    else:
        cmd, cwd = [sys.executable, "-S", os.path.join(REPO, "llava", "eval", f"{script}.py")], str(tmp_path)
    return subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


# ------------------------------------------------------------------ ScienceQA

PROBLEMS = {
    "p1": {"choices": ["x", "y", "z"], "answer": 0, "image": "image.png"},
    "p2": {"choices": ["x", "y"], "answer": 1, "image": None},
    "p3": {"choices": ["w", "x", "y", "z"], "answer": 2, "image": None},
    "p4": {"choices": ["x", "y"], "answer": 0, "image": "image.png"},
    "p5": {"choices": ["x", "y"], "answer": 0, "image": None},
}
SQA_ANSWERS = [
    {"question_id": "p1", "prompt": "<image>\nQ1", "text": "A"},                 # right
    {"question_id": "p2", "prompt": "Q2", "text": "The answer is B."},           # right
    {"question_id": "p3", "prompt": "Q3 \u00e9t\u00e9", "text": "C."},          # "C." is FAILED: wrong
    {"question_id": "p5", "prompt": "Q5", "text": "B. y"},                       # parsed, wrong (A)
    {"question_id": "p9", "prompt": "Q9", "text": "A"},                          # unknown
]                                                                                # p4 (image) missing: wrong


def entry(pid, parsed, truth, question, pred, multimodal):
    return {"question_id": pid, "parsed_ans": parsed, "ground_truth": truth, "question": question,
            "pred": pred, "is_multimodal": multimodal}


@pytest.mark.parametrize("as_module", [False, True])
def test_eval_science_qa(tmp_path, as_module):
    base = tmp_path / "sqa"
    base.mkdir()
    (base / "problems.json").write_text(json.dumps(PROBLEMS))
    (base / "pid_splits.json").write_text(json.dumps({"test": ["p1", "p2", "p3", "p4", "p5"], "val": ["p2"]}))
    answers = write_jsonl(tmp_path / "answers.jsonl", SQA_ANSWERS)
    out_file, out_result = tmp_path / "answers_output.jsonl", tmp_path / "answers_result.json"
    proc = run("eval_science_qa", ["--base-dir", str(base), "--result-file", answers, "--output-file",
                                   str(out_file), "--output-result", str(out_result)], tmp_path, as_module)
    assert proc.returncode == 0, proc.stderr
    # 2 of 5 right; LLaVA's IMG subset is the entries whose prompt has <image>: p1 only (p4 unanswered).
    assert proc.stdout.splitlines() == [
        "Total: 5, Correct: 2, Accuracy: 40.00%, IMG-Accuracy: 100.00%",
        "coverage: 4/5 (80.0%)",
        "WARNING: incomplete answers: 4 of 5 questions answered (80.0% coverage)",
        "WARNING: 1 result ids not in the annotations (ignored): p9",
        "WARNING: 1 annotated questions without a result: p4",
    ]
    expected_output = {
        "correct": [entry("p1", "A", "A", "<image>\nQ1", "A", True),
                    entry("p2", "B", "B", "Q2", "The answer is B.", False)],
        "incorrect": [entry("p3", "FAILED", "C", "Q3 \u00e9t\u00e9", "C.", False),
                      entry("p4", "FAILED", "A", "Unknown", "FAILED", False),
                      entry("p5", "B", "A", "Q5", "B. y", False)],
    }
    expected_result = {
        "acc": 40.0, "correct": 2, "count": 5,
        "results": {"p1": 0, "p2": 1, "p3": -1, "p4": -1, "p5": 1},
        "outputs": {"p1": "A", "p2": "The answer is B.", "p3": "C.", "p4": "FAILED", "p5": "B. y"},
    }
    # LLaVA wrote both with json.dump(obj, f, indent=2): ASCII escapes, no trailing newline, keys in this order.
    assert out_file.read_text() == json.dumps(expected_output, indent=2)
    assert out_result.read_text() == json.dumps(expected_result, indent=2)
    assert "Q3 \\u00e9t\\u00e9" in out_file.read_text()


def test_eval_science_qa_nothing_answered(tmp_path):
    base = tmp_path / "sqa"
    base.mkdir()
    (base / "problems.json").write_text(json.dumps(PROBLEMS))
    (base / "pid_splits.json").write_text(json.dumps({"test": ["p2", "p3"]}))
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": "p9", "text": "A"}])
    proc = run("eval_science_qa", ["--base-dir", str(base), "--result-file", answers, "--output-file",
                                   str(tmp_path / "o.json"), "--output-result", str(tmp_path / "r.json")],
               tmp_path, as_module=False)
    assert proc.returncode == 1
    # Unanswered problems are FAILED, none has an <image> prompt: LLaVA divided by zero there.
    assert proc.stdout.splitlines()[:2] == ["Total: 2, Correct: 0, Accuracy: 0.00%, IMG-Accuracy: n/a",
                                            "coverage: 0/2 (0.0%)"]
    assert "ERROR: nothing was scored" in proc.stderr


# ------------------------------------------------------------------ TextVQA

TEXTVQA = {"data": [
    {"question_id": 101, "image_id": "img1", "question": "What brand?", "answers": ["sony"] * 3 + ["canon"] * 7},
    {"question_id": 102, "image_id": "img1", "question": "What year?", "answers": ["1999"] * 10},
    {"question_id": 103, "image_id": "img2", "question": "What color?", "answers": ["red"] * 2 + ["blue"] * 8},
]}
TEXTVQA_ANSWERS = [
    {"question_id": "img1", "prompt": "What brand?\nReference OCR token: Sony\nAnswer briefly.", "text": "Sony",
     "metadata": {}},                                                                  # 3 of 10: 0.9
    {"question_id": "img1", "prompt": "What year?\nAnswer briefly.", "text": "1999.",
     "metadata": {"repeat": 1}},                                                       # 10 of 10: 1.0
    {"question_id": "img9", "prompt": "What?\nAnswer briefly.", "text": "x", "metadata": {}},
]


@pytest.mark.parametrize("as_module", [False, True])
def test_eval_textvqa(tmp_path, as_module):
    annotation = tmp_path / "TextVQA_0.5.1_val.json"
    annotation.write_text(json.dumps(TEXTVQA))
    answers = write_jsonl(tmp_path / "llava-v1.5-7b.jsonl", TEXTVQA_ANSWERS)
    proc = run("eval_textvqa", ["--annotation-file", str(annotation), "--result-file", answers], tmp_path, as_module)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "llava-v1.5-7b",
        "Samples: 2",
        "Accuracy: 95.00%",                  # (0.9 + 1.0) / 2
        "",
        "coverage: 2/3 (66.7%)",
        "WARNING: incomplete answers: 2 of 3 questions answered (66.7% coverage)",
        "WARNING: 1 result ids not in the annotations (ignored): img9",
        "WARNING: 1 annotated questions without a result: 103",
    ]


def test_eval_textvqa_result_dir(tmp_path):
    annotation = tmp_path / "TextVQA_0.5.1_val.json"
    annotation.write_text(json.dumps(TEXTVQA))
    results = tmp_path / "answers"
    results.mkdir()
    write_jsonl(results / "b.jsonl", [{"question_id": 103, "text": "red"}])           # 0.6
    write_jsonl(results / "a.jsonl", TEXTVQA_ANSWERS[:2])
    (results / "notes.txt").write_text("x")
    proc = run("eval_textvqa", ["--annotation-file", str(annotation), "--result-dir", str(results)],
               tmp_path, as_module=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:4] == ["a", "Samples: 2", "Accuracy: 95.00%", ""]
    b = lines.index("b")
    assert lines[b:b + 4] == ["b", "Samples: 1", "Accuracy: 60.00%", ""]
    assert lines[-1] == "Skipping notes.txt"


def test_eval_textvqa_exit_status_when_nothing_matches(tmp_path):
    annotation = tmp_path / "TextVQA_0.5.1_val.json"
    annotation.write_text(json.dumps(TEXTVQA))
    answers = write_jsonl(tmp_path / "x.jsonl", TEXTVQA_ANSWERS[2:])
    proc = run("eval_textvqa", ["--annotation-file", str(annotation), "--result-file", answers], tmp_path, False)
    assert proc.returncode == 1
    assert "coverage: 0/3 (0.0%)" in proc.stdout.splitlines()
    assert "ERROR: nothing was scored" in proc.stderr


# ------------------------------------------------------------------ POPE

# The hand-made POPE case of test_scoring_pope (labels, LLaVA's question file), without its unknown id 99.
POPE_ANSWERS = [answer for answer in ANSWERS if answer["question_id"] != 99]
SEPARATOR = "===================================="
# adversarial TP=1 FP=1 TN=0 FN=1: acc 1/3, precision 1/2, recall 1/2, F1 1/2, yes ratio 2/3.
ADVERSARIAL = [
    "Category: adversarial, # samples: 3",
    "TP\tFP\tTN\tFN\t",
    "1\t1\t0\t1",
    "Accuracy: 0.3333333333333333",
    "Precision: 0.5",
    "Recall: 0.5",
    "F1 score: 0.5",
    "Yes ratio: 0.6666666666666666",
    "0.500, 0.333, 0.500, 0.500, 0.667",
    SEPARATOR,
]
# random TP=1 FP=1 TN=0 FN=0: acc 1/2, precision 1/2, recall 1, F1 = 2*.5*1/1.5 = 2/3, yes ratio 1.
RANDOM = [
    "Category: random, # samples: 2",
    "TP\tFP\tTN\tFN\t",
    "1\t1\t0\t0",
    "Accuracy: 0.5",
    "Precision: 0.5",
    "Recall: 1.0",
    "F1 score: 0.6666666666666666",
    "Yes ratio: 1.0",
    "0.667, 0.500, 0.500, 1.000, 1.000",
    SEPARATOR,
]


@pytest.fixture
def pope_files(tmp_path):
    return write_pope_inputs(tmp_path)


@pytest.mark.parametrize("as_module", [False, True])
def test_eval_pope(tmp_path, pope_files, as_module):
    ann, questions = pope_files
    answers = write_jsonl(tmp_path / "answers.jsonl", POPE_ANSWERS)
    proc = run("eval_pope", ["--annotation-dir", ann, "--question-file", questions, "--result-file", answers],
               tmp_path, as_module)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ADVERSARIAL + RANDOM + [
        f"Average F1 score: {(0.5 + 2 / 3) / 2}",
        "coverage: 5/5 (100.0%)",
    ]


def test_eval_pope_partial_answers(tmp_path, pope_files):
    ann, questions = pope_files
    answers = write_jsonl(tmp_path / "answers.jsonl", POPE_ANSWERS[:3])
    proc = run("eval_pope", ["--annotation-dir", ann, "--question-file", questions, "--result-file", answers],
               tmp_path, as_module=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ADVERSARIAL + ["Category: random, # samples: 0", SEPARATOR] + [
        "Average F1 score: 0.5",
        "coverage: 3/5 (60.0%)",
        "WARNING: partial: average over 1/2 categories, no answers for random",
        "WARNING: incomplete answers: 3 of 5 questions answered (60.0% coverage)",
        "WARNING: 2 annotated questions without a result: 4, 5",
    ]
