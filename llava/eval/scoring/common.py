"""File reading, result/annotation matching and CLI plumbing shared by the scorers.

Every scorer reads an answers file written by the eval runner: jsonl, one object
per question with at least ``question_id`` and ``text`` (the model's answer).
Matching rules that hold for all benchmarks:

* a malformed jsonl line raises ``ValueError`` naming the file and line number;
* a missing input file raises ``FileNotFoundError`` naming the role and path;
* result ids that are not in the annotations, and annotated questions that have
  no result, are counted and listed (first few) in a :class:`MatchReport` rather
  than silently dropped. Metrics are computed over the matched questions only,
  so an incomplete answers file gives a visibly incomplete report, not a
  silently lower (or higher) score.

Coverage. Every report also carries ``n_expected`` (questions the benchmark
asks: the annotations), ``n_answered`` (those that have an answer) and
``coverage`` = 100 * n_answered / n_expected, a percentage (None when nothing
is expected). :func:`emit` prints ``coverage: 950/1000 (95.0%)`` for every
report in the metrics and a ``WARNING:`` line when it is below 100%, whether the
scorer counts the unanswered questions as wrong (ScienceQA, GQA) or leaves them
out as its official script does (TextVQA, POPE; those set ``partial``).

Exit status. A scorer's ``main(argv)`` returns its metrics (the eval runner
calls it in-process); its ``__main__`` block ends with
``sys.exit(exit_code(main(sys.argv[1:])))``: :func:`exit_code` is 1 (and says
why on stderr) when nothing at all was scored -- no report has both an
expected and an answered question -- and 0 otherwise.

Aggregate metrics are percentages (0-100), as LLaVA's scripts print them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from ..answers import item_key, record_key, repeat_numbers
from ...atomic import atomic_write

# How many ids a report lists before it only counts.
MAX_LISTED_IDS = 10


def require_file(path: str | os.PathLike, role: str) -> str:
    """Return ``path`` as str, or raise FileNotFoundError naming what it was for."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{role} not found: {path}")
    return path


def require_dir(path: str | os.PathLike, role: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{role} directory not found: {path}")
    return path


def iter_jsonl(path: str | os.PathLike, role: str = "jsonl file") -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of each non-blank line; a line that is not a JSON object names file and line."""
    path = require_file(os.path.expanduser(os.fspath(path)), role)
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: malformed JSON line ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            yield line_no, record


def read_jsonl(path: str | os.PathLike, role: str = "jsonl file", required: Sequence[str] = ()) -> list[dict]:
    """Read a jsonl file; blank lines are skipped, anything else must be a JSON object holding `required` fields."""
    records = []
    for line_no, record in iter_jsonl(path, role):
        missing = [name for name in required if name not in record]
        if missing:
            raise ValueError(f"{os.fspath(path)}:{line_no}: record lacks field(s) {missing}")
        records.append(record)
    return records


def read_json(path: str | os.PathLike, role: str = "json file") -> Any:
    path = require_file(path, role)
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg})") from None


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON atomically (:func:`llava.atomic.atomic_write`): a failure keeps the previous file."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
        f.write("\n")


def qid_key(question_id: Any) -> str:
    """Question ids are compared as strings: json object keys are always strings,
    while answer files may hold the same id as an int."""
    return str(question_id)


def require_fields(record: dict, fields: Sequence[str], where: str) -> None:
    missing = [name for name in fields if name not in record]
    if missing:
        raise ValueError(f"{where}: record lacks field(s) {missing}: {json.dumps(record)[:200]}")


def load_answers(path: str | os.PathLike) -> list[dict]:
    """Answers jsonl; every record needs ``question_id`` (a string or an integer) and ``text`` (a string).

    A bad record is a ValueError naming the file and line (a ``null`` or numeric text would otherwise be scored
    as the string "None" / "3", or fail deep inside a scorer).
    """
    answers = []
    for line_no, record in iter_jsonl(path, role="result file"):
        where = f"{os.fspath(path)}:{line_no}"
        require_fields(record, ("question_id", "text"), where)
        qid, text = record["question_id"], record["text"]
        if isinstance(qid, bool) or not isinstance(qid, (str, int)):
            raise ValueError(f"{where}: question_id must be a string or an integer, got {json.dumps(qid)}")
        if not isinstance(text, str):
            raise ValueError(f"{where}: answer text must be a string, got {json.dumps(text)} "
                             f"(question_id {json.dumps(qid)})")
        answers.append(record)
    return answers


def numbered_keys(question_ids: Iterable[Any]) -> list[str]:
    """Answer keys of the questions of a question file, in order: the 2nd, 3rd, ... question with one id gets
    ``<id>#1``, ``<id>#2``, ..., as the eval runner numbers them in ``metadata.repeat``
    (:func:`llava.eval.model_vqa_loader.number_repeats`, :func:`llava.eval.answers.record_key`)."""
    bases = [qid_key(qid) for qid in question_ids]
    return [item_key(base, None, n) for base, n in zip(bases, repeat_numbers(bases))]


def base_id(key: str) -> str:
    """The question id of an answer key (``"17#2"`` -> ``"17"``)."""
    return key.split("#", 1)[0]


def expand_repeats(annotated_ids: Iterable[Any], results: dict[str, dict]) -> list[str]:
    """Expected answer keys when the annotations hold each question once but the question file the model was
    asked may have repeated it (GQA's questions dict, VQAv2's annotations, ScienceQA's problems): every
    annotated id, then ``<id>#1`` .. ``<id>#k`` up to the highest repeat answered, each scored against the
    id's annotation. A repeat below the highest that has no answer is therefore missing, not ignored."""
    highest: dict[str, int] = {}
    for key in results:
        base, _, repeat = key.partition("#")
        if repeat.isdigit():
            highest[base] = max(highest.get(base, 0), int(repeat))
    keys = []
    for qid in annotated_ids:
        base = qid_key(qid)
        keys.extend(item_key(base, None, n) for n in range(highest.get(base, 0) + 1))
    return keys


@dataclass
class MatchReport:
    """Which results found their annotation and which did not."""

    n_results: int = 0
    n_annotations: int = 0
    n_matched: int = 0
    unknown_ids: list = field(default_factory=list)  # in results, not in annotations
    missing_ids: list = field(default_factory=list)  # annotated, no result
    duplicate_ids: list = field(default_factory=list)  # more than one result (last one kept)

    @property
    def partial(self) -> bool:
        """Fewer questions answered than expected."""
        return self.n_matched < self.n_annotations

    @property
    def coverage(self) -> float | None:
        """Answered / expected in percent; None when nothing is expected."""
        return 100.0 * self.n_matched / self.n_annotations if self.n_annotations else None

    def to_dict(self) -> dict:
        return {
            "n_expected": self.n_annotations,
            "n_answered": self.n_matched,
            "coverage": self.coverage,
            "n_results": self.n_results,
            "n_annotations": self.n_annotations,
            "n_matched": self.n_matched,
            "n_unknown": len(self.unknown_ids),
            "unknown_ids": [str(x) for x in self.unknown_ids[:MAX_LISTED_IDS]],
            "n_missing": len(self.missing_ids),
            "missing_ids": [str(x) for x in self.missing_ids[:MAX_LISTED_IDS]],
            "n_duplicate": len(self.duplicate_ids),
            "duplicate_ids": [str(x) for x in self.duplicate_ids[:MAX_LISTED_IDS]],
        }

    def warnings(self) -> list[str]:
        return warning_lines(self.to_dict())


_WARNING_TEXT = {
    "unknown": "result ids not in the annotations (ignored)",
    "missing": "annotated questions without a result",
    "duplicate": "questions answered more than once (same id and repeat; last answer kept)",
}


def _expected_answered(report: dict) -> tuple[int, int]:
    """(expected, answered) of a report dict; older dicts only have n_annotations / n_matched."""
    expected = report.get("n_expected", report.get("n_annotations", 0))
    return expected, report.get("n_answered", report.get("n_matched", 0))


def coverage_line(report: dict) -> str:
    """``coverage: 950/1000 (95.0%)`` for a ``MatchReport.to_dict()``."""
    expected, answered = _expected_answered(report)
    share = f"{100.0 * answered / expected:.1f}%" if expected else "nothing expected"
    return f"coverage: {answered}/{expected} ({share})"


def coverage_warning(report: dict) -> str | None:
    """A WARNING line when fewer questions were answered than expected (or none were expected)."""
    expected, answered = _expected_answered(report)
    if not expected:
        return "WARNING: no questions expected (empty annotations or split): nothing was scored"
    if answered < expected:
        return (f"WARNING: incomplete answers: {answered} of {expected} questions answered "
                f"({100.0 * answered / expected:.1f}% coverage)")
    return None


def warning_lines(report: dict) -> list[str]:
    """Human-readable warnings from a ``MatchReport.to_dict()``: coverage, then unknown / missing / duplicate ids."""
    lines = []
    low_coverage = coverage_warning(report)
    if low_coverage:
        lines.append(low_coverage)
    for label, what in _WARNING_TEXT.items():
        count = report.get(f"n_{label}", 0)
        if count:
            shown = ", ".join(report.get(f"{label}_ids", []))
            more = f", ... ({count - MAX_LISTED_IDS} more)" if count > MAX_LISTED_IDS else ""
            lines.append(f"WARNING: {count} {what}: {shown}{more}")
    return lines


def index_by_id(answers: Iterable[dict], report: MatchReport) -> dict[str, dict]:
    """:func:`llava.eval.answers.record_key` (question id, ``#<repeat>`` for a repeated question) -> answer record. Repeats of a question (``metadata.repeat``) are kept apart; two lines
    with one key are one question answered twice: reported as a duplicate, the last one wins."""
    by_id: dict[str, dict] = {}
    for record in answers:
        key = record_key(record)
        if key in by_id:
            report.duplicate_ids.append(key)
        by_id[key] = record
    return by_id


def match_by_id(answers: list[dict], annotated_ids: Iterable[Any]) -> tuple[list[tuple[str, dict]], MatchReport]:
    """Pair answers with annotated ids (compared as strings; the k-th occurrence of an id in ``annotated_ids`` is
    answered by the line with ``metadata.repeat`` k, see :func:`numbered_keys`).

    Returns ``[(key, answer)]`` in annotation order and the report.
    """
    report = MatchReport(n_results=len(answers))
    by_id = index_by_id(answers, report)
    annotated = numbered_keys(annotated_ids)
    report.n_annotations = len(annotated)
    annotated_set = set(annotated)
    pairs = []
    for key in annotated:
        if key in by_id:
            pairs.append((key, by_id[key]))
        else:
            report.missing_ids.append(key)
    report.unknown_ids = [key for key in by_id if key not in annotated_set]
    report.n_matched = len(pairs)
    return pairs, report


def percent(numerator: float, denominator: float) -> float:
    """100 * n / d, and 0.0 for an empty denominator (the report shows the counts)."""
    return 100.0 * numerator / denominator if denominator else 0.0


# ---------------------------------------------------------------- CLI plumbing


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--result-file", required=True, help="answers jsonl written by the eval runner")
    parser.add_argument("--output-json", default=None, help="also write the metrics to this JSON file")
    return parser


def format_metrics(metrics: dict, indent: int = 0) -> list[str]:
    lines = []
    pad = "  " * indent
    for key, value in metrics.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.extend(format_metrics(value, indent + 1))
        elif isinstance(value, float):
            lines.append(f"{pad}{key}: {value:.2f}")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: {', '.join(str(v) for v in value) if value else '-'}")
        else:
            lines.append(f"{pad}{key}: {value}")
    return lines


def emit(metrics: dict, output_json: str | None) -> None:
    """Print the metrics, a coverage line per ``report``, then the warnings; write JSON if asked."""
    for line in format_metrics(metrics):
        print(line)
    for line in report_lines(metrics):
        print(line)
    if output_json:
        write_json(output_json, metrics)
        print(f"metrics written to {output_json}")


def find_reports(metrics: dict, path: str = "") -> list[tuple[str, dict]]:
    """``(where, report)`` for every ``report`` entry, depth first; ``where`` is the path of the enclosing dict."""
    found = []
    for key, value in metrics.items():
        if key == "report" and isinstance(value, dict):
            found.append((path, value))
        elif isinstance(value, dict):
            found.extend(find_reports(value, f"{path}/{key}" if path else key))
    return found


def report_lines(metrics: dict) -> list[str]:
    """Coverage line of every report (prefixed with its place when it is nested), then all warnings."""
    lines = []
    for where, report in find_reports(metrics):
        line = coverage_line(report)
        lines.append(f"{where} {line}" if where else line)
    return lines + _collect_warnings(metrics)


def _collect_warnings(metrics: dict) -> list[str]:
    lines = []
    for key, value in metrics.items():
        if key == "report" and isinstance(value, dict):
            lines.extend(warning_lines(value))
        elif key == "warnings" and isinstance(value, list):
            lines.extend(f"WARNING: {w}" for w in value)
        elif key == "partial_reasons" and isinstance(value, list):
            lines.extend(f"WARNING: partial: {w}" for w in value)
        elif isinstance(value, dict):
            lines.extend(_collect_warnings(value))
    return lines


def nothing_scored(metrics: dict) -> str | None:
    """Why nothing at all was scored (no report with an expected *and* an answered question), else None.

    Metrics without any report are not judged (None).
    """
    reports = [report for _, report in find_reports(metrics)]
    if not reports:
        return None
    counts = [_expected_answered(report) for report in reports]
    if any(expected and answered for expected, answered in counts):
        return None
    if all(not expected for expected, _ in counts):
        return "no questions expected (empty annotations or split)"
    return "no expected question has an answer (wrong result file, or ids that match nothing)"


def exit_code(metrics: dict) -> int:
    """Process exit status of a scorer CLI: 1 (with the reason on stderr) when nothing was scored, else 0."""
    reason = nothing_scored(metrics)
    if reason is None:
        return 0
    print(f"ERROR: nothing was scored: {reason}", file=sys.stderr)
    return 1


class NothingScoredError(ValueError):
    """Raised by the eval runner when a scorer scored nothing: the run must not end with exit status 0."""


def headline_status(metrics: dict, missing_as_wrong: bool = True) -> dict:
    """How complete the headline number is: ``{"n_answered", "n_expected", "partial", "reasons", "note"}``.

    Counts come from the top-level ``report`` (else the first one found). ``partial`` is the scorer's flag, or
    true when coverage is below 100% or ``partial_reasons`` lists something (e.g. a POPE category without
    answers). ``note`` is the text the runner appends to the headline: ``"partial: 10/60 answered"`` and, where
    the official scorer counts a missing answer as wrong, ``", missing counted wrong"``; empty when complete.
    """
    reports = find_reports(metrics)
    top = metrics.get("report") if isinstance(metrics.get("report"), dict) else (reports[0][1] if reports else {})
    expected, answered = _expected_answered(top) if top else (0, 0)
    reasons = []
    if expected and answered < expected:
        reasons.append(f"{answered}/{expected} answered" + (", missing counted wrong" if missing_as_wrong else ""))
    reasons.extend(metrics.get("partial_reasons", []))
    partial = bool(metrics.get("partial")) or bool(reasons)
    if partial and not reasons:
        reasons.append(f"{answered}/{expected} answered")
    return {"n_answered": answered, "n_expected": expected, "partial": partial, "reasons": reasons,
            "note": f"partial: {'; '.join(reasons)}" if partial else ""}
