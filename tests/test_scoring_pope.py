"""POPE: LLaVA's yes/no rule, metrics incl. degenerate predictions, joining labels to questions."""

import json
import subprocess
import sys

import pytest

from llava.eval.scoring import pope
from llava.eval.scoring.pope import binary_metrics, parse_yes_no
from tests.helpers_io import write_jsonl

SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.mark.parametrize("text, expected", [
    ("Yes", "yes"),
    ("No", "no"),
    ("No, there is not.", "no"),
    ("There is no dog in the image.", "no"),
    ("Yes. No other dogs are visible.", "yes"),  # only the first sentence counts
    ("I'm not sure", "no"),
    ("NO", "yes"),    # the rule matches the words No/no/not exactly
    ("Nope", "yes"),
    ("", "yes"),      # anything without a negation is a yes
    ("no.", "no"),
    (" no", "no"),                          # split(" ") leaves an empty first word, "no" is still a word
    ("Not really", "yes"),                  # capital "Not" is not in the list
    ("cannot", "yes"),
    ("Yes, no doubt", "no"),                # commas are dropped, then "no" is a word
    ("No, there is a dog", "no"),           # "No," is "No" once the comma is dropped
    ("Yes. I'm not sure.", "yes"),
    ("There's no. Dog", "no"),
    ("No\nThere is a dog.", "yes"),         # words are split on spaces only: "No\nThere" is one word
    ("Yes\nno", "yes"),
    ("no\tdog", "yes"),
])
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) == expected


def test_five_metrics_on_a_hand_computed_confusion_matrix():
    # TP=3, FP=1, TN=4, FN=2 (n=10):
    # accuracy (3+4)/10 = 70%; precision 3/4 = 75%; recall 3/5 = 60%;
    # F1 = 2*.75*.6/(.75+.6) = .9/1.35 = 2/3; yes-ratio (3+1)/10 = 40%.
    preds = ["yes"] * 3 + ["yes"] + ["no"] * 4 + ["no"] * 2
    labels = ["yes"] * 3 + ["no"] + ["no"] * 4 + ["yes"] * 2
    m = binary_metrics(preds, labels)
    assert (m["TP"], m["FP"], m["TN"], m["FN"], m["n"]) == (3, 1, 4, 2, 10)
    assert m["accuracy"] == pytest.approx(70.0)
    assert m["precision"] == pytest.approx(75.0)
    assert m["recall"] == pytest.approx(60.0)
    assert m["f1"] == pytest.approx(200 / 3)
    assert m["yes_ratio"] == pytest.approx(40.0)
    ratios = pope.llava_ratios(m)
    assert ratios == {"accuracy": 0.7, "precision": 0.75, "recall": 0.6,
                      "f1": pytest.approx(2 / 3), "yes_ratio": 0.4}


def test_all_yes_predictions():
    # labels: 3 yes, 2 no; every prediction yes -> TP=3, FP=2, TN=FN=0.
    m = binary_metrics(["yes"] * 5, ["yes", "yes", "yes", "no", "no"])
    assert (m["TP"], m["FP"], m["TN"], m["FN"]) == (3, 2, 0, 0)
    assert m["accuracy"] == pytest.approx(60.0)
    assert m["precision"] == pytest.approx(60.0)   # 3 / 5
    assert m["recall"] == pytest.approx(100.0)     # 3 / 3
    assert m["f1"] == pytest.approx(75.0)          # 2 * .6 * 1 / 1.6
    assert m["yes_ratio"] == pytest.approx(100.0)
    assert m["undefined"] == []


def test_all_no_predictions_make_precision_undefined():
    # labels yes, no, no, yes; every prediction no -> TP=FP=0, TN=2, FN=2.
    m = binary_metrics(["no"] * 4, ["yes", "no", "no", "yes"])
    assert m["accuracy"] == pytest.approx(50.0)
    assert m["precision"] == 0.0 and m["recall"] == 0.0 and m["f1"] == 0.0
    assert m["yes_ratio"] == 0.0
    assert any(u.startswith("precision") for u in m["undefined"])


def test_no_positive_labels_make_recall_undefined():
    m = binary_metrics(["yes", "no"], ["no", "no"])
    assert any(u.startswith("recall") for u in m["undefined"])
    assert m["precision"] == 0.0  # 0 / 1: defined, just zero


LABELS = {
    "adversarial": [
        {"question_id": 1, "image": "A.jpg", "text": "Is there a dog in the image?", "label": "yes"},
        {"question_id": 2, "image": "A.jpg", "text": "Is there a cat in the image?", "label": "no"},
        {"question_id": 3, "image": "B.jpg", "text": "Is there a car in the image?", "label": "yes"},
    ],
    "random": [
        {"question_id": 1, "image": "C.jpg", "text": "Is there a bus in the image?", "label": "no"},
        {"question_id": 2, "image": "C.jpg", "text": "Is there a person in the image?", "label": "yes"},
    ],
}
# LLaVA's question file: global ids, and here a different order from the label files.
QUESTIONS = [
    {"question_id": 1, "image": "B.jpg", "text": "Is there a car in the image?" + SUFFIX, "category": "adversarial"},
    {"question_id": 2, "image": "A.jpg", "text": "Is there a dog in the image?" + SUFFIX, "category": "adversarial"},
    {"question_id": 3, "image": "A.jpg", "text": "Is there a cat in the image?" + SUFFIX, "category": "adversarial"},
    {"question_id": 4, "image": "C.jpg", "text": "Is there a person in the image?" + SUFFIX, "category": "random"},
    {"question_id": 5, "image": "C.jpg", "text": "Is there a bus in the image?" + SUFFIX, "category": "random"},
]
ANSWERS = [
    {"question_id": 1, "text": "Yes"},                   # car, yes  -> TP
    {"question_id": 2, "text": "No, there is no dog."},  # dog, yes  -> FN
    {"question_id": 3, "text": "Yes"},                   # cat, no   -> FP
    {"question_id": 4, "text": "Yes"},                   # person, yes -> TP
    {"question_id": 5, "text": "Yes"},                   # bus, no   -> FP
    {"question_id": 99, "text": "Yes"},                  # not a POPE question
]


def write_pope_inputs(tmp_path) -> tuple[str, str]:
    """The hand-made case on disk: (annotation dir with one coco_pope_<category>.json per category, question file)."""
    ann = tmp_path / "coco"
    ann.mkdir()
    for category, records in LABELS.items():
        write_jsonl(ann / f"coco_pope_{category}.json", records)
    return str(ann), write_jsonl(tmp_path / "llava_pope_test.jsonl", QUESTIONS)


@pytest.fixture
def pope_files(tmp_path):
    ann, questions = write_pope_inputs(tmp_path)
    (tmp_path / "coco" / "README.txt").write_text("ignored")
    answers = write_jsonl(tmp_path / "answers.jsonl", ANSWERS)
    return ann, questions, answers


def test_pope_joins_labels_by_image_and_question(pope_files):
    ann, questions, answers = pope_files
    metrics = pope.evaluate(answers, ann, questions)
    adv = metrics["adversarial"]
    # TP=1 FN=1 FP=1 TN=0
    assert (adv["TP"], adv["FN"], adv["FP"], adv["TN"]) == (1, 1, 1, 0)
    assert adv["accuracy"] == pytest.approx(100 / 3)
    assert adv["precision"] == pytest.approx(50.0) and adv["recall"] == pytest.approx(50.0)
    assert adv["f1"] == pytest.approx(50.0)
    assert adv["yes_ratio"] == pytest.approx(200 / 3)
    rnd = metrics["random"]
    assert rnd["accuracy"] == pytest.approx(50.0) and rnd["f1"] == pytest.approx(200 / 3)
    assert metrics["average"]["f1"] == pytest.approx((50.0 + 200 / 3) / 2)
    assert metrics["report"]["unknown_ids"] == ["99"]
    assert metrics["report"]["n_missing"] == 0
    assert "warnings" not in metrics


def test_pope_falls_back_to_position_without_keys(tmp_path, pope_files):
    ann, _, answers = pope_files
    bare = [{k: v for k, v in q.items() if k != "image"} for q in QUESTIONS]
    questions = write_jsonl(tmp_path / "bare.jsonl", bare)
    metrics = pope.evaluate(answers, ann, questions)
    # By position qid1<->dog(yes) "Yes" TP, qid2<->cat(no) "No.." TN, qid3<->car(yes) "Yes" TP.
    assert metrics["adversarial"]["accuracy"] == pytest.approx(100.0)
    assert any("by position" in w for w in metrics["warnings"])


def test_pope_reports_missing_answers(tmp_path, pope_files):
    ann, questions, _ = pope_files
    answers = write_jsonl(tmp_path / "partial.jsonl", [ANSWERS[0], ANSWERS[2]])
    metrics = pope.evaluate(answers, ann, questions)
    assert metrics["report"]["n_missing"] == 3 and metrics["report"]["missing_ids"] == ["2", "4", "5"]
    assert metrics["partial"] is True and metrics["report"]["coverage"] == pytest.approx(40.0)
    # Only the answers present are scored, each against its own label (LLaVA would have zipped
    # "Yes","Yes" with the first two label lines dog=yes, cat=no): car yes -> TP, cat yes -> FP.
    adv = metrics["adversarial"]
    assert (adv["n"], adv["TP"], adv["FP"], adv["TN"], adv["FN"]) == (2, 1, 1, 0, 0)
    assert "random" not in metrics


def test_pope_duplicate_answer_keeps_the_last(tmp_path, pope_files):
    ann, questions, _ = pope_files
    answers = write_jsonl(tmp_path / "dup.jsonl", ANSWERS[:5] + [{"question_id": 3, "text": "No"}])
    metrics = pope.evaluate(answers, ann, questions)
    adv = metrics["adversarial"]
    # cat (label no) now answered "No": TN instead of FP; counted once.
    assert (adv["n"], adv["TP"], adv["FP"], adv["TN"], adv["FN"]) == (3, 1, 0, 1, 1)
    assert metrics["report"]["duplicate_ids"] == ["3"] and metrics["partial"] is False


def test_pope_cli_writes_json(tmp_path, pope_files):
    ann, questions, answers = pope_files
    out = tmp_path / "out" / "pope.json"
    proc = subprocess.run(
        [sys.executable, "-m", "llava.eval.scoring.pope", "--annotation-dir", ann, "--question-file", questions,
         "--result-file", answers, "--output-json", str(out)],
        capture_output=True, text=True, check=True)
    assert "adversarial:" in proc.stdout
    assert "coverage: 5/5 (100.0%)" in proc.stdout.splitlines()
    assert "WARNING: 1 result ids not in the annotations (ignored): 99" in proc.stdout.splitlines()
    assert json.loads(out.read_text())["random"]["TP"] == 1


def test_pope_cli_exit_status_when_nothing_matches(tmp_path, pope_files):
    ann, questions, _ = pope_files
    answers = write_jsonl(tmp_path / "none.jsonl", [{"question_id": 99, "text": "Yes"}])
    proc = subprocess.run(
        [sys.executable, "-m", "llava.eval.scoring.pope", "--annotation-dir", ann, "--question-file", questions,
         "--result-file", answers], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "coverage: 0/5 (0.0%)" in proc.stdout.splitlines()
    assert "ERROR: nothing was scored" in proc.stderr


def test_pope_empty_annotation_dir(tmp_path, pope_files):
    _, questions, answers = pope_files
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="coco_pope_"):
        pope.evaluate(answers, str(tmp_path / "empty"), questions)
