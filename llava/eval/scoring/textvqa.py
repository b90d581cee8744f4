"""TextVQA (val) accuracy.

Inputs
  annotation file  ``TextVQA_0.5.1_val.json``: ``{"data": [{"question_id", "question",
                   "image_id", "answers": [10 strings]}, ...]}``
  result file      answers jsonl (``question_id``, ``prompt``, ``text``)

Score: the VQA soft accuracy (:func:`vqa_accuracy`) with the EvalAI answer
processor applied to the prediction and to each of the 10 answers, averaged over
the matched questions -- what LLaVA's ``eval_textvqa.py`` (MMF's
``TextVQAAccuracyEvaluator``) reports.

Matching. LLaVA's question file (``llava_textvqa_val_v051_ocr.jsonl``) stores the
*image id* in ``question_id`` and the question as the first line of the prompt
(the OCR reference tokens and the short-answer instruction follow), so LLaVA
matched results to annotations by (image_id, lower-cased question). Here a
result whose ``question_id`` is a TextVQA question id is matched by that id;
any other result falls back to LLaVA's (image_id, question) key.
"""

from __future__ import annotations

import re
import sys

from .common import (MatchReport, base_parser, emit, load_answers, percent, qid_key,
                     read_json, require_fields)
from .vqa_normalize import evalai_normalize, vqa_accuracy

_OCR_PREFIX_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)
_OCR_LINE_PREFIX = "Reference OCR token:"


def question_from_prompt(prompt: str) -> str:
    """The question part of a LLaVA TextVQA prompt, lower-cased.

    Handles the three layouts LLaVA's evaluator accepts: ``OCR tokens: ...
    Question: q Short answer:``, ``q\\nReference OCR token: ...\\n<instruction>``
    (either of the first two lines may carry the OCR tokens), and ``q\\n<instruction>``.
    """
    if prompt.startswith("OCR tokens: "):
        match = _OCR_PREFIX_QUESTION.search(prompt)
        if match is None:
            raise ValueError(f"TextVQA prompt starts with 'OCR tokens:' but has no 'Question: ... Short answer:': {prompt[:120]!r}")
        return match.group(1).lower()
    lines = prompt.split("\n")
    if lines[0].startswith(_OCR_LINE_PREFIX) and len(lines) > 1:
        return lines[1].lower()
    return lines[0].lower()


def load_annotations(path: str) -> list[dict]:
    data = read_json(path, role="TextVQA annotation file")
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{path}: expected a JSON object with a 'data' list (TextVQA_0.5.1_val.json)")
    for i, ann in enumerate(data["data"]):
        require_fields(ann, ("question_id", "question", "image_id", "answers"), f"{path}: data[{i}]")
    return data["data"]


def score_textvqa(annotations: list[dict], answers: list[dict]) -> dict:
    """Accuracy (percent) of ``answers`` against TextVQA ``annotations`` (the ``data`` list)."""
    report = MatchReport(n_results=len(answers), n_annotations=len(annotations))
    by_qid = {qid_key(ann["question_id"]): ann for ann in annotations}
    by_image_question: dict[tuple[str, str], list[dict]] = {}
    for ann in annotations:
        by_image_question.setdefault((str(ann["image_id"]), ann["question"].lower()), []).append(ann)
    taken: dict[tuple[str, str], int] = {}

    # Answers are not indexed by question_id: in LLaVA's layout every question on
    # an image carries that image's id. Duplicates are judged per annotation.
    scored: dict[str, float] = {}  # annotation question_id -> score
    matched_by_image_question = 0
    for result in answers:
        key = qid_key(result["question_id"])
        if key in by_qid:
            ann = by_qid[key]
        else:
            image_question = (key, question_from_prompt(result.get("prompt", "")))
            group = by_image_question.get(image_question)
            if group is None:
                report.unknown_ids.append(key)
                continue
            # The same question asked twice about one image has two annotations:
            # successive results take them in order.
            used = taken.get(image_question, 0)
            taken[image_question] = used + 1
            ann = group[min(used, len(group) - 1)]
            matched_by_image_question += 1
        ann_id = qid_key(ann["question_id"])
        if ann_id in scored:
            report.duplicate_ids.append(ann_id)
        scored[ann_id] = vqa_accuracy(result["text"], ann["answers"], normalize=evalai_normalize)

    report.n_matched = len(scored)
    report.missing_ids = [qid_key(a["question_id"]) for a in annotations if qid_key(a["question_id"]) not in scored]
    scores = list(scored.values())
    return {
        "accuracy": percent(sum(scores), len(scores)),
        "n_scored": len(scores),
        "n_matched_by_image_question": matched_by_image_question,
        "report": report.to_dict(),
    }


def evaluate(result_file: str, annotation_file: str) -> dict:
    return score_textvqa(load_annotations(annotation_file), load_answers(result_file))


def main(argv=None) -> dict:
    parser = base_parser("TextVQA val accuracy (VQA soft accuracy, EvalAI normalisation).")
    parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")
    args = parser.parse_args(argv)
    metrics = evaluate(args.result_file, args.annotation_file)
    emit(metrics, args.output_json)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
