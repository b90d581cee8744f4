"""MM-Vet: the json the GPT grader reads.

Input: answers jsonl; ``question_id`` is MM-Vet's number (0, 1, ...) or its id
(``v1_0``). Output: ``{"v1_<n>": answer}``, answers verbatim -- the grader compares
free-form text -- as LLaVA's ``scripts/convert_mmvet_for_eval.py`` (haotian-liu/LLaVA)
writes it: one key per answered id, a repeated id keeps its last line.

The grader (MM-Vet's ``mm-vet_evaluator``) loops over the questions of ``mm-vet.json`` and
reads ``results[id]``: a missing answer stops it (KeyError), answers to other ids are never
read. So the json is written as the original writes it, and with ``--annotation-file``
(``mm-vet.json``) the ids are checked: missing ids are listed and ``partial`` is true, unknown
ids are listed.
"""

from __future__ import annotations

import sys

from .common import MatchReport, base_id, index_by_id, load_answers, qid_key, read_json, write_json
from .report import base_parser, emit, exit_code

ID_PREFIX = "v1_"


def mmvet_id(question_id) -> str:
    key = qid_key(question_id)
    return key if key.startswith(ID_PREFIX) else ID_PREFIX + key


def _repeat(key: str) -> int:
    """The repeat number of an answer key (``v1_3#2`` -> 2)."""
    return int(key.partition("#")[2] or 0)


def submission(answers: list[dict], known_ids=None) -> tuple[dict[str, str], dict]:
    """``{v1_<id>: answer}`` and the match report; without ``known_ids`` (mm-vet.json's keys) nothing is
    known to be missing, so the answered ids are all that is expected."""
    report = MatchReport(n_results=len(answers))
    results = index_by_id([dict(a, question_id=mmvet_id(a["question_id"])) for a in answers], report)
    # The grader's json holds one answer per id: a question asked more than once (metadata.repeat) is uploaded
    # with its first asking, and the other askings are listed (kept apart, not taken for duplicates).
    first: dict[str, str] = {}  # id -> key of its lowest repeat
    for key in results:
        if base_id(key) not in first or _repeat(key) < _repeat(first[base_id(key)]):
            first[base_id(key)] = key
    entries = {base_id(key): results[key]["text"] for key in results if first[base_id(key)] == key}
    repeats = [key for key in results if first[base_id(key)] != key]
    known = [mmvet_id(k) for k in known_ids] if known_ids is not None else list(entries)
    known_set = set(known)
    report.n_annotations = len(known)
    report.unknown_ids = [key for key in entries if key not in known_set]
    report.missing_ids = [key for key in known if key not in entries]
    report.n_matched = len(entries) - len(report.unknown_ids)
    info = report.to_dict()
    if repeats:
        info["not_uploaded_repeats"] = repeats
    return entries, info


def evaluate(result_file: str, upload_file: str | None = None, annotation_file: str | None = None) -> dict:
    known = read_json(annotation_file, role="MM-Vet mm-vet.json") if annotation_file else None
    entries, report = submission(load_answers(result_file), known)
    metrics = {"n_answers": len(entries), "report": report}
    if report.get("not_uploaded_repeats"):
        metrics["warnings"] = [f"{len(report['not_uploaded_repeats'])} repeated askings are not in the upload "
                               "(one answer per id; the first asking is uploaded): "
                               + ", ".join(report["not_uploaded_repeats"][:10])]
    if known is not None:
        metrics["partial"] = report["n_matched"] < report["n_annotations"]
    if upload_file:
        write_json(upload_file, entries)
        metrics["upload_file"] = upload_file
    return metrics


def main(argv=None) -> dict:
    parser = base_parser("MM-Vet grader input json {v1_<id>: answer}.")
    parser.add_argument("--upload-file", required=True, help="write the json here")
    parser.add_argument("--annotation-file", default=None, help="MM-Vet mm-vet.json, to check ids")
    args = parser.parse_args(argv)
    metrics = evaluate(args.result_file, args.upload_file, args.annotation_file)
    emit(metrics, args.output_json)
    return metrics


if __name__ == "__main__":
    sys.exit(exit_code(main(sys.argv[1:])))
