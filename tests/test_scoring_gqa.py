"""GQA: the converter's answer normalisation, eval.py's exact match, and incomplete runs.

Expected values are hand-computed from the official pipeline: LLaVA's scripts/convert_gqa_for_eval.py
(``text.rstrip('.').lower()``) and GQA's eval.py (balanced questions only, exact string match, "open" =
structural type ``query``, one prediction per id, the last line wins).
"""

import json
import subprocess
import sys

import pytest

from llava.eval.scoring import gqa
from llava.eval.scoring.gqa import normalize_prediction
from tests.helpers_io import write_jsonl


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"),
    ("Yes.", "yes"),
    ("Yes..", "yes"),          # every trailing period goes
    ("U.S.", "u.s"),           # inner periods stay
    ("yes. ", "yes. "),        # no whitespace strip: the trailing space shields the period
    (" Left", " left"),
    ("The Table", "the table"),  # articles are not removed
    ("", ""),
])
def test_normalize_prediction_is_rstrip_period_then_lower(text, expected):
    assert normalize_prediction(text) == expected


QUESTIONS = {
    "q1": {"answer": "yes", "isBalanced": True, "types": {"structural": "verify", "semantic": "attr"}},
    "q2": {"answer": "left", "isBalanced": True, "types": {"structural": "query", "semantic": "rel"}},
    "q3": {"answer": "no", "isBalanced": True, "types": {"structural": "logical", "semantic": "obj"}},
    "q4": {"answer": "table", "isBalanced": True, "types": {"structural": "query", "semantic": "obj"}},
    "q5": {"answer": "red", "isBalanced": False, "types": {"structural": "query", "semantic": "attr"}},
}


@pytest.fixture
def question_file(tmp_path):
    path = tmp_path / "testdev_balanced_questions.json"
    path.write_text(json.dumps(QUESTIONS))
    return str(path)


def test_complete_run(tmp_path, question_file):
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "q1", "text": "Yes."},       # "yes": right
        {"question_id": "q2", "text": "Left"},       # "left": right
        {"question_id": "q3", "text": "NO"},         # right
        {"question_id": "q4", "text": "The table"},  # "the table" != "table": wrong
        {"question_id": "q5", "text": "blue"},       # unbalanced: not scored, not unknown
    ])
    m = gqa.evaluate(answers, question_file)
    assert m["accuracy"] == pytest.approx(75.0)
    assert m["binary"] == pytest.approx(100.0)  # q1, q3 right
    assert m["open"] == pytest.approx(50.0)     # q2 right, q4 wrong
    assert m["structural"] == {"logical": 100.0, "query": 50.0, "verify": 100.0}
    assert m["semantic"] == {"attr": 100.0, "obj": 50.0, "rel": 100.0}  # q5's wrong "attr" is not counted
    assert m["partial"] is False
    r = m["report"]
    assert (r["n_annotations"], r["n_matched"], r["n_unknown"], r["n_missing"]) == (4, 4, 0, 0)


def test_missing_counts_wrong_over_the_balanced_denominator(tmp_path, question_file):
    # eval.py refuses a run with a balanced question unanswered; we score it over all 4 balanced questions.
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "q1", "text": "yes"}, {"question_id": "q2", "text": "left"},
        {"question_id": "q4", "text": "chair"}])
    m = gqa.evaluate(answers, question_file)
    assert m["accuracy"] == pytest.approx(50.0)              # 2 right of 4, not 2 of 3
    assert m["accuracy_on_answered"] == pytest.approx(200 / 3)
    assert m["binary"] == pytest.approx(50.0)                # q1 right, q3 missing
    assert m["structural"]["logical"] == 0.0
    assert m["partial"] is True
    assert m["report"]["missing_ids"] == ["q3"] and m["report"]["n_matched"] == 3


def test_unknown_and_duplicate_ids(tmp_path, question_file):
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "q1", "text": "no"},
        {"question_id": "q1", "text": "Yes."},   # eval.py's dict keeps the last prediction: right
        {"question_id": "q2", "text": "left"}, {"question_id": "q3", "text": "no"},
        {"question_id": "q4", "text": "table"},
        {"question_id": "zz", "text": "x"},      # no such question: ignored
    ])
    m = gqa.evaluate(answers, question_file)
    assert m["accuracy"] == pytest.approx(100.0)
    r = m["report"]
    assert r["duplicate_ids"] == ["q1"] and r["unknown_ids"] == ["zz"]
    assert (r["n_results"], r["n_matched"], r["n_annotations"]) == (6, 4, 4)


def test_integer_ids_match_string_question_ids(tmp_path):
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps({"201": {"answer": "no", "isBalanced": True, "types": {"structural": "verify"}}}))
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": 201, "text": "No"}])
    assert gqa.evaluate(answers, str(questions))["accuracy"] == pytest.approx(100.0)


def test_predictions_file_is_every_answer_line_in_order(tmp_path, question_file):
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "q2", "text": "Left."}, {"question_id": "q1", "text": "no"},
        {"question_id": "q1", "text": "YES"}, {"question_id": "zz", "text": "x."}])
    predictions = tmp_path / "out" / "testdev_balanced_predictions.json"
    gqa.evaluate(answers, question_file, str(predictions))
    assert json.loads(predictions.read_text()) == [
        {"questionId": "q2", "prediction": "left"}, {"questionId": "q1", "prediction": "no"},
        {"questionId": "q1", "prediction": "yes"}, {"questionId": "zz", "prediction": "x"}]


def test_cli_exit_status(tmp_path, question_file):
    def cli(records):
        answers = write_jsonl(tmp_path / "a.jsonl", records)
        return subprocess.run([sys.executable, "-m", "llava.eval.scoring.gqa", "--question-file", question_file,
                               "--result-file", answers], capture_output=True, text=True)

    partial = cli([{"question_id": "q1", "text": "yes"}])
    assert partial.returncode == 0 and "coverage: 1/4 (25.0%)" in partial.stdout and "accuracy: 25.00" in partial.stdout
    nothing = cli([{"question_id": "zz", "text": "yes"}])
    assert nothing.returncode == 1 and "nothing was scored" in nothing.stderr
