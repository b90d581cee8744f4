"""GQA exact match and predictions file (the ScienceQA tests are in test_scoring_sqa.py)."""

import json

import pytest

from llava.eval.scoring import gqa


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


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
