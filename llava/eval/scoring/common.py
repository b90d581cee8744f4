"""File reading and result/annotation matching shared by the scorers.

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

Coverage lines, warnings, the exit status and the headline's completeness are :mod:`.report`'s.

Aggregate metrics are percentages (0-100), as LLaVA's scripts print them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from ..answers import item_key, record_key, repeat_numbers
from ...atomic import atomic_write
from ...json_file import read_json_file

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
    """Any JSON value (question files may be lists); errors name ``role`` and the file (:func:`read_json_file`)."""
    return read_json_file(path, role, object_only=False)


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
    (:func:`llava.eval.questions.number_repeats`, :func:`llava.eval.answers.record_key`)."""
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


def index_by_id(answers: Iterable[dict], report: MatchReport) -> dict[str, dict]:
    """:func:`llava.eval.answers.record_key` (question id, ``#<repeat>`` for a repeated question) -> answer record.
    Repeats of a question (``metadata.repeat``) are kept apart; two lines with one key are one question answered
    twice: reported as a duplicate, the last one wins."""
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
