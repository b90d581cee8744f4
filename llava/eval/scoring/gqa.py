"""GQA testdev-balanced: exact-match accuracy, and the official predictions file.

Inputs
  question file  ``testdev_balanced_questions.json``: questionId -> {``answer``,
                 ``types``: {``structural``, ``semantic``, ...}, ``isBalanced``, ...}
  result file    answers jsonl; ``question_id`` is the GQA questionId

A prediction is the answer text with trailing periods removed and lower-cased
(LLaVA's ``convert_gqa_for_eval``; surrounding whitespace is stripped first) and
is right iff it equals the gold answer. As in GQA's ``eval.py``, only balanced
questions count; "open" questions are the structural type ``query``, all other
types are "binary".

``--predictions-file`` writes ``[{"questionId", "prediction"}]`` for GQA's own
``eval.py`` (``testdev_balanced_predictions.json``).
"""

from __future__ import annotations

import sys

from .common import (MatchReport, base_parser, emit, index_by_id, load_answers, percent, qid_key,
                     read_json, write_json)


def normalize_prediction(text: str) -> str:
    return text.strip().rstrip(".").lower()


def predictions_list(answers: list[dict]) -> list[dict]:
    """The official GQA predictions layout, one entry per answer."""
    return [{"questionId": answer["question_id"], "prediction": normalize_prediction(answer["text"])}
            for answer in answers]


def score_gqa(questions: dict, answers: list[dict]) -> dict:
    balanced = {qid_key(qid): q for qid, q in questions.items() if q.get("isBalanced", True)}
    report = MatchReport(n_results=len(answers), n_annotations=len(balanced))
    results = index_by_id(answers, report)
    report.unknown_ids = [key for key in results if key not in balanced]
    tallies: dict[str, list[int]] = {}

    def add(group: str, correct: bool) -> None:
        tally = tallies.setdefault(group, [0, 0])
        tally[0] += correct
        tally[1] += 1

    for qid, question in balanced.items():
        if qid not in results:
            report.missing_ids.append(qid)
            continue
        correct = normalize_prediction(results[qid]["text"]) == question["answer"]
        types = question.get("types", {})
        add("all", correct)
        add("open" if types.get("structural") == "query" else "binary", correct)
        if "structural" in types:
            add(f"structural/{types['structural']}", correct)
        if "semantic" in types:
            add(f"semantic/{types['semantic']}", correct)
    report.n_matched = tallies.get("all", [0, 0])[1]

    def acc(group: str) -> float:
        correct, total = tallies.get(group, (0, 0))
        return percent(correct, total)

    def by_prefix(prefix: str) -> dict:
        return {g[len(prefix):]: acc(g) for g in sorted(tallies) if g.startswith(prefix)}

    return {
        "accuracy": acc("all"),
        "binary": acc("binary"),
        "open": acc("open"),
        "structural": by_prefix("structural/"),
        "semantic": by_prefix("semantic/"),
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
    main(sys.argv[1:])
