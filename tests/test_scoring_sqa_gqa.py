"""ScienceQA letter extraction and breakdowns; GQA exact match and predictions file."""

import json

import pytest

from llava.eval.scoring import gqa, sqa
from llava.eval.scoring.sqa import extract_letter, predicted_index


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


# ------------------------------------------------------------------ ScienceQA

@pytest.mark.parametrize("text, letter", [
    ("A", "A"),
    (" B ", "B"),
    ("A.", "A"),                        # accepted here; LLaVA's script failed it
    ("C)", "C"),
    ("B. The cat is hungry", "B"),
    ("A\nBecause of gravity.", "A"),   # newline read as ". "
    ("The answer is C.", "C"),
    ("The answer is D", "D"),
    ("Because X. The answer is B, not C. The answer is C.", "C"),  # "is X." preferred
    ("I think it is A", None),
    ("a", None),
    ("", None),
])
def test_extract_letter(text, letter):
    assert extract_letter(text) == letter


def test_letter_past_the_choices_is_wrong():
    assert predicted_index("E", 3) == -1
    assert predicted_index("C", 3) == 2


PROBLEMS = {
    # pid: subject, context, grade               groups
    "p1": {"choices": ["x", "y", "z"], "answer": 0, "subject": "natural science", "hint": "",
           "image": "image.png", "grade": "grade3"},              # NAT IMG G1-6
    "p2": {"choices": ["x", "y"], "answer": 1, "subject": "social science", "hint": "Read this.",
           "image": None, "grade": "grade8"},                     # SOC TXT G7-12
    "p3": {"choices": ["w", "x", "y", "z"], "answer": 2, "subject": "language science", "hint": "",
           "image": None, "grade": "grade10"},                    # LAN NO G7-12
    "p4": {"choices": ["x", "y"], "answer": 0, "subject": "natural science", "hint": "Some text",
           "image": "image.png", "grade": "grade5"},              # NAT TXT IMG G1-6
    "p5": {"choices": ["x", "y"], "answer": 0, "subject": "natural science", "hint": "",
           "image": None, "grade": "grade1"},
}


@pytest.fixture
def sqa_dir(tmp_path):
    (tmp_path / "problems.json").write_text(json.dumps(PROBLEMS))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["p1", "p2", "p3", "p4"], "val": ["p5"]}))
    return str(tmp_path)


def test_sqa_breakdowns(tmp_path, sqa_dir):
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "p1", "prompt": "<image>\nQ", "text": "A"},                 # right
        {"question_id": "p2", "prompt": "Q", "text": "The answer is B."},          # right
        {"question_id": "p3", "prompt": "Q", "text": "D"},                         # wrong (C)
        {"question_id": "p5", "prompt": "Q", "text": "A"},                         # not in test
    ])
    m = sqa.evaluate(answers, sqa_dir)
    assert m["accuracy"] == pytest.approx(200 / 3)     # 2 of p1..p3 (p4 missing)
    assert m["img_accuracy"] == pytest.approx(100.0)   # p1
    assert m["subject"] == {"NAT": 100.0, "SOC": 100.0, "LAN": 0.0}
    assert m["context"] == {"TXT": 100.0, "IMG": 100.0, "NO": 0.0}
    assert m["grade"] == {"G1-6": 100.0, "G7-12": 50.0}
    assert m["report"]["missing_ids"] == ["p4"] and m["report"]["unknown_ids"] == ["p5"]


def test_sqa_img_only_split(tmp_path, sqa_dir):
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "p1", "text": "B"}, {"question_id": "p4", "text": "A."}])
    m = sqa.evaluate(answers, sqa_dir, img_only=True)
    assert m["accuracy"] == pytest.approx(50.0) and m["img_accuracy"] == pytest.approx(50.0)
    assert m["report"]["n_annotations"] == 2


def test_sqa_unknown_split(tmp_path, sqa_dir):
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": "p1", "text": "A"}])
    with pytest.raises(ValueError, match="minival"):
        sqa.evaluate(answers, sqa_dir, split="minival")


# ------------------------------------------------------------------ GQA

GQA_QUESTIONS = {
    "q1": {"answer": "yes", "isBalanced": True, "types": {"structural": "verify", "semantic": "attr"}},
    "q2": {"answer": "left", "isBalanced": True, "types": {"structural": "query", "semantic": "rel"}},
    "q3": {"answer": "no", "isBalanced": True, "types": {"structural": "logical", "semantic": "obj"}},
    "q4": {"answer": "table", "isBalanced": True, "types": {"structural": "query", "semantic": "obj"}},
    "q5": {"answer": "red", "isBalanced": False, "types": {"structural": "query", "semantic": "attr"}},
}


def test_gqa_exact_match(tmp_path):
    questions = tmp_path / "testdev_balanced_questions.json"
    questions.write_text(json.dumps(GQA_QUESTIONS))
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "q1", "text": "Yes."},       # -> "yes", right
        {"question_id": "q2", "text": "Left"},       # -> "left", right
        {"question_id": "q3", "text": "yes"},        # wrong
        {"question_id": "q4", "text": "The table"},  # exact match: the article counts, wrong
        {"question_id": "zz", "text": "x"},
    ])
    predictions = tmp_path / "testdev_balanced_predictions.json"
    m = gqa.evaluate(answers, str(questions), str(predictions))
    assert m["accuracy"] == pytest.approx(50.0)
    assert m["binary"] == pytest.approx(50.0)   # q1 right, q3 wrong
    assert m["open"] == pytest.approx(50.0)     # q2 right, q4 wrong
    assert m["structural"] == {"logical": 0.0, "query": 50.0, "verify": 100.0}
    assert m["semantic"]["obj"] == 0.0
    assert m["report"]["unknown_ids"] == ["zz"] and m["report"]["n_annotations"] == 4
    written = json.loads(predictions.read_text())
    assert written[:4] == [{"questionId": "q1", "prediction": "yes"}, {"questionId": "q2", "prediction": "left"},
                           {"questionId": "q3", "prediction": "yes"}, {"questionId": "q4", "prediction": "the table"}]
