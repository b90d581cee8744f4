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

``majority_baseline`` is the accuracy of always answering the most frequent gold answer.

easy-vqa has no official scorer; its rules are the ones ScienceQA's official script uses for incomplete runs:
every question of the question file is in the denominator and a question without an answer counts as wrong
(``partial`` is then true, ``accuracy_on_answered`` is the accuracy over the answered ones); answers to ids that
are not in the question file are listed as unknown; a repeated id keeps its last answer and is listed.
"""

from __future__ import annotations

import string
import sys
from collections import Counter

from .common import MatchReport, index_by_id, load_answers, numbered_keys, percent, read_jsonl, require_fields
from .report import base_parser, emit, exit_code

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
    """Exact match after :func:`normalize` over every question (missing = wrong), overall and by kind."""
    report = MatchReport(n_results=len(answers), n_annotations=len(questions))
    results = index_by_id(answers, report)
    # The k-th question with one id is answered by the line with metadata.repeat k (as the runner asks them).
    keys = numbered_keys(q["question_id"] for q in questions)
    known = set(keys)
    report.unknown_ids = [key for key in results if key not in known]
    tallies: dict[str, list[int]] = {}  # group -> [right, questions]
    gold_counts: Counter = Counter()
    answered = [0, 0]
    for key, q in zip(keys, questions):
        gold = normalize(q["answer"])
        gold_counts[gold] += 1
        right = False
        if key in results:
            right = normalize(results[key]["text"]) == gold
            answered[0] += right
            answered[1] += 1
        else:
            report.missing_ids.append(key)
        for group in ("all", q.get("kind") or question_kind(q["text"], gold)):
            tally = tallies.setdefault(group, [0, 0])
            tally[0] += right
            tally[1] += 1
    report.n_matched = answered[1]
    majority, majority_n = gold_counts.most_common(1)[0] if gold_counts else ("", 0)
    return {
        "accuracy": percent(*tallies.get("all", (0, 0))),
        "by_kind": {k: percent(*v) for k, v in sorted(tallies.items()) if k != "all"},
        "questions_by_kind": {k: v[1] for k, v in sorted(tallies.items()) if k != "all"},
        "majority_answer": majority,
        "majority_baseline": percent(majority_n, len(questions)),
        "partial": report.partial,
        "accuracy_on_answered": percent(*answered),
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
    sys.exit(exit_code(main(sys.argv[1:])))
