"""MMBench: option-letter extraction, circular evaluation in both layouts, submission xlsx."""

import csv
import json

import pytest

from llava.eval.scoring import mmbench
from llava.eval.scoring.mmbench import extract_option_letter

COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source", "l2-category"]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


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
        {"question_id": 3, "text": "B"},                                           # round 1000003 missing
        {"question_id": 7, "text": "A"},                                           # not in the tsv
    ])
    m = mmbench.evaluate(answers, legacy_tsv)
    assert m["accuracy"] == pytest.approx(50.0)                 # q1 right, q2 wrong, q3 not scored
    assert m["single_round_accuracy"] == pytest.approx(100.0)   # rows 1, 2, 3 alone are all right
    assert m["category"] == {"attr": 100.0, "count": 0.0}
    assert m["report"]["missing_ids"] == ["1000003/round0"]
    assert m["report"]["unknown_ids"] == ["7"]


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
        {"question_id": 1, "text": "B"}, {"question_id": 2, "text": "A\x07"}])  # control char is dropped
    upload = tmp_path / "upload" / "run.xlsx"
    m = mmbench.evaluate(answers, legacy_tsv, str(upload))
    assert m["submission"]["n_without_prediction"] == 5
    sheet = load_workbook(upload).active
    values = list(sheet.values)
    header = list(values[0])
    assert "image" not in header
    assert header.index("prediction") == header.index("D") + 1
    assert {"category", "l2-category", "answer", "index"} <= set(header)
    first = dict(zip(header, values[1]))
    assert first["index"] == 1 and first["prediction"] == "B" and first["hint"] is None
    assert dict(zip(header, values[4]))["prediction"] == "A"


def test_test_split_is_not_scored_but_converted(tmp_path):
    columns = [c for c in COLUMNS if c != "answer"]
    tsv = write_tsv(tmp_path / "test.tsv", [row(5, "Q?", ["x", "y"], "", "attr")], columns=columns)
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"question_id": 5, "text": "A"}])
    m = mmbench.evaluate(answers, tsv, str(tmp_path / "test.xlsx"))
    assert "accuracy" not in m and m["submission"]["n_without_prediction"] == 0
