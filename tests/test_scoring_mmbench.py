"""MMBench: option-letter extraction, circular evaluation in both layouts, incomplete runs, submission xlsx.

Expected values are hand-computed: a question scores only if every rotation names its right option (MMBench's
circular evaluation, VLMEvalKit ``eval_sub_data``); a rotation without an answer is an empty prediction cell in
LLaVA's upload (scripts/convert_mmbench_for_submission.py), so wrong; the upload drops hint, category, source,
image, comment and l2-category and puts ``prediction`` after ``D``.
"""

import csv

import pytest

from llava.eval.scoring import mmbench
from llava.eval.scoring.mmbench import extract_option_letter
from tests.helpers_io import write_jsonl

COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category"]


def write_tsv(path, rows, columns=COLUMNS):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return str(path)


def row(index, question, options, answer, category, image="aGVsbG8="):
    out = {"index": index, "question": question, "answer": answer, "category": category,
           "l2-category": "perception", "image": image, "source": "s", "hint": ""}
    out.update(zip("ABCD", options))
    return out


OPTS = {"A": "cat", "B": "dog", "C": "bird"}


@pytest.mark.parametrize("text, letter", [
    ("A", "A"),
    ("(B)", "B"),
    ("C. bird", "C"),
    ("The answer is B.", "B"),
    ("答案是C", "C"),
    ("A dog is sitting on the left.", "B"),  # "A" is an article; the option text decides
    ("dog", "B"),
    ("It is C, the bird", "C"),
    ("I'm not sure", None),
    ("D", None),                             # not one of the options
    ("A or B", None),                        # two letters: ambiguous
    ("A is the right one", "A"),
])
def test_extract_option_letter(text, letter):
    assert extract_option_letter(text, OPTS) == letter


@pytest.fixture
def legacy_tsv(tmp_path):
    """The benchmark's own circular layout: rotated copies at index + k * 1e6."""
    rows = [
        row(1, "Color?", ["red", "blue", "green"], "B", "attr"),
        row(1000001, "Color?", ["blue", "green", "red"], "A", "attr"),
        row(2000001, "Color?", ["green", "red", "blue"], "C", "attr"),
        row(2, "Count?", ["1", "2"], "A", "count"),
        row(1000002, "Count?", ["2", "1"], "B", "count"),
        row(3, "Shape?", ["circle", "square"], "B", "attr"),
        row(1000003, "Shape?", ["square", "circle"], "A", "attr"),
    ]
    return write_tsv(tmp_path / "mmbench_dev.tsv", rows)


def test_circular_question_needs_every_round(tmp_path, legacy_tsv):
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": 1, "text": "B"}, {"question_id": 1000001, "text": "A"}, {"question_id": 2000001, "text": "C"},
        {"question_id": 2, "text": "A"}, {"question_id": 1000002, "text": "A"},  # second round wrong
        {"question_id": 3, "text": "B"},                                           # round 1000003 missing: wrong
        {"question_id": 7, "text": "A"},                                           # not in the tsv
    ])
    m = mmbench.evaluate(answers, legacy_tsv)
    assert m["accuracy"] == pytest.approx(100 / 3)              # q1 right, q2 and q3 wrong
    assert m["single_round_accuracy"] == pytest.approx(100.0)   # rows 1, 2, 3 alone are all right
    assert m["category"] == {"attr": 50.0, "count": 0.0}
    assert (m["n_questions"], m["n_complete_questions"], m["partial"]) == (3, 2, True)
    r = m["report"]
    assert r["missing_ids"] == ["1000003/round0"] and r["unknown_ids"] == ["7"]
    assert (r["n_annotations"], r["n_matched"]) == (7, 6)


# Two questions, four options each. Round / tsv rotation r shows the options rotated left by r:
#   Q1 [cat, dog, bird, fish], answer B (dog):    r0 -> B, r1 [dog, bird, fish, cat] -> A,
#                                                 r2 [bird, fish, cat, dog] -> D, r3 [fish, cat, dog, bird] -> C
#   Q2 [red, green, blue, black], answer D:       r0 -> D, r1 [green, blue, black, red] -> C,
#                                                 r2 [blue, black, red, green] -> B, r3 [black, red, green, blue] -> A
Q1, Q2 = ["cat", "dog", "bird", "fish"], ["red", "green", "blue", "black"]
RIGHT = {1: "BADC", 2: "DCBA"}
# Q1 answered right in every round (in four styles); Q2 wrong in round 3 only.
TEXTS = {1: ["B", "dog", "D. dog", "The answer is C"], 2: ["D", "C", "(B)", "B"]}


def rotated(options, r):
    return options[r:] + options[:r]


def rows_layout(tmp_path):
    """The benchmark's own layout: rotation r of question q is tsv row q + r * 1e6."""
    rows = [row(q + r * 1_000_000, f"Q{q}?", rotated(opts, r), RIGHT[q][r], f"cat{q}")
            for q, opts in ((1, Q1), (2, Q2)) for r in range(4)]
    tsv = write_tsv(tmp_path / "dev.tsv", rows)
    return tsv, lambda q, r, text: {"question_id": q + r * 1_000_000, "text": text}


def rounds_layout(tmp_path):
    """LLaVA's --all-rounds: one row per question, answers carry round_id."""
    tsv = write_tsv(tmp_path / "dev.tsv", [row(1, "Q1?", Q1, "B", "cat1"), row(2, "Q2?", Q2, "D", "cat2")])
    return tsv, lambda q, r, text: {"question_id": q, "round_id": r, "text": text}


@pytest.mark.parametrize("layout", [rows_layout, rounds_layout])
def test_two_questions_four_rotations(tmp_path, layout):
    tsv, answer = layout(tmp_path)
    records = [answer(q, r, TEXTS[q][r]) for q in (1, 2) for r in range(4)]
    m = mmbench.evaluate(write_jsonl(tmp_path / "a.jsonl", records), tsv)
    assert m["accuracy"] == pytest.approx(50.0)                # Q1 right, Q2 fails round 3
    assert m["single_round_accuracy"] == pytest.approx(100.0)  # both right in round 0
    assert m["category"] == {"cat1": 100.0, "cat2": 0.0}
    assert m["partial"] is False and m["report"]["n_matched"] == m["report"]["n_annotations"] == 8

    # a missing rotation fails its question; the denominator stays 2
    partial = [rec for rec in records if rec != answer(1, 2, TEXTS[1][2])]
    m = mmbench.evaluate(write_jsonl(tmp_path / "b.jsonl", partial), tsv)
    assert m["accuracy"] == 0.0 and m["n_questions"] == 2 and m["n_complete_questions"] == 1
    missing = "1/round2" if layout is rounds_layout else "2000001/round0"
    assert m["partial"] is True and m["report"]["missing_ids"] == [missing]

    # a repeated rotation keeps its last answer; an unknown index is listed and ignored
    extra = records + [answer(2, 3, "A"), {"question_id": 99, "text": "A"}]
    m = mmbench.evaluate(write_jsonl(tmp_path / "c.jsonl", extra), tsv)
    assert m["accuracy"] == pytest.approx(100.0)
    duplicate = "2/round3" if layout is rounds_layout else "3000002/round0"
    assert m["report"]["duplicate_ids"] == [duplicate] and m["report"]["unknown_ids"] == ["99"]


def test_unparsable_answer_is_wrong(tmp_path):
    tsv = write_tsv(tmp_path / "dev.tsv", [row(1, "Q1?", Q1, "B", "c"), row(2, "Q2?", Q2, "D", "c")])
    answers = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "text": "B"},
                                                 {"question_id": 2, "text": "I cannot tell."}])
    assert mmbench.evaluate(answers, tsv)["accuracy"] == pytest.approx(50.0)


def test_llava_all_rounds_layout(tmp_path):
    tsv = write_tsv(tmp_path / "dev.tsv", [
        row(1, "Color?", ["red", "blue", "green"], "B", "attr"),
        row(2, "Count?", ["1", "2"], "A", "count"),
    ])
    # Round r shows the options rotated left by r under A, B, C:
    #   q1 r0 [red, blue, green] -> B;  r1 [blue, green, red] -> A;  r2 [green, red, blue] -> C
    #   q2 r0 [1, 2] -> A;  r1 [2, 1] -> B (the answer "A" picks "2": wrong)
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": 1, "round_id": 0, "text": "B"}, {"question_id": 1, "round_id": 1, "text": "A"},
        {"question_id": 1, "round_id": 2, "text": "C. blue"},
        {"question_id": 2, "round_id": 0, "text": "A"}, {"question_id": 2, "round_id": 1, "text": "A"},
    ])
    m = mmbench.evaluate(answers, tsv)
    assert m["layout"] == "round_id rotations"
    assert m["accuracy"] == pytest.approx(50.0)
    assert m["single_round_accuracy"] == pytest.approx(100.0)


def test_rounds_read_from_metadata(tmp_path):
    tsv = write_tsv(tmp_path / "dev.tsv", [row(2, "Count?", ["1", "2"], "A", "count")])
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": "2_r0", "text": "A", "metadata": {"index": 2, "round_id": 0}},
        {"question_id": "2_r1", "text": "B", "metadata": {"index": 2, "round_id": 1}},
    ])
    m = mmbench.evaluate(answers, tsv)
    assert m["accuracy"] == pytest.approx(100.0) and m["report"]["n_unknown"] == 0


def test_submission_xlsx(tmp_path, legacy_tsv):
    from openpyxl import load_workbook

    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": 1, "text": "C"}, {"question_id": 1, "text": "B"},   # the last line wins
        {"question_id": 2, "text": "A\x07"}])                               # control char is dropped
    upload = tmp_path / "upload" / "run.xlsx"
    m = mmbench.evaluate(answers, legacy_tsv, str(upload))
    assert m["submission"]["n_without_prediction"] == 5
    values = list(load_workbook(upload).active.values)
    assert values[0] == ("index", "question", "A", "B", "C", "D", "prediction", "answer")
    assert values[1] == (1, "Color?", "red", "blue", "green", None, "B", "B")
    assert values[2] == (1000001, "Color?", "blue", "green", "red", None, None, "A")
    assert values[4] == (2, "Count?", "1", "2", None, None, "A", "A")
    assert len(values) == 8


def test_submission_xlsx_takes_round_0_of_all_rounds_answers(tmp_path):
    from openpyxl import load_workbook

    tsv = write_tsv(tmp_path / "dev.tsv", [row(1, "Q1?", Q1, "B", "c")])
    answers = write_jsonl(tmp_path / "a.jsonl", [{"question_id": 1, "round_id": r, "text": RIGHT[1][r]}
                                                 for r in range(4)])
    mmbench.evaluate(answers, tsv, str(tmp_path / "up.xlsx"))
    values = list(load_workbook(tmp_path / "up.xlsx").active.values)
    assert dict(zip(values[0], values[1]))["prediction"] == "B"   # round 3's "C" names a rotated option


def test_test_split_is_not_scored_but_converted(tmp_path):
    columns = [c for c in COLUMNS if c != "answer"]
    tsv = write_tsv(tmp_path / "test.tsv", [row(5, "Q?", ["x", "y"], "", "attr")], columns=columns)
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": 5, "text": "A"}])
    m = mmbench.evaluate(answers, tsv, str(tmp_path / "test.xlsx"))
    assert "accuracy" not in m and m["submission"]["n_without_prediction"] == 0
