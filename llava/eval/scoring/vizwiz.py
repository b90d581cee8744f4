"""VizWiz-VQA: the test submission json.

Inputs
  test split   LLaVA's ``llava_test.jsonl``: ``question_id`` and ``image`` per line
  result file  answers jsonl

The upload is ``[{"image", "answer"}]``, one entry per split question in split order, answers
cleaned by the EvalAI answer processor, as LLaVA's ``scripts/convert_vizwiz_for_submission.py``
(haotian-liu/LLaVA) writes it; a repeated question id keeps its last line (the original builds a
dict), results for ids outside the split are dropped (listed as unknown). The original stops with an
``AssertionError`` when a split question has no result; here its answer is written empty (the
server scores it wrong), the run is marked ``partial`` and the missing ids are listed.
"""

from __future__ import annotations

import sys

from .common import load_answers, match_by_id, numbered_keys, read_jsonl, require_fields, write_json
from .report import base_parser, emit, exit_code
from .vqa_normalize import evalai_normalize


def submission(split_questions: list[dict], answers: list[dict]) -> tuple[list[dict], dict]:
    pairs, report = match_by_id(answers, [q["question_id"] for q in split_questions])
    texts = dict(pairs)  # keyed like numbered_keys: the k-th asking of an id is the answer with repeat k
    entries = []
    for key, question in zip(numbered_keys(q["question_id"] for q in split_questions), split_questions):
        result = texts.get(key)
        entries.append({"image": question["image"], "answer": evalai_normalize(result["text"]) if result else ""})
    return entries, report.to_dict()


def evaluate(result_file: str, test_split: str, upload_file: str | None = None) -> dict:
    questions = read_jsonl(test_split, role="VizWiz test split")
    for i, question in enumerate(questions, start=1):
        require_fields(question, ("question_id", "image"), f"{test_split}: question #{i}")
    entries, report = submission(questions, load_answers(result_file))
    metrics = {"n_questions": len(entries), "n_empty": report["n_missing"],
               "partial": report["n_matched"] < report["n_annotations"], "report": report}
    if upload_file:
        write_json(upload_file, entries, indent=None)
        metrics["upload_file"] = upload_file
    return metrics


def main(argv=None) -> dict:
    parser = base_parser("VizWiz test submission json (EvalAI answer processing).")
    parser.add_argument("--test-split", required=True, help="llava_test.jsonl (question_id, image)")
    parser.add_argument("--upload-file", required=True, help="write the submission json here")
    args = parser.parse_args(argv)
    metrics = evaluate(args.result_file, args.test_split, args.upload_file)
    emit(metrics, args.output_json)
    return metrics


if __name__ == "__main__":
    sys.exit(exit_code(main(sys.argv[1:])))
