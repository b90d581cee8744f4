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

Aggregate metrics are percentages (0-100), as LLaVA's scripts print them.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

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


def read_jsonl(path: str | os.PathLike, role: str = "jsonl file", required: Sequence[str] = ()) -> list[dict]:
    """Read a jsonl file; blank lines are skipped, anything else must be a JSON object holding `required` fields."""
    path = require_file(os.path.expanduser(os.fspath(path)), role)
    records = []
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
            missing = [name for name in required if name not in record]
            if missing:
                raise ValueError(f"{path}:{line_no}: record lacks field(s) {missing}")
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
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
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
    """Answers jsonl; every record needs ``question_id`` and ``text``."""
    answers = read_jsonl(path, role="result file")
    for i, record in enumerate(answers, start=1):
        require_fields(record, ("question_id", "text"), f"{path}: answer #{i}")
    return answers


@dataclass
class MatchReport:
    """Which results found their annotation and which did not."""

    n_results: int = 0
    n_annotations: int = 0
    n_matched: int = 0
    unknown_ids: list = field(default_factory=list)  # in results, not in annotations
    missing_ids: list = field(default_factory=list)  # annotated, no result
    duplicate_ids: list = field(default_factory=list)  # more than one result (last one kept)

    def to_dict(self) -> dict:
        return {
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
    "missing": "annotated questions without a result (not scored)",
    "duplicate": "question ids answered more than once (last answer kept)",
}


def warning_lines(report: dict) -> list[str]:
    """Human-readable warnings from a ``MatchReport.to_dict()``."""
    lines = []
    for label, what in _WARNING_TEXT.items():
        count = report.get(f"n_{label}", 0)
        if count:
            shown = ", ".join(report.get(f"{label}_ids", []))
            more = f", ... ({count - MAX_LISTED_IDS} more)" if count > MAX_LISTED_IDS else ""
            lines.append(f"WARNING: {count} {what}: {shown}{more}")
    return lines


def index_by_id(answers: Iterable[dict], report: MatchReport) -> dict[str, dict]:
    """question_id -> answer record; repeated ids are reported and the last one wins."""
    by_id: dict[str, dict] = {}
    for record in answers:
        key = qid_key(record["question_id"])
        if key in by_id:
            report.duplicate_ids.append(key)
        by_id[key] = record
    return by_id


def match_by_id(answers: list[dict], annotated_ids: Iterable[Any]) -> tuple[list[tuple[str, dict]], MatchReport]:
    """Pair answers with annotated ids (compared as strings).

    Returns ``[(id, answer)]`` in annotation order and the report.
    """
    report = MatchReport(n_results=len(answers))
    by_id = index_by_id(answers, report)
    annotated = [qid_key(x) for x in annotated_ids]
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
    """Print the metrics, then warnings from any ``report`` entries; write JSON if asked."""
    for line in format_metrics(metrics):
        print(line)
    for line in _collect_warnings(metrics):
        print(line)
    if output_json:
        write_json(output_json, metrics)
        print(f"metrics written to {output_json}")


def _collect_warnings(metrics: dict) -> list[str]:
    lines = []
    for key, value in metrics.items():
        if key == "report" and isinstance(value, dict):
            lines.extend(warning_lines(value))
        elif key == "warnings" and isinstance(value, list):
            lines.extend(f"WARNING: {w}" for w in value)
        elif isinstance(value, dict):
            lines.extend(_collect_warnings(value))
    return lines
