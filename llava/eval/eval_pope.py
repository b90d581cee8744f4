"""LLaVA's POPE command line, over :mod:`llava.eval.scoring.pope`::

    python llava/eval/eval_pope.py --annotation-dir coco --question-file llava_pope_test.jsonl \\
        --result-file answers.jsonl

Same flags and printed lines as Theia-4869/FasterVLM ``llava/eval/eval_pope.py`` (haotian-liu/LLaVA's plus
the last line). Per ``coco_pope_<category>.json``, in name order (LLaVA: ``os.listdir`` order)::

    Category: adversarial, # samples: 3000
    TP\\tFP\\tTN\\tFN\\t
    1270\\t66\\t1434\\t230
    Accuracy: 0.9013333333333333
    Precision: ...      (also Recall, F1 score, Yes ratio: fractions, Python's float repr)
    0.896, 0.901, 0.951, 0.847, 0.445        (F1, accuracy, precision, recall, yes-ratio, 3 decimals)
    ====================================

then ``Average F1 score: <mean of the categories' F1>``. Parsing, matching and the confusion counts are
the scorer's (see its docstring): ``# samples`` counts the answered questions of the category, each
once, joined to its own label (LLaVA zipped answers with label lines by position).

Additions: a ``coverage:`` line and ``WARNING:`` lines (unanswered, unknown, repeated ids, undefined
ratios printed as 0) at the end; a category without answers prints its sample count only and is left
out of the average (LLaVA divided by zero); the exit status is 1 when nothing was answered.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    # Run as a file: sys.path[0] is llava/eval, so the package root must be added for the imports below.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from llava.eval.scoring import pope  # noqa: E402
from llava.eval.scoring.report import exit_code, report_lines  # noqa: E402

SEPARATOR = "=" * 36


def category_lines(m: dict) -> list[str]:
    """LLaVA's ``eval_pope`` printout for one category's :func:`pope.binary_metrics`."""
    r = pope.llava_ratios(m)
    return [
        "TP\tFP\tTN\tFN\t",
        f"{m['TP']}\t{m['FP']}\t{m['TN']}\t{m['FN']}",
        f"Accuracy: {r['accuracy']}",
        f"Precision: {r['precision']}",
        f"Recall: {r['recall']}",
        f"F1 score: {r['f1']}",
        f"Yes ratio: {r['yes_ratio']}",
        "%.3f, %.3f, %.3f, %.3f, %.3f" % (r["f1"], r["accuracy"], r["precision"], r["recall"], r["yes_ratio"]),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="POPE metrics per category (LLaVA's eval_pope.py command line).")
    parser.add_argument("--annotation-dir", required=True, help="directory with coco_pope_<category>.json")
    parser.add_argument("--question-file", required=True, help="llava_pope_test.jsonl (carries the category)")
    parser.add_argument("--result-file", required=True, help="answers jsonl")
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    metrics = pope.evaluate(args.result_file, args.annotation_dir, args.question_file)
    f1_scores = []
    for category in pope.label_categories(args.annotation_dir):
        m = metrics.get(category)
        print(f"Category: {category}, # samples: {m['n'] if m else 0}")
        if m:
            for line in category_lines(m):
                print(line)
            f1_scores.append(pope.llava_ratios(m)["f1"])
            for what in m["undefined"]:
                print(f"WARNING: {category}: {what}, printed as 0")
        print(SEPARATOR)
    if f1_scores:
        print(f"Average F1 score: {sum(f1_scores) / len(f1_scores)}")
    for line in report_lines(metrics):
        print(line)
    return metrics


if __name__ == "__main__":
    sys.exit(exit_code(main(sys.argv[1:])))
