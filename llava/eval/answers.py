"""Resumable, crash-safe answers files.

An answers file is jsonl, one answer per line, in LLaVA's layout plus the run's identity::

    {"question_id": 17, "prompt": "...", "text": "two", "answer_id": "<shortuuid>",
     "model_id": "llava-v1.5-7b", "visual_token_num": 144, "pruning_method": "fastervlm",
     "anyres_mode": null, "v_token_num": 144, "metadata": {}}

- ``visual_token_num`` is the budget per crop, ``v_token_num`` the visual tokens the sample
  actually got (budget x crops for LLaVA-1.6, 0 for a text-only question).
- ``anyres_mode`` is set for anyres (LLaVA-1.6) checkpoints only.
- MMBench answers also carry ``round_id``, ``options`` and ``option_char`` (see
  ``llava.eval.model_vqa_mmbench``).

Crash safety: :meth:`AnswersFile.append` writes a whole line with one ``write`` and then
flushes and fsyncs, so a killed run loses at most the line being written. Opening the file
again drops a truncated last line (and says so); a malformed line anywhere else is an error
naming the file and line, since that is not what a crash leaves behind.

Resuming: every line is keyed by :func:`record_key` (the question id, plus the round for
MMBench ``--all-rounds`` and a repeat counter for ids that occur more than once in a question
file, as LLaVA's TextVQA file does). A rerun skips the keys already present and appends the
rest. A file written by another model, budget, pruning method or anyres mode is refused: mixing
two runs in one file would silently corrupt the score.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, fields as dataclass_fields
from typing import Any, Iterable

_MISSING = "<missing>"  # what a line without an identity field reports for it


class AnswersMismatchError(ValueError):
    """The answers file on disk belongs to a different run (model, budget, method, anyres mode)."""


@dataclass(frozen=True)
class RunIdentity:
    """What must agree between the lines of one answers file. Every field is written on every line and compared on
    every line (resume and merge): to widen the identity, add one field here.

    model_id:          ``get_model_name_from_path(--model-path)``, as LLaVA records it.
    visual_token_num:  visual tokens kept per crop (the resolved budget; 576 = no pruning for CLIP-336).
    pruning_method:    registered selection method (``fastervlm``, ``random``, ...).
    anyres_mode:       "paper" / "upstream" for anyres checkpoints, None otherwise.
    """

    model_id: str
    visual_token_num: int | None
    pruning_method: str
    anyres_mode: str | None = None

    def as_fields(self) -> dict[str, Any]:
        return asdict(self)


# The fields of a line that say which run wrote it: all of RunIdentity's, in its order.
IDENTITY_FIELDS = tuple(f.name for f in dataclass_fields(RunIdentity))


def record_identity(record: dict, fields: Iterable[str] = IDENTITY_FIELDS) -> dict[str, Any]:
    """The identity fields of an answer line (``"<missing>"`` where the line lacks one)."""
    return {name: record.get(name, _MISSING) for name in fields}


def _differences(theirs: dict, ours: dict, their_name: str, our_name: str) -> list[str]:
    return [f"{name}: {theirs[name]!r} in {their_name}, {ours[name]!r} in {our_name}"
            for name in ours if theirs[name] != ours[name]]


def identity_conflicts(record: dict, identity: RunIdentity, fields: Iterable[str] = IDENTITY_FIELDS) -> list[str]:
    """``field: file has X, this run has Y`` for each of ``fields`` where ``record`` disagrees."""
    fields = tuple(fields)
    ours = {name: identity.as_fields()[name] for name in fields}
    return _differences(record_identity(record, fields), ours, "the file", "this run")


def item_key(question_id: Any, round_id: int | None = None, repeat: int = 0) -> str:
    """Resume key of one answer: ``<question_id>[#r<round>][#<repeat>]``."""
    key = str(question_id)
    if round_id:
        key += f"#r{round_id}"
    if repeat:
        key += f"#{repeat}"
    return key


def record_key(record: dict) -> str:
    """:func:`item_key` of an answer line."""
    metadata = record.get("metadata") or {}
    return item_key(record["question_id"], record.get("round_id"), metadata.get("repeat", 0))


def _decode_line(raw: bytes, path: str, line_no: int) -> dict:
    record = json.loads(raw.decode("utf-8"))
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
    if "question_id" not in record:
        raise ValueError(f"{path}:{line_no}: answer line has no 'question_id'")
    return record


def read_answers(path: str, repair: bool = False) -> list[dict]:
    """All answer lines of ``path`` (missing file: none).

    A last line that does not parse is what a killed writer leaves: with ``repair`` it is cut
    off the file (with a note on stderr), otherwise it is an error. A malformed line before the
    last one is always an error naming the file and line number.
    """
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    records, offset = [], 0
    lines = data.split(b"\n")
    for line_no, raw in enumerate(lines, start=1):
        start, offset = offset, offset + len(raw) + 1
        if not raw.strip():
            continue
        try:
            records.append(_decode_line(raw, path, line_no))
            continue
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            is_last = not any(rest.strip() for rest in lines[line_no:])
            if not (is_last and repair):
                where = "last line (truncated by a killed run?)" if is_last else "malformed answer line"
                raise ValueError(f"{path}:{line_no}: {where}: {err}; fix or delete the line, or rerun with "
                                 "--overwrite to start fresh") from None
        with open(path, "r+b") as f:
            f.truncate(start)
            f.flush()
            os.fsync(f.fileno())
        print(f"[answers] {path}:{line_no}: dropped a truncated last line (a killed run); it will be redone",
              file=sys.stderr)
    return records


class AnswersFile:
    """An answers jsonl opened for resuming.

    ``records`` holds the lines already on disk and ``done`` their keys; :meth:`append` adds one
    answer durably. Use :meth:`check` before appending, so lines of two runs never mix.
    """

    def __init__(self, path: str, overwrite: bool = False):
        self.path = os.path.abspath(os.path.expanduser(path))
        if overwrite and os.path.exists(self.path):
            os.remove(self.path)
        self.records = read_answers(self.path, repair=True)
        self.done = {record_key(r) for r in self.records}
        self._file = None

    def check(self, identity: RunIdentity, fields: Iterable[str] = IDENTITY_FIELDS) -> None:
        """Refuse to resume a file written by another run (compares ``fields`` of every line)."""
        fields = tuple(fields)
        for line_no, record in enumerate(self.records, start=1):
            conflicts = identity_conflicts(record, identity, fields)
            if conflicts:
                raise AnswersMismatchError(
                    f"{self.path} holds answers of a different run (answer #{line_no}: {'; '.join(conflicts)}). "
                    "Refusing to mix two runs in one answers file. To start fresh, rerun with --overwrite or "
                    f"delete {self.path}; to keep both, write to another --answers-file.")

    def append(self, record: dict) -> None:
        """Write one line and make it durable (flush + fsync) before returning."""
        if self._file is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._file = open(self.path, "ab")
            if self._file.tell() > 0 and not self._ends_with_newline():
                self._file.write(b"\n")  # a complete last line whose newline the crash cut off
        self._file.write((json.dumps(record) + "\n").encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.done.add(record_key(record))

    def touch(self) -> None:
        """Create the file (empty) if it does not exist yet."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        open(self.path, "ab").close()

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "AnswersFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_answers(chunk_paths: list[str], out_path: str) -> int:
    """Concatenate finished chunk files in the given (chunk) order into ``out_path``.

    Every chunk must parse completely, all lines must share one identity and no key may repeat.
    The merged file is written next to ``out_path`` and renamed over it, so a crash never leaves
    a half-merged file. Returns the number of answers.
    """
    merged, seen, first = [], {}, None
    for path in chunk_paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"chunk answers file not found: {path}")
        for number, record in enumerate(read_answers(path), start=1):
            where = f"{path} (answer #{number})"
            identity = record_identity(record)
            if first is None:
                first = (identity, where)
            conflicts = _differences(identity, first[0], where, first[1])
            if conflicts:
                raise AnswersMismatchError(f"cannot merge answers of two runs: {'; '.join(conflicts)}")
            key = record_key(record)
            if key in seen:
                raise ValueError(f"cannot merge: question {key} answered twice, in {seen[key]} and again in {where}")
            seen[key] = where
            merged.append(record)
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path}.merging"
    with open(tmp, "wb") as f:
        for record in merged:
            f.write((json.dumps(record) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out_path)
    return len(merged)
