"""ScienceQA scorer against hand-worked cases of LLaVA's eval_science_qa.py rules (haotian-liu/LLaVA main).

Each expected value below is worked out by hand from the rules of the LLaVA script (quoted in the
scorer's docstring), not taken from the scorer's output.
"""

import json
import subprocess
import sys

import pytest

from llava.eval.scoring import sqa
from llava.eval.scoring.sqa import FAILED, extract_letter, letter_index
from tests.helpers_io import write_jsonl


@pytest.mark.parametrize("text, letter", [
    # rule 1: the whole text is an option letter
    ("A", "A"),
    ("E", "E"),
    # rule 2: letter, then ". ", text at least 3 long
    ("B. The cat is hungry", "B"),
    ("C. ", "C"),
    # rule 3: exactly one "The answer is <capital><any char>"
    ("The answer is C.", "C"),
    ("Because of heat. The answer is D, since it melts", "D"),
    ("The answer is F.", "F"),                     # parsed; out of the options later
    ("The answer is AB", "A"),                     # the unescaped '.' takes the 'B'
])
def test_each_official_branch(text, letter):
    assert extract_letter(text) == letter


@pytest.mark.parametrize("text", [
    "A.",                  # 2 characters: neither a bare letter nor "X. "
    "A)",
    "(A)",
    " A",                  # no stripping
    "A ",
    "a",                   # lower case
    "A\n",
    "A.\nBecause",         # ".\n" is not ". " (newlines are not rewritten)
    "B.The cat",
    "F. Foo",              # rule 2 only takes A-E
    "The answer is B",     # nothing after the letter
    "The answer is B\n",   # '.' does not match a newline
    "The answer is A. The answer is A.",   # two matches, even agreeing ones
    "the answer is A.",
    "The answer is (A).",
    "Answer: A",
    "",
    "FAILED",
])
def test_near_misses_fail(text):
    assert extract_letter(text) == FAILED


@pytest.mark.parametrize("letter, n_choices, index", [
    ("A", 2, 0), ("C", 3, 2), ("D", 3, -1), ("E", 4, -1), ("E", 5, 4), ("F", 5, -1), (FAILED, 5, -1),
])
def test_letter_index_within_the_choices(letter, n_choices, index):
    assert letter_index(letter, n_choices) == index


def test_parsed_letter_is_checked_against_the_choices():
    assert letter_index(extract_letter("The answer is D."), 3) == -1
    assert letter_index(extract_letter("B. yes"), 2) == 1


PROBLEMS = {
    # pid: groups
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


def test_missing_answer_counts_as_wrong(tmp_path, sqa_dir):
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "p1", "prompt": "<image>\nQ", "text": "A"},                 # right
        {"question_id": "p2", "prompt": "Q", "text": "The answer is B."},          # right
        {"question_id": "p3", "prompt": "Q", "text": "D"},                         # wrong (C)
        {"question_id": "p5", "prompt": "Q", "text": "A"},                         # not in test: unknown
    ])                                                                              # p4 missing: wrong
    m = sqa.evaluate(answers, sqa_dir)
    assert m["accuracy"] == pytest.approx(50.0)        # 2 of p1..p4
    assert m["correct"] == 2
    assert m["img_accuracy"] == pytest.approx(50.0)    # p1 right, p4 missing
    assert m["subject"] == {"NAT": 50.0, "SOC": 100.0, "LAN": 0.0}
    assert m["context"] == {"TXT": 50.0, "IMG": 50.0, "NO": 0.0}
    assert m["grade"] == {"G1-6": 50.0, "G7-12": 50.0}
    assert m["partial"] is True
    report = m["report"]
    assert (report["n_expected"], report["n_answered"], report["coverage"]) == (4, 3, 75.0)
    assert report["missing_ids"] == ["p4"] and report["unknown_ids"] == ["p5"]


def test_duplicates_last_wins_and_unparsed_and_out_of_range(tmp_path, sqa_dir):
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "p1", "text": "B"},
        {"question_id": "p1", "text": "A"},        # replaces "B": right
        {"question_id": "p2", "text": "C"},        # 2 choices: wrong, but parsed
        {"question_id": "p3", "text": "C."},       # unparsed: wrong
        {"question_id": "p4", "text": "A. x"},     # right
    ])
    m = sqa.evaluate(answers, sqa_dir)
    assert m["accuracy"] == pytest.approx(50.0)
    assert m["n_unparsed"] == 1
    assert m["partial"] is False and m["report"]["coverage"] == 100.0
    assert m["report"]["duplicate_ids"] == ["p1"]


def test_int_ids_match_string_pids(tmp_path):
    (tmp_path / "problems.json").write_text(json.dumps({"7": PROBLEMS["p1"], "8": PROBLEMS["p2"]}))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["7", "8"]}))
    answers = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 7, "text": "A"}, {"question_id": 8, "text": "A"}])
    m = sqa.evaluate(answers, str(tmp_path))
    assert m["accuracy"] == pytest.approx(50.0) and m["report"]["n_answered"] == 2


def test_img_only_split(tmp_path, sqa_dir):
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "p1", "text": "B"}, {"question_id": "p4", "text": "A"}])
    m = sqa.evaluate(answers, sqa_dir, img_only=True)
    assert m["accuracy"] == pytest.approx(50.0) and m["img_accuracy"] == pytest.approx(50.0)
    assert m["report"]["n_expected"] == 2


def test_unknown_split_is_named(tmp_path, sqa_dir):
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": "p1", "text": "A"}])
    with pytest.raises(ValueError, match="minival"):
        sqa.evaluate(answers, sqa_dir, split="minival")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "llava.eval.scoring.sqa", *args],
                          capture_output=True, text=True, timeout=60)


def test_cli_prints_coverage_and_warns(tmp_path, sqa_dir):
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "p1", "text": "A"}, {"question_id": "p2", "text": "B"}, {"question_id": "p3", "text": "C"}])
    proc = run_cli("--base-dir", sqa_dir, "--result-file", answers)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "accuracy: 75.00" in lines                  # 3 right of 4, p4 missing
    assert "coverage: 3/4 (75.0%)" in lines
    assert "WARNING: incomplete answers: 3 of 4 questions answered (75.0% coverage)" in lines
    assert "WARNING: 1 annotated questions without a result: p4" in lines


def test_cli_exits_non_zero_when_nothing_matches(tmp_path, sqa_dir):
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": "zzz", "text": "A"}])
    proc = run_cli("--base-dir", sqa_dir, "--result-file", answers)
    assert proc.returncode == 1
    assert "coverage: 0/4 (0.0%)" in proc.stdout
    assert "ERROR: nothing was scored" in proc.stderr
