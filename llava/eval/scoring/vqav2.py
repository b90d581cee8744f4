"""VQAv2: the test-dev submission json, and VQA accuracy on val when annotations are at hand.

Inputs
  test split   LLaVA's ``llava_vqav2_mscoco_test2015.jsonl`` (or the test-dev one):
               one ``question_id`` per line; the upload lists exactly these questions
  result file  answers jsonl
  annotations  optional, for a local score: ``v2_mscoco_val2014_annotations.json``
               (``{"annotations": [{"question_id", "answers": [{"answer"}...], "answer_type"}]}``)

The upload is ``[{"question_id", "answer"}]`` with answers cleaned by the EvalAI
answer processor, as LLaVA's ``convert_vqav2_for_submission``. The evaluation
server wants every question of the split, so questions without a result are
written with an empty answer (and reported). LLaVA answers test-dev but uploads
against the full test2015 list, so there most questions are empty by design.
"""

from __future__ import annotations

import sys

from .common import (base_parser, emit, load_answers, match_by_id, percent, read_json, read_jsonl,
                     require_fields, write_json)
from .vqa_normalize import evalai_normalize, vqa_accuracy


def submission(split_questions: list[dict], answers: list[dict]) -> tuple[list[dict], dict]:
    """Upload entries in split order, plus the match report."""
    ids = [question["question_id"] for question in split_questions]
    pairs, report = match_by_id(answers, ids)
    texts = dict(pairs)
    entries = [{"question_id": qid, "answer": evalai_normalize(texts[str(qid)]["text"]) if str(qid) in texts else ""}
               for qid in ids]
    return entries, report.to_dict()


def score_vqav2(annotations: list[dict], answers: list[dict]) -> dict:
    """Official VQA accuracy per question, averaged overall and per answer type."""
    by_id = {str(ann["question_id"]): ann for ann in annotations}
    pairs, report = match_by_id(answers, by_id)
    tallies: dict[str, list[float]] = {}
    for qid, answer in pairs:
        ann = by_id[qid]
        score = vqa_accuracy(answer["text"], [a["answer"] for a in ann["answers"]])
        for group in ("all", f"type/{ann.get('answer_type', 'unknown')}"):
            tally = tallies.setdefault(group, [0.0, 0])
            tally[0] += score
            tally[1] += 1
    return {
        "accuracy": percent(*tallies.get("all", (0.0, 0))),
        "answer_type": {g[5:]: percent(*t) for g, t in sorted(tallies.items()) if g.startswith("type/")},
        "report": report.to_dict(),
    }


def evaluate(result_file: str, test_split: str | None = None, upload_file: str | None = None,
             annotation_file: str | None = None) -> dict:
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
        questions = read_jsonl(test_split, role="VQAv2 test split")
        for i, question in enumerate(questions, start=1):
            require_fields(question, ("question_id",), f"{test_split}: question #{i}")
        entries, report = submission(questions, answers)
        write_json(upload_file, entries, indent=None)
        metrics["submission"] = {"path": upload_file, "n_questions": len(entries),
                                 "n_empty": report["n_missing"], "report": report}
    if not metrics:
        raise ValueError("nothing to do: pass --upload-file (with --test-split) and/or --annotation-file")
    return metrics


def main(argv=None) -> dict:
    parser = base_parser("VQAv2 test-dev submission json (EvalAI answer processing); val accuracy if annotated.")
    parser.add_argument("--test-split", default=None, help="llava_vqav2_mscoco_test2015.jsonl")
    parser.add_argument("--upload-file", default=None, help="write the submission json here")
    parser.add_argument("--annotation-file", default=None, help="v2_mscoco_val2014_annotations.json for a local score")
    args = parser.parse_args(argv)
    metrics = evaluate(args.result_file, args.test_split, args.upload_file, args.annotation_file)
    emit(metrics, args.output_json)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
