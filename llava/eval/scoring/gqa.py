"""GQA testdev-balanced: exact-match accuracy, and the official predictions file.

Inputs
  question file  ``testdev_balanced_questions.json``: questionId -> {``answer``,
                 ``types``: {``structural``, ``semantic``, ...}, ``isBalanced``, ...}
  result file    answers jsonl; ``question_id`` is the GQA questionId

What the official pipeline does (LLaVA's ``scripts/v1_5/eval/gqa.sh``), and what we do:

* ``scripts/convert_gqa_for_eval.py`` (haotian-liu/LLaVA) turns every answer line into
  ``{"questionId": id, "prediction": text.rstrip('.').lower()}``: trailing periods off, then
  lower-cased, nothing else (no whitespace strip: "yes. " stays "yes. "). :func:`normalize_prediction`
  is exactly that.
* GQA's ``eval.py --tier testdev_balanced`` keeps one prediction per questionId (a later line
  replaces an earlier one; so do we, and report the id as duplicate), ignores predictions for ids
  that are not questions (we list them as unknown), scores only ``isBalanced`` questions, a prediction
  is right iff it equals ``answer`` (exact string match), "open" questions are the structural type
  ``query``, the rest "binary". Answers to unbalanced questions are ignored here too.
* A balanced question without a prediction makes ``eval.py`` stop ("missing predictions"): it only
  scores complete runs, over all balanced questions. Here an incomplete run is scored over the same
  denominator, a missing answer counting as wrong, so the number can only rise as the run completes;
  ``partial`` is true and ``accuracy_on_answered`` gives the accuracy over the answered questions.

``--predictions-file`` writes the official ``testdev_balanced_predictions.json`` (every answer line,
in file order, as the converter does).
"""

from __future__ import annotations

import sys

from .common import (MatchReport, base_id, expand_repeats, index_by_id, load_answers, percent, qid_key, read_json,
                     write_json)
from .report import base_parser, emit, exit_code


def normalize_prediction(text: str) -> str:
    """LLaVA's convert_gqa_for_eval: ``text.rstrip('.').lower()``."""
    return text.rstrip(".").lower()


def predictions_list(answers: list[dict]) -> list[dict]:
    """The official GQA predictions layout, one entry per answer line (file order)."""
    return [{"questionId": answer["question_id"], "prediction": normalize_prediction(answer["text"])}
            for answer in answers]


def _groups(question: dict) -> list[str]:
    """The tallies one balanced question counts in."""
    types = question.get("types", {})
    groups = ["all", "open" if types.get("structural") == "query" else "binary"]
    if "structural" in types:
        groups.append(f"structural/{types['structural']}")
    if "semantic" in types:
        groups.append(f"semantic/{types['semantic']}")
    return groups


def score_gqa(questions: dict, answers: list[dict]) -> dict:
    """Accuracy over every balanced question (missing = wrong), overall and per type.

    A question the runner asked more than once (``metadata.repeat``) counts once per asking, each answer
    against the same annotation (:func:`.common.expand_repeats`).
    """
    balanced = {qid_key(qid): q for qid, q in questions.items() if q.get("isBalanced", True)}
    report = MatchReport(n_results=len(answers))
    results = index_by_id(answers, report)
    # Answers to unbalanced questions are ignored (not scored), answers to no question at all are unknown.
    all_ids = {qid_key(qid) for qid in questions}
    report.unknown_ids = [key for key in results if base_id(key) not in all_ids]
    expected = expand_repeats(balanced, results)
    report.n_annotations = len(expected)
    tallies: dict[str, list[int]] = {}  # group -> [correct, questions]
    answered = [0, 0]
    for qid in expected:
        question = balanced[base_id(qid)]
        if qid in results:
            correct = normalize_prediction(results[qid]["text"]) == question["answer"]
            answered[0] += correct
            answered[1] += 1
        else:
            report.missing_ids.append(qid)
            correct = False
        for group in _groups(question):
            tally = tallies.setdefault(group, [0, 0])
            tally[0] += correct
            tally[1] += 1
    report.n_matched = answered[1]

    def acc(group: str) -> float:
        return percent(*tallies.get(group, (0, 0)))

    def by_prefix(prefix: str) -> dict:
        return {g[len(prefix):]: acc(g) for g in sorted(tallies) if g.startswith(prefix)}

    return {
        "accuracy": acc("all"),
        "binary": acc("binary"),
        "open": acc("open"),
        "structural": by_prefix("structural/"),
        "semantic": by_prefix("semantic/"),
        "partial": report.partial,
        "accuracy_on_answered": percent(*answered),
        "report": report.to_dict(),
    }


def evaluate(result_file: str, question_file: str, predictions_file: str | None = None) -> dict:
    questions = read_json(question_file, role="GQA question file")
    if not isinstance(questions, dict):
        raise ValueError(f"{question_file}: expected questionId -> question (testdev_balanced_questions.json)")
    answers = load_answers(result_file)
    metrics = score_gqa(questions, answers)
    if predictions_file:
        write_json(predictions_file, predictions_list(answers), indent=None)
        metrics["predictions_file"] = predictions_file
    return metrics


def main(argv=None) -> dict:
    parser = base_parser("GQA testdev-balanced exact-match accuracy.")
    parser.add_argument("--question-file", required=True, help="testdev_balanced_questions.json")
    parser.add_argument("--predictions-file", default=None,
                        help="also write [{questionId, prediction}] (testdev_balanced_predictions.json)")
    args = parser.parse_args(argv)
    metrics = evaluate(args.result_file, args.question_file, args.predictions_file)
    emit(metrics, args.output_json)
    return metrics


if __name__ == "__main__":
    sys.exit(exit_code(main(sys.argv[1:])))
