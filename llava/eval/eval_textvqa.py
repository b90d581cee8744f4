"""LLaVA's TextVQA command line, over :mod:`llava.eval.scoring.textvqa`::

    python -m llava.eval.eval_textvqa --annotation-file TextVQA_0.5.1_val.json --result-file answers.jsonl
    python -m llava.eval.eval_textvqa --annotation-file TextVQA_0.5.1_val.json --result-dir answers/

Same flags and printed lines as haotian-liu/LLaVA ``llava/eval/eval_textvqa.py``: per result file its
name without extension, ``Samples: N`` and ``Accuracy: xx.xx%`` then a blank line; ``--result-dir``
scores every ``*.jsonl`` in name order and prints ``Skipping <name>`` for the other files.
Matching and scoring are the scorer's (see its docstring); ``Samples`` is the number of questions
scored, each once (LLaVA counted result lines, repeated ones included).

Additions: after each file a ``coverage:`` line and ``WARNING:`` lines (unanswered, unknown, repeated
ids); the exit status is 1 when a result file scored nothing (LLaVA divided by zero or raised KeyError).
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):
    # Run as a file: sys.path[0] is llava/eval, so the package root must be added for the imports below.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from llava.eval.scoring import textvqa  # noqa: E402
from llava.eval.scoring.report import exit_code, report_lines  # noqa: E402


def eval_single(annotation_file: str, result_file: str) -> dict:
    """Score one result file and print LLaVA's lines, then coverage and warnings."""
    print(os.path.splitext(os.path.basename(result_file))[0])
    metrics = textvqa.evaluate(result_file, annotation_file)
    print(f"Samples: {metrics['n_scored']}\nAccuracy: {metrics['accuracy']:.2f}%\n")
    for line in report_lines(metrics):
        print(line)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="TextVQA val accuracy (LLaVA's eval_textvqa.py command line).")
    parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")
    parser.add_argument("--result-file", help="answers jsonl")
    parser.add_argument("--result-dir", help="score every *.jsonl in this directory")
    return parser


def main(argv=None) -> dict:
    """Returns ``{result file path: metrics}``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.result_file is None and args.result_dir is None:
        parser.error("give --result-file and/or --result-dir")
    scored = {}
    if args.result_file is not None:
        scored[args.result_file] = eval_single(args.annotation_file, args.result_file)
    if args.result_dir is not None:
        for name in sorted(os.listdir(args.result_dir)):
            if not name.endswith(".jsonl"):
                print(f"Skipping {name}")
                continue
            path = os.path.join(args.result_dir, name)
            scored[path] = eval_single(args.annotation_file, path)
    return scored


def cli_exit_code(scored: dict) -> int:
    """1 when any result file scored nothing (or there was none), else 0."""
    if not scored:
        print("ERROR: nothing was scored: no *.jsonl result file", file=sys.stderr)
        return 1
    return max(exit_code(metrics) for metrics in scored.values())


if __name__ == "__main__":
    sys.exit(cli_exit_code(main(sys.argv[1:])))
