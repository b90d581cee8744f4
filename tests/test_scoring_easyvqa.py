"""easy-vqa: exact match after normalisation, question kinds, the majority baseline, incomplete runs.

Hand-computed cases. The rule (llava/eval/scoring/easyvqa.py): lower-case, surrounding whitespace and ASCII
punctuation removed, then string equality with the gold answer; every question is in the denominator.
"""


import pytest

from llava.eval.scoring import easyvqa
from llava.eval.scoring.easyvqa import normalize, question_kind
from tests.helpers_io import write_jsonl


@pytest.mark.parametrize("text, expected", [
    ("Yes.", "yes"),
    ("  Circle!\n", "circle"),
    ('"red"', "red"),
    ("dark blue", "dark blue"),      # inner spaces stay
    ("a circle", "a circle"),        # articles are not removed: exact match
    ("no.?!", "no"),
    ("", ""),
])
def test_normalize(text, expected):
    assert normalize(text) == expected


@pytest.mark.parametrize("question, answer, kind", [
    ("What shape is in the image?", "circle", "shape"),
    ("What color is the shape?", "teal", "color"),
    ("Is there a red shape?", "yes", "yes/no"),
    ("Is there not a red shape?", "no", "yes/no negated"),
    ("Is no circle present?", "yes", "yes/no negated"),
    ("Does the image contain a nothing?", "no", "yes/no"),   # "nothing" is not "not"
])
def test_question_kind(question, answer, kind):
    assert question_kind(question, answer) == kind


QUESTIONS = [
    {"question_id": 0, "text": "What shape is in the image?", "answer": "circle"},
    {"question_id": 1, "text": "What color is the shape?", "answer": "red"},
    {"question_id": 2, "text": "Is there a red shape?", "answer": "yes"},
    {"question_id": 3, "text": "Is there not a blue shape?", "answer": "yes"},
]


@pytest.fixture
def question_file(tmp_path):
    return write_jsonl(tmp_path / "llava_easyvqa_test.jsonl", QUESTIONS)


def test_complete_run(tmp_path, question_file):
    answers = write_jsonl(tmp_path / "a.jsonl", [
        {"question_id": 0, "text": "Circle."}, {"question_id": 1, "text": "a red"},
        {"question_id": 2, "text": "Yes"}, {"question_id": 3, "text": "no"}])
    m = easyvqa.evaluate(answers, question_file)
    assert m["accuracy"] == pytest.approx(50.0)
    assert m["by_kind"] == {"color": 0.0, "shape": 100.0, "yes/no": 100.0, "yes/no negated": 0.0}
    assert (m["majority_answer"], m["majority_baseline"]) == ("yes", pytest.approx(50.0))
    assert m["partial"] is False


def test_missing_unknown_duplicate(tmp_path, question_file):
    answers = write_jsonl(tmp_path / "a.jsonl", [
        {"question_id": 0, "text": "square"}, {"question_id": 0, "text": "circle"},  # last kept: right
        {"question_id": 2, "text": "yes"},
        {"question_id": 42, "text": "yes"}])
    m = easyvqa.evaluate(answers, question_file)
    assert m["accuracy"] == pytest.approx(50.0)            # 2 right of 4; questions 1 and 3 missing = wrong
    assert m["accuracy_on_answered"] == pytest.approx(100.0)
    assert m["questions_by_kind"] == {"color": 1, "shape": 1, "yes/no": 1, "yes/no negated": 1}
    assert m["majority_baseline"] == pytest.approx(50.0)   # "yes" is 2 of the 4 gold answers
    assert m["partial"] is True
    r = m["report"]
    assert r["missing_ids"] == ["1", "3"] and r["unknown_ids"] == ["42"] and r["duplicate_ids"] == ["0"]
    assert (r["n_annotations"], r["n_matched"]) == (4, 2)
