"""TextVQA scorer: MMF's EvalAI answer processor, the 10-choose-9 soft accuracy, LLaVA's prompt parsing and
matching, and repeats / duplicates / unknown / missing ids.

Expected values are worked by hand from the rules of haotian-liu/LLaVA ``llava/eval/eval_textvqa.py`` and
``llava/eval/m4c_evaluator.py`` (EvalAIAnswerProcessor, TextVQAAccuracyEvaluator), or from the small oracle
below, written from the accuracy's definition.
"""

import json

import pytest

from llava.eval.scoring import textvqa
from llava.eval.scoring.textvqa import question_from_prompt
from llava.eval.scoring.vqa_normalize import evalai_normalize, vqa_accuracy
from tests.helpers_io import write_jsonl

INSTRUCTION = "Answer the question using a single word or phrase."


# ------------------------------------------------------------------ EvalAI answer processor

@pytest.mark.parametrize("raw, expected", [
    ("Two Dogs.", "2 dogs"),          # lower case, final period stripped, number word -> digit
    ("John's car?", "john 's car"),   # '?' dropped, "'s" split off
    ("it's", "it 's"),
    ("1,000", "1000"),                # commas are dropped before punctuation handling
    ("yes,no", "yesno"),              # ... so a comma never becomes a space
    ("up-to -date", "upto date"),     # " -" anywhere: every "-" is deleted, not spaced
    ("up-to- date", "upto date"),     # "- " anywhere: likewise
    ("3.5", "3.5"),                   # a period before a digit stays
    ("a.m.", "am"),                   # other periods go; "am" is not an article
    ("mr.smith", "mrsmith"),
    ("hello-world", "hello world"),   # a mark inside a word becomes a space
    ("yes - no", "yes no"),           # a mark next to a space is deleted
    ("(sony)", "sony"),               # '(' and ')' become spaces, then the split drops them
    ("sony!", "sony"),
    ("The Coca-Cola", "coca cola"),   # article dropped after lower-casing
    ("An apple\n", "apple"),
    ("\tstop\t", "stop"),
    ("dont", "don't"),                # contraction table
    ("Im", "im"),                     # the table's key "Im" never matches after lower-casing
    ("none", "0"),
    ("ten", "10"),
    ("eleven", "eleven"),             # only none/zero..ten are mapped
    ("5:00", "5:00"),                 # ':' is not in the punctuation list
    ("." * 40 + "x", "." * 8 + "x"),  # re.UNICODE (32) passed as sub()'s count: only 32 periods go
])
def test_evalai_processor(raw, expected):
    assert evalai_normalize(raw) == expected


# ------------------------------------------------------------------ soft accuracy

def leave_one_out_oracle(pred, answers):
    """TextVQAAccuracyEvaluator's definition: for each annotator, the other 9 answers; min(1, matches/3); mean."""
    scores = []
    for i in range(len(answers)):
        others = answers[:i] + answers[i + 1:]
        scores.append(min(1.0, sum(a == pred for a in others) / 3))
    return sum(scores) / len(scores)


@pytest.mark.parametrize("k, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_soft_accuracy_by_hand(k, expected):
    # k matching annotators: k subsets keep k-1 matches, 10-k keep k; e.g. k=3: (3*2/3 + 7*1) / 10 = 0.9.
    answers = ["cat"] * k + ["dog"] * (10 - k)
    assert leave_one_out_oracle("cat", answers) == pytest.approx(expected)
    assert vqa_accuracy("cat", answers, normalize=evalai_normalize) == pytest.approx(expected)


@pytest.mark.parametrize("pred, answers, expected", [
    ("two", ["Two"] * 2 + ["2."] + ["two dogs"] * 7, 0.9),      # 3 answers normalise to "2"
    ("Sony", ["sony"] * 3 + ["canon"] * 7, 0.9),
    ("The Canon.", ["sony"] * 3 + ["canon"] * 7, 1.0),
    ("nikon", ["sony"] * 3 + ["canon"] * 7, 0.0),
])
def test_soft_accuracy_normalises_both_sides(pred, answers, expected):
    normalised = [evalai_normalize(a) for a in answers]
    assert leave_one_out_oracle(evalai_normalize(pred), normalised) == pytest.approx(expected)
    assert vqa_accuracy(pred, answers, normalize=evalai_normalize) == pytest.approx(expected)


# ------------------------------------------------------------------ prompts

@pytest.mark.parametrize("prompt, question", [
    ("What brand?\nReference OCR token: sony\n" + INSTRUCTION, "what brand?"),
    ("Reference OCR token: sony\nWhat Brand?\n" + INSTRUCTION, "what brand?"),
    ("What brand?\n" + INSTRUCTION, "what brand?"),
    ("OCR tokens: a b Question: What\nbrand? Short answer:", "what\nbrand?"),
    ("Reference OCR token: sony\nWhat brand?", "reference ocr token: sony"),  # 2 lines: LLaVA takes line 1
    # layouts LLaVA's prompt_processor rejects (assert / AttributeError)
    ("What brand?", None),
    ("What brand?\nA\nB", None),                  # 3 lines without OCR tokens
    ("What brand?\nReference OCR token: a\nB\nC", None),
    ("OCR tokens: a b What brand?", None),
    ("", None),
])
def test_question_from_prompt(prompt, question):
    assert question_from_prompt(prompt) == question


# ------------------------------------------------------------------ matching

DATA = {"data": [
    {"question_id": 101, "image_id": "img1", "question": "What brand?", "answers": ["sony"] * 3 + ["canon"] * 7},
    {"question_id": 102, "image_id": "img1", "question": "What year?", "answers": ["1999"] * 10},
    {"question_id": 103, "image_id": "img2", "question": "What color?", "answers": ["red"] * 2 + ["blue"] * 8},
    # the same question twice on one image, under two question ids
    {"question_id": 201, "image_id": "img3", "question": "What number?", "answers": ["7"] * 10},
    {"question_id": 202, "image_id": "img3", "question": "What number?", "answers": ["9"] * 10},
]}


@pytest.fixture
def annotation(tmp_path):
    path = tmp_path / "TextVQA_0.5.1_val.json"
    path.write_text(json.dumps(DATA))
    return str(path)


def answer(qid, question, text, repeat=0):
    record = {"question_id": qid, "prompt": f"{question}\n{INSTRUCTION}", "text": text}
    record["metadata"] = {"repeat": repeat} if repeat else {}
    return record


def test_llava_layout_unknown_and_missing(tmp_path, annotation):
    result = write_jsonl(tmp_path / "a.jsonl", [
        answer("img1", "What brand?", "Sony"),                  # 0.9
        answer("img1", "what year?", "1999.", repeat=1),        # 1.0
        answer("img9", "What?", "x"),                           # unknown image
        answer("img2", "What shape?", "x"),                     # unknown question
    ])
    m = textvqa.evaluate(result, annotation)
    assert m["accuracy"] == pytest.approx(95.0)                 # mean over the 2 scored, as LLaVA
    assert m["n_scored"] == 2 and m["partial"] is True
    report = m["report"]
    assert (report["n_expected"], report["n_answered"]) == (5, 2)
    assert report["unknown_ids"] == ["img9", "img2"]
    assert report["missing_ids"] == ["103", "201", "202"]


def test_repeats_of_one_question_take_their_own_annotations(tmp_path, annotation):
    # Written out of order: repeat 1 first. By repeat, "7" goes to 201 and "9" to 202: both right.
    # (LLaVA's dict scored both against 202: (0 + 1) / 2 = 50%.)
    result = write_jsonl(tmp_path / "a.jsonl", [
        answer("img3", "What number?", "9", repeat=1),
        answer("img3", "What number?", "7"),
    ])
    m = textvqa.evaluate(result, annotation)
    assert m["accuracy"] == pytest.approx(100.0)
    assert m["n_same_question_on_image"] == 2
    assert m["report"]["n_duplicate"] == 0


def test_a_line_written_twice_keeps_the_last(tmp_path, annotation):
    result = write_jsonl(tmp_path / "a.jsonl", [
        answer("img1", "What brand?", "canon"),   # 1.0, replaced
        answer("img1", "What brand?", "sony"),    # 0.9
    ])
    m = textvqa.evaluate(result, annotation)
    assert m["accuracy"] == pytest.approx(90.0) and m["n_scored"] == 1
    assert m["report"]["duplicate_ids"] == ["img1"]


def test_more_repeats_than_annotations_never_score_one_annotation_twice(tmp_path, annotation):
    result = write_jsonl(tmp_path / "a.jsonl", [
        answer("img2", "What color?", "blue"),            # 1.0, then replaced by repeat 1
        answer("img2", "What color?", "red", repeat=1),   # 0.6
    ])
    m = textvqa.evaluate(result, annotation)
    assert m["accuracy"] == pytest.approx(60.0) and m["n_scored"] == 1
    assert m["report"]["duplicate_ids"] == ["103"]


def test_real_question_ids_match_by_id(tmp_path, annotation):
    result = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 103, "text": "Red"}])
    m = textvqa.evaluate(result, annotation)
    assert m["accuracy"] == pytest.approx(60.0)        # 2 of 10 annotators said red
    assert m["n_matched_by_image_question"] == 0
    assert m["report"]["n_missing"] == 4
