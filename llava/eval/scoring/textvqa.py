"""TextVQA (val) accuracy.

Inputs
  annotation file  ``TextVQA_0.5.1_val.json``: ``{"data": [{"question_id", "question",
                   "image_id", "answers": [10 strings]}, ...]}``
  result file      answers jsonl (``question_id``, ``prompt``, ``text``, optional ``metadata.repeat``)

Score: the VQA soft accuracy (:func:`vqa_accuracy`) with the EvalAI answer processor
applied to the prediction and to each of the 10 answers, averaged over the *scored*
questions -- what LLaVA's ``llava/eval/eval_textvqa.py`` with MMF's
``TextVQAAccuracyEvaluator`` (``llava/eval/m4c_evaluator.py``) reports. An unanswered
question is left out of that mean, as LLaVA does; then ``partial`` is true and the
coverage line says how many were scored.

Matching, as LLaVA: its question file (``llava_textvqa_val_v051_ocr.jsonl``) stores the
*image id* in ``question_id`` and the question in the prompt, so a result is matched to the
annotation with the same (image_id, lower-cased question). :func:`question_from_prompt` is
LLaVA's ``prompt_processor``. A result that does not match that way but whose ``question_id``
is a TextVQA question id is matched by id (other runners' layout); anything else is an
unknown id (LLaVA raised KeyError / AssertionError there).

Repeats and duplicates. The image ids repeat in LLaVA's question file, so the eval runner
numbers the 2nd, 3rd, ... question with one id as ``metadata.repeat`` = 1, 2, ... (see
:func:`llava.eval.answers.record_key`); each repeat is its own question and is scored against its
own annotation:

* two lines with the same key (question id and repeat) are one question answered twice: the last
  line is kept and the key is reported as a duplicate;
* an (image, question) pair asked more than once (TextVQA has a few identical questions on
  one image under different question ids): the results, in repeat order, take the
  annotations in file order. LLaVA's dict kept only the last annotation of the pair and scored
  every such result against it; ``n_same_question_on_image`` counts the results concerned;
* more results than annotations for a pair: the later results replace the last annotation's
  score (reported as duplicates), so no annotation is ever scored twice. LLaVA scored each.
"""

from __future__ import annotations

import re
import sys

from ..answers import record_key
from .common import MatchReport, load_answers, percent, qid_key, read_json, require_fields
from .report import base_parser, emit, exit_code
from .vqa_normalize import evalai_normalize, vqa_accuracy

_OCR_PREFIX_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def question_from_prompt(prompt: str) -> str | None:
    """The question of a LLaVA TextVQA prompt, lower-cased; None for a layout LLaVA rejects.

    LLaVA's ``prompt_processor`` accepts exactly: ``OCR tokens: ... Question: q Short answer:``;
    three lines containing ``Reference OCR token: `` (the question is line 2 if the prompt starts with
    the tokens, else line 1); any two lines (the question is line 1).
    """
    if prompt.startswith("OCR tokens: "):
        match = _OCR_PREFIX_QUESTION.search(prompt)
        return match.group(1).lower() if match else None
    lines = prompt.split("\n")
    if "Reference OCR token: " in prompt and len(lines) == 3:
        return (lines[1] if prompt.startswith("Reference OCR token:") else lines[0]).lower()
    if len(lines) == 2:
        return lines[0].lower()
    return None


def load_annotations(path: str) -> list[dict]:
    data = read_json(path, role="TextVQA annotation file")
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{path}: expected a JSON object with a 'data' list (TextVQA_0.5.1_val.json)")
    for i, ann in enumerate(data["data"]):
        require_fields(ann, ("question_id", "question", "image_id", "answers"), f"{path}: data[{i}]")
    return data["data"]


def _repeat(result: dict) -> int:
    return (result.get("metadata") or {}).get("repeat", 0)


def match_results(annotations: list[dict], answers: list[dict], report: MatchReport) -> tuple[list, dict]:
    """Pair results with annotations (rules in the module docstring).

    Returns ``[(annotation, result, how)]`` in scoring order, ``how`` being "image_question" or
    "question_id", and ``{"same_question_on_image": n}``. Unknown and duplicate ids go to ``report``.
    """
    by_qid = {qid_key(ann["question_id"]): ann for ann in annotations}
    groups: dict[tuple[str, str], list[dict]] = {}
    for ann in annotations:
        groups.setdefault((str(ann["image_id"]), ann["question"].lower()), []).append(ann)

    latest: dict[str, dict] = {}  # record key -> last line with that key
    for result in answers:
        key = record_key(result)
        if key in latest:
            report.duplicate_ids.append(key)
        latest[key] = result

    pending: dict[tuple[str, str], list[dict]] = {}  # (image id, question) -> its results
    by_id: list[tuple[dict, dict, str]] = []
    for key, result in latest.items():
        question = question_from_prompt(result.get("prompt", ""))
        pair = (qid_key(result["question_id"]), question)
        if question is not None and pair in groups:
            pending.setdefault(pair, []).append(result)
        elif qid_key(result["question_id"]) in by_qid:
            by_id.append((by_qid[qid_key(result["question_id"])], result, "question_id"))
        else:
            report.unknown_ids.append(key)

    pairs = []
    same_question = 0
    for pair, results in pending.items():
        group = groups[pair]
        if len(group) > 1:
            same_question += len(results)
        # sorted() is stable: lines with equal repeats (different rounds) keep their file order.
        for i, result in enumerate(sorted(results, key=_repeat)):
            pairs.append((group[min(i, len(group) - 1)], result, "image_question"))
    return pairs + by_id, {"same_question_on_image": same_question}


def score_textvqa(annotations: list[dict], answers: list[dict]) -> dict:
    """Accuracy (percent) of ``answers`` against TextVQA ``annotations`` (the ``data`` list)."""
    report = MatchReport(n_results=len(answers), n_annotations=len(annotations))
    pairs, counts = match_results(annotations, answers, report)
    scored: dict[str, float] = {}  # annotation question_id -> score of the result kept
    for ann, result, _ in pairs:
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
        "n_matched_by_image_question": sum(how == "image_question" for _, _, how in pairs),
        "n_same_question_on_image": counts["same_question_on_image"],
        "partial": report.partial,
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
    sys.exit(exit_code(main(sys.argv[1:])))
