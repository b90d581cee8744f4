"""easy-vqa (synthetic shapes, 13 one-word answers): exact-match accuracy, by question kind, next to the
majority-answer baseline.

Inputs
  question file  ``llava_easyvqa_test*.jsonl`` written by ``scripts/tiny/export_easyvqa.py``: one object per line
                 with ``question_id``, ``image``, ``text`` (the question), ``answer``, ``kind``
  result file    answers jsonl

A prediction is normalised before the comparison: lower-cased, surrounding whitespace and punctuation removed
(``"Yes."`` -> ``"yes"``); it is right iff it equals the gold answer. Question kinds: ``shape`` and ``color``
(open questions), ``yes/no`` and ``yes/no negated`` ("is there not a red shape?", "is no circle present?",
"does the image not contain ...").

``majority_baseline`` is the accuracy of always answering the most frequent gold answer of the scored questions.
"""

from __future__ import annotations

import string
import sys
from collections import Counter

from .common import (MatchReport, base_parser, emit, index_by_id, load_answers, percent, qid_key, read_jsonl,
                     require_fields)

COLORS = ("red", "green", "blue", "black", "gray", "teal", "brown", "yellow")
SHAPES = ("circle", "rectangle", "triangle")


def normalize(text: str) -> str:
    return text.strip().strip(string.punctuation + string.whitespace).lower()


def question_kind(question: str, answer: str) -> str:
    if answer in SHAPES:
        return "shape"
    if answer in COLORS:
        return "color"
    words = normalize(question).replace("?", "").split()
    return "yes/no negated" if ("not" in words or "no" in words) else "yes/no"


def score_easyvqa(questions: list[dict], answers: list[dict]) -> dict:
    report = MatchReport(n_results=len(answers), n_annotations=len(questions))
    results = index_by_id(answers, report)
    known = {qid_key(q["question_id"]) for q in questions}
    report.unknown_ids = [key for key in results if key not in known]
    tallies: dict[str, list[int]] = {}
    gold_counts: Counter = Counter()
    for q in questions:
        key = qid_key(q["question_id"])
        if key not in results:
            report.missing_ids.append(key)
            continue
        gold = normalize(q["answer"])
        gold_counts[gold] += 1
        right = normalize(results[key]["text"]) == gold
        for group in ("all", q.get("kind") or question_kind(q["text"], gold)):
            tally = tallies.setdefault(group, [0, 0])
            tally[0] += right
            tally[1] += 1
    report.n_matched = tallies.get("all", [0, 0])[1]
    majority, majority_n = gold_counts.most_common(1)[0] if gold_counts else ("", 0)
    return {
        "accuracy": percent(*tallies.get("all", (0, 0))),
        "by_kind": {k: percent(*v) for k, v in sorted(tallies.items()) if k != "all"},
        "questions_by_kind": {k: v[1] for k, v in sorted(tallies.items()) if k != "all"},
        "majority_answer": majority,
        "majority_baseline": percent(majority_n, report.n_matched),
        "report": report.to_dict(),
    }


def evaluate(result_file: str, question_file: str) -> dict:
    questions = read_jsonl(question_file, role="easy-vqa question file")
    for i, q in enumerate(questions, start=1):
        require_fields(q, ("question_id", "text", "answer"), f"{question_file}: question #{i}")
    return score_easyvqa(questions, load_answers(result_file))


def main(argv=None) -> dict:
    parser = base_parser("easy-vqa exact-match accuracy and the majority-answer baseline.")
    parser.add_argument("--question-file", required=True, help="llava_easyvqa_test*.jsonl (with answers)")
    args = parser.parse_args(argv)
    metrics = evaluate(args.result_file, args.question_file)
    emit(metrics, args.output_json)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
