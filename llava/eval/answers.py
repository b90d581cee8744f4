"""Resumable, crash-safe answers files.

An answers file is jsonl, one answer per line, in LLaVA's layout plus the run's identity::

    {"question_id": 17, "prompt": "...", "text": "two", "answer_id": "<shortuuid>",
     "model_id": "llava-v1.5-7b", "visual_token_num": 144, "pruning_method": "fastervlm",
     "anyres_mode": null, "v_token_num": 144, "metadata": {}}

- ``visual_token_num`` is the budget per crop, ``v_token_num`` the visual tokens the sample
  actually got (budget x crops for LLaVA-1.6, 0 for a text-only question).
- ``anyres_mode`` is set for anyres (LLaVA-1.6) checkpoints only.
- the other identity fields (:class:`llava.eval.answer_identity.RunIdentity`) say how the answer was produced:
  method parameters, conversation template, decoding settings, prompt options and a fingerprint of the checkpoint.
- MMBench answers also carry ``round_id``, ``options`` and ``option_char`` (see
  ``llava.eval.model_vqa_mmbench``).

Crash safety: :meth:`AnswersFile.append` writes a whole line with one ``write`` and then
flushes and fsyncs, so a killed run loses at most the line being written. Opening the file
again drops a truncated last line (and says so); a malformed line anywhere else is an error
naming the file and line, since that is not what a crash leaves behind.

Resuming: every line is keyed by :func:`record_key` (the question id, plus the round for
MMBench ``--all-rounds`` and a repeat counter for ids that occur more than once in a question
file, as LLaVA's TextVQA file does). A rerun skips the keys already present and appends the
rest. A file written under any other setting that changes an answer (every field of
:class:`RunIdentity`, compared on every line) is refused: mixing two runs in one file would
silently corrupt the score. Lines written before a field was recorded are refused too, naming the
missing fields (rerun with ``--overwrite``).

Overwriting: ``AnswersFile(path, overwrite=True)`` leaves ``path`` alone and writes the new run to
``<path>.overwrite``; :meth:`AnswersFile.finish` renames it over ``path`` once the run is complete,
so a run that fails (bad template, failed model load, a crash) leaves the old answers intact.

Skipped questions (``--skip-bad-images``): a question whose image cannot be read is recorded in
the side file :func:`skipped_path` (``n_144.jsonl`` -> ``n_144.skipped.jsonl``), one line per
question with its key fields, the identity and ``"skipped": "<reason>"``; the answers file itself
holds only answers, so every scorer counts a skipped question as unanswered. Resume treats a
skipped question as done (fix the image and rerun with ``--overwrite`` to retry it); merging
concatenates the chunks' side files as it does their answers.

Locking: :func:`hold_lock` takes an exclusive, non-blocking ``fcntl.flock`` on ``<path>.lock``
for as long as a run writes ``path``; a second run on the same file is refused, naming the PID
written in the lock file. The kernel drops the lock when its holder dies, even by ``kill -9``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from contextlib import contextmanager
from typing import Any, Iterable

from llava.atomic import atomic_write
from llava.eval.answer_identity import IDENTITY_FIELDS, MISSING, RunIdentity, differences, identity_conflicts, \
    record_identity


class AnswersMismatchError(ValueError):
    """The answers file on disk belongs to a different run (any field of :class:`RunIdentity`, or the question text)."""


class AnswersLockedError(OSError):
    """Another live process holds the answers file's lock."""


def item_key(question_id: Any, round_id: int | None = None, repeat: int = 0) -> str:
    """Resume key of one answer: ``<question_id>[#r<round>][#<repeat>]``."""
    key = str(question_id)
    if round_id:
        key += f"#r{round_id}"
    if repeat:
        key += f"#{repeat}"
    return key


def repeat_numbers(bases: Iterable[str]) -> list[int]:
    """For each key in order, how often it came before: 0, 1, 2, ... for the 1st, 2nd, 3rd asking of one question
    (the ``metadata.repeat`` the eval runner writes, and the scorers match)."""
    seen: dict[str, int] = {}
    numbers = []
    for base in bases:
        numbers.append(seen.get(base, 0))
        seen[base] = numbers[-1] + 1
    return numbers


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


def skipped_path(path: str) -> str:
    """The side file of skipped questions: ``answers/n_144.jsonl`` -> ``answers/n_144.skipped.jsonl``."""
    stem, ext = os.path.splitext(path)
    return f"{stem}.skipped{ext or '.jsonl'}"


def _lock_holder(fd: int) -> str:
    text = os.pread(fd, 64, 0).decode("utf-8", errors="replace").strip()
    return text or "unknown"


@contextmanager
def hold_lock(path: str):
    """Hold an exclusive lock on ``<path>.lock`` (``fcntl.flock``, non-blocking) while the block runs.

    The lock file holds the holder's PID, for the message a second run gets. ``flock`` belongs to
    the open file, so the kernel releases it when the holder exits or is killed; a stale lock file
    left on disk is harmless. Raises :class:`AnswersLockedError` when a live process holds it.
    """
    path = os.path.abspath(os.path.expanduser(path))
    lock_path = f"{path}.lock"
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        raise AnswersLockedError(f"{path} is in use by another run (process {holder}, lock file {lock_path}); "
                                 "wait for it to finish or stop that process, then rerun") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock_path
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class _Lines:
    """One jsonl file appended line by line, each line flushed and fsynced."""

    def __init__(self, path: str, fresh: bool):
        self.path = path
        self.fresh = fresh  # truncate on first open (the temporary file of an --overwrite run)
        self._file = None

    def open(self):
        if self._file is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._file = open(self.path, "wb" if self.fresh else "ab")
            self.fresh = False  # truncated once; reopening appends
            if self._file.tell() > 0 and not _ends_with_newline(self.path):
                self._file.write(b"\n")  # a complete last line whose newline the crash cut off
        return self._file

    def append(self, record: dict) -> None:
        f = self.open()
        f.write((json.dumps(record) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class AnswersFile:
    """An answers jsonl opened for resuming (or, with ``overwrite``, for replacing once complete).

    ``records`` holds the answer lines already on disk, ``skipped`` the lines of the skipped-questions side file
    and ``done`` the keys of both; :meth:`append` / :meth:`append_skipped` add one line durably. Use :meth:`check`
    before appending, so lines of two runs never mix, and :meth:`finish` once the run is complete.
    """

    OVERWRITE_SUFFIX = ".overwrite"

    def __init__(self, path: str, overwrite: bool = False):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.skipped_path = skipped_path(self.path)
        self.overwrite = overwrite
        if overwrite:  # the old files stay until finish(); the new run starts from nothing
            self.records, self.skipped = [], []
        else:
            self.records = read_answers(self.path, repair=True)
            self.skipped = read_answers(self.skipped_path, repair=True)
        self.done = {record_key(r) for r in self.records + self.skipped}
        suffix = self.OVERWRITE_SUFFIX if overwrite else ""
        self._answers = _Lines(self.path + suffix, fresh=overwrite)
        self._skips = _Lines(self.skipped_path + suffix, fresh=overwrite)

    def check(self, identity: RunIdentity, fields: Iterable[str] = IDENTITY_FIELDS) -> None:
        """Refuse to resume a file written by another run (compares ``fields`` of every line).

        Lines written before some identity field existed are refused with the list of missing fields."""
        fields = tuple(fields)
        for path, records in ((self.path, self.records), (self.skipped_path, self.skipped)):
            for line_no, record in enumerate(records, start=1):
                missing = [name for name in fields if name not in record]
                if missing:
                    raise AnswersMismatchError(
                        f"{path}: answer #{line_no} lacks the run identity field(s) {missing}: it was written by an "
                        "older version that did not record them, so it cannot be told apart from another run's. "
                        f"Rerun with --overwrite to answer afresh (the old file is replaced only when the new run "
                        f"completes), or write to another --answers-file.")
                conflicts = identity_conflicts(record, identity, fields)
                if conflicts:
                    raise AnswersMismatchError(
                        f"{path} holds answers of a different run (answer #{line_no}: {'; '.join(conflicts)}). "
                        "Refusing to mix two runs in one answers file. To start fresh, rerun with --overwrite or "
                        f"delete {path}; to keep both, write to another --answers-file.")

    def check_prompts(self, prompts: dict[str, Any]) -> None:
        """Refuse lines whose ``prompt`` differs from the question file's text for their key (``prompts``: key ->
        prompt; keys not in it are left alone)."""
        for line_no, record in enumerate(self.records, start=1):
            key = record_key(record)
            if key in prompts and record.get("prompt", MISSING) != prompts[key]:
                raise AnswersMismatchError(
                    f"{self.path} holds an answer to another question text (answer #{line_no}, question {key}: "
                    f"{record.get('prompt', MISSING)!r} in the file, {prompts[key]!r} in the question file). "
                    "The question file changed since these answers were written; rerun with --overwrite or write "
                    "to another --answers-file.")

    def append(self, record: dict) -> None:
        """Write one answer line and make it durable (flush + fsync) before returning."""
        self._answers.append(record)
        self.done.add(record_key(record))

    def append_skipped(self, record: dict) -> None:
        """Record one skipped question (a line with ``"skipped": reason``) in the side file, durably."""
        self._skips.append(record)
        self.done.add(record_key(record))

    def touch(self) -> None:
        """Create the file (empty) if it does not exist yet."""
        self._answers.open()

    def finish(self) -> None:
        """The run is complete: with ``overwrite``, the new files replace the old ones (skipped side file first)."""
        self.touch()  # a run with nothing to answer (an empty chunk) still leaves its file for the merge
        self.close()
        if not self.overwrite:
            return
        new_skips = self._skips.path
        if os.path.exists(new_skips):
            os.replace(new_skips, self.skipped_path)
        elif os.path.exists(self.skipped_path):
            os.remove(self.skipped_path)  # the old run's skips belong to the answers being replaced
        os.replace(self._answers.path, self.path)
        self.overwrite = False

    def close(self) -> None:
        self._answers.close()
        self._skips.close()

    def __enter__(self) -> "AnswersFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_jsonl(records: list[dict], out_path: str) -> None:
    """Write atomically (:func:`llava.atomic.atomic_write`), so a crash never leaves a half-written file."""
    with atomic_write(out_path, "wb") as f:
        for record in records:
            f.write((json.dumps(record) + "\n").encode("utf-8"))


def merge_answers(chunk_paths: list[str], out_path: str) -> int:
    """Concatenate finished chunk files in the given (chunk) order into ``out_path``.

    Every chunk must parse completely, all lines must share one identity and no key may repeat.
    Chunks' skipped-question side files are merged the same way into ``skipped_path(out_path)``.
    Each merged file is written next to its target and renamed over it, so a crash never leaves
    a half-merged file. Returns the number of answers.
    """
    merged, skipped, seen, first = [], [], {}, None
    for path in chunk_paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"chunk answers file not found: {path}")
        for source, into in ((path, merged), (skipped_path(path), skipped)):
            for number, record in enumerate(read_answers(source), start=1):
                where = f"{source} (answer #{number})"
                identity = record_identity(record)
                if first is None:
                    first = (identity, where)
                conflicts = differences(identity, first[0], where, first[1])
                if conflicts:
                    raise AnswersMismatchError(f"cannot merge answers of two runs: {'; '.join(conflicts)}")
                key = record_key(record)
                if key in seen:
                    raise ValueError(f"cannot merge: question {key} answered twice, in {seen[key]} and again in "
                                     f"{where}")
                seen[key] = where
                into.append(record)
    if skipped:
        _write_jsonl(skipped, skipped_path(out_path))
    elif os.path.exists(skipped_path(out_path)):
        os.remove(skipped_path(out_path))
    _write_jsonl(merged, out_path)
    return len(merged)
