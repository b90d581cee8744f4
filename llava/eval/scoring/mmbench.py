"""MMBench / MMBench-CN: local circular-evaluation accuracy (dev) and the submission xlsx.

Inputs
  annotation file  the benchmark tsv (``mmbench_dev_20230712.tsv``, ``mmbench_dev_cn_20231003.tsv``,
                   test splits): columns ``index``, ``question``, ``hint``, ``A``-``D``,
                   ``answer`` (dev only), ``category``, ``l2-category``, ``image`` (base64), ...
  result file      answers jsonl; ``question_id`` (or ``metadata.index``) is the row's
                   ``index``, ``round_id`` (or ``metadata.round_id``) the rotation, 0 when absent

Circular evaluation. A question is asked once per rotation of its options and
counts as right only if every rotation is answered right. Two layouts are read:

* the benchmark's own: rotations are extra tsv rows whose ``index`` is the
  original's plus a multiple of 1,000,000 (rows are grouped by index mod 1e6);
* LLaVA's ``--all-rounds``: one row, answers with ``round_id`` r = 0..n-1 where
  round r showed the options rotated left by r under the letters A, B, ...
  (the letter shown at position i is original option (i + r) mod n).

``accuracy`` is the circular accuracy over every question of the tsv (groups of rows with
equal index mod 1e6); ``single_round_accuracy`` scores each question's original row, round 0,
alone (the non-circular number). Incomplete runs: LLaVA's ``scripts/convert_mmbench_for_submission.py``
(haotian-liu/LLaVA) writes every tsv row and leaves ``prediction`` empty where there is no answer,
and the evaluation (OpenCompass server; VLMEvalKit's ``mcq_circular_eval`` and ``eval_sub_data``
locally) fails a question as soon as one of its rotations does not give the right letter, which an
empty prediction cannot. So a rotation without an answer is wrong, its question counts as wrong,
and ``partial`` is true; the report counts rotations (answered / expected). A repeated
(index, round) keeps its last answer, as the converter's row assignment does; answers to indexes
outside the tsv are listed as unknown.

Letter extraction (:func:`extract_option_letter`) is a local stand-in for the
official matcher (which falls back to an LLM): a bare letter, a leading
"B." / "(B)", "the answer is B" / "答案是B", exactly one standalone option
letter, or exactly one option text contained in the answer.

The submission xlsx is the converter's: the tsv's rows and columns without ``hint``,
``category``, ``source``, ``image``, ``comment`` and ``l2-category``, and a ``prediction``
column after the last option column (``D``); each row gets the answer to its own index, round 0
(the original, fed ``--all-rounds`` answers, would keep the last round's letter, which names a
rotated option). Writing it needs ``openpyxl``.
"""

from __future__ import annotations

import csv
import re
import sys

from ...atomic import atomic_path
from .common import MatchReport, load_answers, percent, qid_key, require_file
from .report import base_parser, emit, exit_code

LETTERS = "ABCD"
CIRCULAR_OFFSET = 1_000_000
# Columns LLaVA's convert_mmbench_for_submission drops from the tsv before adding ``prediction``.
DROPPED_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")

_BARE = re.compile(r"^\(?([A-Z])\)?[.:)：。]?$")
_LEADING = re.compile(r"^\(?([A-Z])[.:)：、]\s*\S")
_ANSWER_IS = re.compile(r"(?:(?i:answer\s+is|answer\s*:)|答案是|答案为|答案[:：])\s*\(?([A-Z])(?![A-Za-z])")
_STANDALONE = re.compile(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])")
# "A dog ..." (article) but not "A or B", "A and C", "A is right".
_ARTICLE_AFTER = re.compile(r"\s+(?!(?:or|and|is)\b)[a-z]")


def is_blank(value) -> bool:
    """Empty cells as LLaVA's MMBench loader sees them ('', nan, none)."""
    return value is None or str(value).strip() == "" or str(value).strip().lower() in ("nan", "none")


def row_options(row: dict) -> list[str]:
    """Option texts in letter order, up to the first blank one."""
    options = []
    for letter in LETTERS:
        if is_blank(row.get(letter)):
            break
        options.append(str(row[letter]))
    return options


def extract_option_letter(text: str, options: dict[str, str]) -> str | None:
    """The option letter an answer picks among ``options`` (letter -> text), or None."""
    answer = text.strip()
    if not answer:
        return None
    for pattern in (_BARE, _LEADING, _ANSWER_IS):
        match = pattern.search(answer)
        if match and match.group(1) in options:
            return match.group(1)
    letters = set()
    for match in _STANDALONE.finditer(answer):
        letter = match.group(1)
        # "A dog is ..." uses A as an article, not an option.
        if letter == "A" and _ARTICLE_AFTER.match(answer, match.end()):
            continue
        if letter in options:
            letters.add(letter)
    if len(letters) == 1:
        return letters.pop()
    lowered = answer.lower().strip(" .。")
    exact = [k for k, v in options.items() if v.strip().lower().strip(" .。") == lowered]
    if len(exact) == 1:
        return exact[0]
    contained = [k for k, v in options.items() if v.strip() and v.strip().lower() in lowered]
    return contained[0] if len(contained) == 1 else None


def read_tsv(path: str) -> list[dict]:
    require_file(path, "MMBench tsv")
    csv.field_size_limit(2**31 - 1)  # base64 images exceed the default field limit
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        rows = list(reader)
        header = reader.fieldnames or []
    for needed in ("index", "question", "A", "B"):
        if needed not in header:
            raise ValueError(f"{path}: no {needed!r} column (has {header})")
    first_line: dict[int, int] = {}
    for line_no, row in enumerate(rows, start=2):
        try:
            row["index"] = int(float(row["index"]))
        except (TypeError, ValueError):
            raise ValueError(f"{path}:{line_no}: index {row['index']!r} is not an integer") from None
        # The index is MMBench's question key: the converter writes one prediction per index and the server
        # joins by it, so two rows with one index cannot be scored apart. Refuse rather than merge them.
        if row["index"] in first_line:
            raise ValueError(f"{path}:{line_no}: index {row['index']} repeats line {first_line[row['index']]}; "
                             "MMBench questions are keyed by index, so each row needs its own")
        first_line[row["index"]] = line_no
    return rows


def tsv_header(path: str) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f, delimiter="\t"))


def _field(answer: dict, name: str):
    """A field at the top level of the answer record or in its ``metadata``."""
    if name in answer:
        return answer[name]
    metadata = answer.get("metadata")
    return metadata.get(name) if isinstance(metadata, dict) else None


def _answer_index(answer: dict) -> int | None:
    """The tsv row an answer belongs to: ``metadata.index`` if set, else ``question_id``."""
    value = _field(answer, "index") if _field(answer, "index") is not None else answer["question_id"]
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _round_id(answer: dict) -> int:
    return int(_field(answer, "round_id") or 0)


def round_correct(row: dict, round_id: int, text: str) -> bool:
    """Whether ``text``, answering ``row`` with options rotated by ``round_id``, is right."""
    options = row_options(row)
    n = len(options)
    shown = options[round_id % n:] + options[:round_id % n]
    letter = extract_option_letter(text, dict(zip(LETTERS, shown)))
    if letter is None:
        return False
    original = LETTERS[(LETTERS.index(letter) + round_id) % n]
    return original == str(row["answer"]).strip()


def score_mmbench(rows: list[dict], answers: list[dict]) -> dict:
    if any(is_blank(row.get("answer")) for row in rows):
        raise ValueError("this MMBench tsv has rows without an 'answer' (a test split?); "
                         "only the submission xlsx can be made")
    rows_by_index = {row["index"]: row for row in rows}
    all_rounds = any(_round_id(answer) > 0 for answer in answers)

    report = MatchReport(n_results=len(answers))
    by_unit: dict[tuple[int, int], str] = {}
    for answer in answers:
        index = _answer_index(answer)
        if index not in rows_by_index:
            report.unknown_ids.append(qid_key(answer["question_id"]))
            continue
        unit = (index, _round_id(answer))
        if unit in by_unit:
            report.duplicate_ids.append(f"{unit[0]}/round{unit[1]}")
        by_unit[unit] = answer["text"]

    groups: dict[int, list[tuple[int, int]]] = {}  # index mod 1e6 -> its (row index, round) units
    for row in rows:
        rounds = range(len(row_options(row))) if all_rounds else (0,)
        groups.setdefault(row["index"] % CIRCULAR_OFFSET, []).extend((row["index"], r) for r in rounds)
    units = [unit for group in groups.values() for unit in group]
    report.n_annotations = len(units)
    report.missing_ids = [f"{i}/round{r}" for i, r in units if (i, r) not in by_unit]
    report.n_matched = len(units) - len(report.missing_ids)

    tallies: dict[str, list[int]] = {}  # group -> [right questions, questions]

    def add(group: str, correct: bool) -> None:
        tally = tallies.setdefault(group, [0, 0])
        tally[0] += correct
        tally[1] += 1

    def unit_correct(unit: tuple[int, int]) -> bool:
        # A rotation without an answer is wrong: the server reads its empty prediction cell.
        return unit in by_unit and round_correct(rows_by_index[unit[0]], unit[1], by_unit[unit])

    complete = 0
    for base, group in groups.items():
        head = rows_by_index.get(base, rows_by_index[group[0][0]])
        complete += all(unit in by_unit for unit in group)
        add("single", unit_correct((head["index"], 0)))
        correct = all(unit_correct(unit) for unit in group)
        add("all", correct)
        add(f"category/{head.get('category', '')}", correct)
        add(f"l2/{head.get('l2-category', '')}", correct)

    def by_prefix(prefix: str) -> dict:
        return {g[len(prefix):]: percent(*tallies[g]) for g in sorted(tallies) if g.startswith(prefix)}

    return {
        "accuracy": percent(*tallies.get("all", (0, 0))),
        "single_round_accuracy": percent(*tallies.get("single", (0, 0))),
        "n_questions": len(groups),
        "n_complete_questions": complete,
        "layout": "round_id rotations" if all_rounds else "tsv rows (index mod 1e6)",
        "category": by_prefix("category/"),
        "l2_category": by_prefix("l2/"),
        "partial": report.partial,
        "report": report.to_dict(),
    }


def submission_columns(header: list[str]) -> list[str]:
    """The converter's columns: ``header`` without :data:`DROPPED_COLUMNS`, ``prediction`` after the options."""
    kept = [column for column in header if column not in DROPPED_COLUMNS]
    last_option = max(kept.index(letter) for letter in LETTERS if letter in kept)
    return kept[:last_option + 1] + ["prediction"] + kept[last_option + 1:]


def write_submission_xlsx(annotation_file: str, rows: list[dict], answers: list[dict], path: str) -> dict:
    """The upload file (see the module docstring). Returns counts.

    Cells hold the tsv's text (the index as an integer); an empty tsv cell or a missing prediction is an
    empty cell. The original goes through pandas, which also turns all-number option columns into numbers.
    """
    try:  # openpyxl is the optional `eval` extra: only the MMBench upload file needs it
        from openpyxl import Workbook
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    except ImportError as err:
        raise ImportError("writing the MMBench xlsx needs openpyxl: pip install openpyxl") from err
    predictions: dict[int, str] = {}
    for answer in answers:
        if _round_id(answer) == 0 and _answer_index(answer) is not None:
            predictions[_answer_index(answer)] = answer["text"]
    columns = submission_columns(tsv_header(annotation_file))

    def cell(value):
        if value is None or value == "":
            return None
        return ILLEGAL_CHARACTERS_RE.sub("", value) if isinstance(value, str) else value

    book = Workbook()
    sheet = book.active
    sheet.title = "Sheet1"  # pandas' to_excel default, as in the converter's file
    sheet.append(columns)
    for row in rows:
        values = dict(row, prediction=predictions.get(row["index"]))
        sheet.append([cell(values.get(column)) for column in columns])
    with atomic_path(path) as tmp:  # a failed save keeps the previous upload
        book.save(tmp)
    missing = [row["index"] for row in rows if row["index"] not in predictions]
    return {"path": path, "n_rows": len(rows), "n_without_prediction": len(missing),
            "without_prediction": [str(i) for i in missing[:10]]}


def evaluate(result_file: str, annotation_file: str, upload_file: str | None = None) -> dict:
    rows = read_tsv(annotation_file)
    answers = load_answers(result_file)
    has_answers = bool(rows) and not any(is_blank(row.get("answer")) for row in rows)
    metrics = score_mmbench(rows, answers) if has_answers else {"note": "no answers in the tsv: not scored"}
    if upload_file:
        metrics["submission"] = write_submission_xlsx(annotation_file, rows, answers, upload_file)
    return metrics


def main(argv=None) -> dict:
    parser = base_parser("MMBench circular accuracy (dev) and submission xlsx.")
    parser.add_argument("--annotation-file", required=True, help="the MMBench tsv")
    parser.add_argument("--upload-file", default=None, help="write the submission xlsx here")
    args = parser.parse_args(argv)
    metrics = evaluate(args.result_file, args.annotation_file, args.upload_file)
    emit(metrics, args.output_json)
    return metrics


if __name__ == "__main__":
    sys.exit(exit_code(main(sys.argv[1:])))
