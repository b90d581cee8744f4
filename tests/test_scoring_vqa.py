"""VQA normalisation and soft accuracy; VQAv2, VizWiz and MM-Vet files (TextVQA: test_scoring_textvqa.py)."""

import json

import pytest

from llava.eval.scoring import mmvet, vizwiz, vqav2
from llava.eval.scoring.vqa_normalize import (EvalAIAnswerProcessor, evalai_normalize, normalize_answer,
                                              process_punctuation, vqa_accuracy)
from tests.helpers_io import write_jsonl


# ------------------------------------------------------------------ normalisation

@pytest.mark.parametrize("raw, expected", [
    ("Two", "2"),                # number word, case-folded
    ("the dog.", "dog"),         # article dropped, final period stripped
    ("dont", "don't"),           # contraction restored
    ("1,000", "1000"),           # comma between digits: punctuation deleted, not spaced
    ("3.5", "3.5"),              # a period before a digit is a decimal point
    ("yes, it is", "yes it is"), # ", " -> deleted (mark next to a space)
    ("hello-world", "hello world"),  # "-" inside a word -> space
    ("a.m.", "am"),              # periods not followed by a digit go ("am" is one word, no article)
    ("An apple\n", "apple"),
    ("ten", "10"),
    ("eleven", "eleven"),        # only zero..ten are mapped
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_comma_between_digits_switches_every_mark_to_delete():
    # Without a digit comma, "-" inside a word becomes a space ...
    assert process_punctuation("x-y") == "x y"
    # ... with one anywhere, every mark is deleted instead.
    assert process_punctuation("x-y 1,5") == "xy 15"


def test_evalai_processor_splits_possessive_and_drops_question_mark():
    assert evalai_normalize("John's car?") == "john 's car"
    assert EvalAIAnswerProcessor()("Two Dogs.") == "2 dogs"
    # The official evaluator keeps "'s" attached.
    assert normalize_answer("John's car") == "john's car"


# ------------------------------------------------------------------ VQA accuracy
# With 10 annotators and k of them giving the predicted answer, leaving out
# annotator i leaves k-1 matches if i matched, else k; the score is the mean of
# min(1, matches/3) over the 10 subsets:
#   k=1: (1*min(1,0/3) + 9*min(1,1/3)) / 10 = (0 + 3) / 10        = 0.3
#   k=2: (2*min(1,1/3) + 8*min(1,2/3)) / 10 = (2/3 + 16/3) / 10   = 0.6
#   k=3: (3*min(1,2/3) + 7*min(1,3/3)) / 10 = (2 + 7) / 10        = 0.9
#   k=4: (4*min(1,3/3) + 6*min(1,4/3)) / 10 = 10 / 10             = 1.0

@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_accuracy_leave_one_out(k, expected):
    gt = ["cat"] * k + ["dog"] * (10 - k)
    assert vqa_accuracy("cat", gt) == pytest.approx(expected)


def test_vqa_accuracy_normalises_both_sides():
    gt = ["2"] * 3 + ["3"] * 7
    assert vqa_accuracy("Two", gt) == pytest.approx(0.9)
    assert vqa_accuracy("Two", gt, normalize=None) == 0.0


def test_vqa_accuracy_short_answer_list():
    # 3 annotators all "cat": each subset has 2 matches -> 2/3.
    assert vqa_accuracy("cat", ["cat"] * 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        vqa_accuracy("cat", [])


# ------------------------------------------------------------------ VQAv2 / VizWiz / MM-Vet

def test_vqav2_submission_covers_the_split(tmp_path):
    split = write_jsonl(tmp_path / "test.jsonl", [{"question_id": q} for q in (1, 2, 3)])
    result = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": 1, "text": "Two"}, {"question_id": 2, "text": "Yes."}, {"question_id": 9, "text": "x"}])
    upload = tmp_path / "upload" / "sub.json"
    metrics = vqav2.evaluate(result, test_split=split, upload_file=str(upload))
    assert json.loads(upload.read_text()) == [
        {"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": "yes"}, {"question_id": 3, "answer": ""}]
    assert metrics["submission"]["n_empty"] == 1
    assert metrics["submission"]["report"]["unknown_ids"] == ["9"]


def test_vqav2_val_accuracy_per_answer_type(tmp_path):
    annotations = tmp_path / "ann.json"
    annotations.write_text(json.dumps({"annotations": [
        {"question_id": 1, "answer_type": "number", "answers": [{"answer": a} for a in ["2"] * 3 + ["3"] * 7]},
        {"question_id": 2, "answer_type": "yes/no", "answers": [{"answer": "yes"}] * 10},
    ]}))
    result = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": 1, "text": "Two"}, {"question_id": 2, "text": "Yes."}])
    metrics = vqav2.evaluate(result, annotation_file=str(annotations))
    assert metrics["accuracy"] == pytest.approx(95.0)
    assert metrics["answer_type"] == {"number": pytest.approx(90.0), "yes/no": pytest.approx(100.0)}


def test_vizwiz_submission(tmp_path):
    split = write_jsonl(tmp_path / "test.jsonl", [
        {"question_id": "a", "image": "VizWiz_test_0.jpg"}, {"question_id": "b", "image": "VizWiz_test_1.jpg"}])
    result = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": "a", "text": "Unanswerable."}])
    upload = tmp_path / "vizwiz.json"
    metrics = vizwiz.evaluate(result, split, str(upload))
    assert json.loads(upload.read_text()) == [
        {"image": "VizWiz_test_0.jpg", "answer": "unanswerable"}, {"image": "VizWiz_test_1.jpg", "answer": ""}]
    assert metrics["n_empty"] == 1 and metrics["report"]["missing_ids"] == ["b"]


def test_mmvet_ids_get_the_v1_prefix_once(tmp_path):
    result = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": 0, "text": "A cat.\nIt sits."}, {"question_id": "v1_1", "text": "42"}])
    known = tmp_path / "mm-vet.json"
    known.write_text(json.dumps({"v1_0": {}, "v1_1": {}, "v1_2": {}}))
    upload = tmp_path / "mmvet.json"
    metrics = mmvet.evaluate(result, str(upload), str(known))
    assert json.loads(upload.read_text()) == {"v1_0": "A cat.\nIt sits.", "v1_1": "42"}
    assert metrics["report"]["missing_ids"] == ["v1_2"]
