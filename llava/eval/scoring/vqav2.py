"""VQAv2: the test-dev submission json, and VQA accuracy on val when annotations are at hand.

Inputs
  test split     LLaVA's ``llava_vqav2_mscoco_test2015.jsonl``: one ``question_id`` per line; the
                 upload lists exactly these questions, in this order
  result file    answers jsonl
  question file  optional: the questions that were asked (``llava_vqav2_mscoco_test-dev2015.jsonl``);
                 coverage is answered / these. Without it, coverage is against the test split
  annotations    optional, for a local score: ``v2_mscoco_val2014_annotations.json``
                 (``{"annotations": [{"question_id", "answers": [{"answer"}...], "answer_type"}]}``)

The upload is ``[{"question_id", "answer"}]`` with answers cleaned by the EvalAI answer processor,
as LLaVA's ``scripts/convert_vqav2_for_submission.py`` (haotian-liu/LLaVA) writes it: one entry per
split question in split order, ``""`` for a question without a result (LLaVA answers test-dev and
uploads against the whole test2015 list, so most entries are empty by design; the server counts
them wrong), the last line of a repeated question id wins, and results for ids outside the split
are dropped (listed here as unknown).

The local val score follows the official VQA evaluation (``vqaEval.py``): the mean over every
annotated question of the soft accuracy. The official ``loadRes`` refuses results that do not
cover the annotated questions exactly; here a missing answer counts 0 (so a partial run only scores
lower) and ``partial`` says so.
"""

from __future__ import annotations

import sys

from .common import (MatchReport, base_id, expand_repeats, index_by_id, load_answers, numbered_keys, percent, qid_key,
                     read_json, read_jsonl, require_fields, write_json)
from .report import base_parser, emit, exit_code
from .vqa_normalize import evalai_normalize, vqa_accuracy


def submission(split_questions: list[dict], answers: list[dict],
               asked_ids: list | None = None) -> tuple[list[dict], dict]:
    """Upload entries in split order, plus the match report.

    The report counts coverage against ``asked_ids`` when given (the questions that were put to
    the model), else against the split.
    """
    report = MatchReport(n_results=len(answers))
    texts = index_by_id(answers, report)
    split_ids = [question["question_id"] for question in split_questions]
    # The k-th occurrence of an id in the split is answered by the line with metadata.repeat k.
    split_keys = numbered_keys(split_ids)
    entries = [{"question_id": qid, "answer": evalai_normalize(texts[key]["text"]) if key in texts else ""}
               for qid, key in zip(split_ids, split_keys)]
    expected = numbered_keys(asked_ids) if asked_ids is not None else split_keys
    in_split = set(split_keys)
    report.n_annotations = len(expected)
    report.missing_ids = [key for key in expected if key not in texts]
    report.n_matched = len(expected) - len(report.missing_ids)
    # Answered but outside the upload: the server never sees these.
    report.unknown_ids = [key for key in texts if key not in in_split]
    n_empty = sum(1 for key in split_keys if key not in texts)
    return entries, {"n_empty": n_empty, "report": report.to_dict(),
                     "partial": report.partial}


def score_vqav2(annotations: list[dict], answers: list[dict]) -> dict:
    """Official VQA accuracy per question, averaged over every annotated question (missing = 0); a question the
    runner asked more than once (``metadata.repeat``) counts once per asking (:func:`.common.expand_repeats`)."""
    by_id = {qid_key(ann["question_id"]): ann for ann in annotations}
    report = MatchReport(n_results=len(answers))
    results = index_by_id(answers, report)
    expected = expand_repeats(by_id, results)
    report.n_annotations = len(expected)
    report.missing_ids = [key for key in expected if key not in results]
    report.unknown_ids = [key for key in results if base_id(key) not in by_id]
    report.n_matched = len(expected) - len(report.missing_ids)
    scores = {key: vqa_accuracy(results[key]["text"], [a["answer"] for a in by_id[base_id(key)]["answers"]])
              for key in expected if key in results}
    tallies: dict[str, list[float]] = {}
    for qid in expected:
        ann = by_id[base_id(qid)]
        for group in ("all", f"type/{ann.get('answer_type', 'unknown')}"):
            tally = tallies.setdefault(group, [0.0, 0])
            tally[0] += scores.get(qid, 0.0)
            tally[1] += 1
    return {
        "accuracy": percent(*tallies.get("all", (0.0, 0))),
        "answer_type": {g[5:]: percent(*t) for g, t in sorted(tallies.items()) if g.startswith("type/")},
        "partial": report.partial,
        "accuracy_on_answered": percent(sum(scores.values()), len(scores)),
        "report": report.to_dict(),
    }


def read_split(path: str, role: str) -> list[dict]:
    questions = read_jsonl(path, role=role)
    for i, question in enumerate(questions, start=1):
        require_fields(question, ("question_id",), f"{path}: question #{i}")
    return questions


def evaluate(result_file: str, test_split: str | None = None, upload_file: str | None = None,
             annotation_file: str | None = None, question_file: str | None = None) -> dict:
    answers = load_answers(result_file)
    metrics: dict = {}
    if annotation_file:
        data = read_json(annotation_file, role="VQAv2 annotation file")
        annotations = data["annotations"] if isinstance(data, dict) else data
        for i, ann in enumerate(annotations):
            require_fields(ann, ("question_id", "answers"), f"{annotation_file}: annotations[{i}]")
        metrics.update(score_vqav2(annotations, answers))
    if upload_file:
        if not test_split:
            raise ValueError("the VQAv2 upload needs --test-split (the question list of the split)")
        questions = read_split(test_split, "VQAv2 test split")
        asked = None
        if question_file:
            asked = [q["question_id"] for q in read_split(question_file, "VQAv2 question file")]
        entries, info = submission(questions, answers, asked)
        write_json(upload_file, entries, indent=None)
        metrics["submission"] = {"path": upload_file, "n_questions": len(entries), **info}
    if not metrics:
        raise ValueError("nothing to do: pass --upload-file (with --test-split) and/or --annotation-file")
    return metrics


def main(argv=None) -> dict:
    parser = base_parser("VQAv2 test-dev submission json (EvalAI answer processing); val accuracy if annotated.")
    parser.add_argument("--test-split", default=None, help="llava_vqav2_mscoco_test2015.jsonl")
    parser.add_argument("--upload-file", default=None, help="write the submission json here")
    parser.add_argument("--question-file", default=None,
                        help="the questions asked (llava_vqav2_mscoco_test-dev2015.jsonl), for coverage")
    parser.add_argument("--annotation-file", default=None, help="v2_mscoco_val2014_annotations.json for a local score")
    args = parser.parse_args(argv)
    metrics = evaluate(args.result_file, args.test_split, args.upload_file, args.annotation_file, args.question_file)
    emit(metrics, args.output_json)
    return metrics


if __name__ == "__main__":
    sys.exit(exit_code(main(sys.argv[1:])))
