"""LLaVA's ScienceQA command line, over :mod:`llava.eval.scoring.sqa`::

    python llava/eval/eval_science_qa.py --base-dir DIR --result-file answers.jsonl \\
        --output-file answers_output.jsonl --output-result answers_result.json [--split test]

Same flags, printed line and files as haotian-liu/LLaVA ``llava/eval/eval_science_qa.py`` (main branch,
also FasterVLM's): it prints ``Total: N, Correct: C, Accuracy: xx.xx%, IMG-Accuracy: yy.yy%`` and writes

* ``--output-file``: ``{"correct": [...], "incorrect": [...]}``, one entry per split problem with
  ``question_id``, ``parsed_ans`` (letter or "FAILED"), ``ground_truth`` (letter), ``question`` (the
  answer's prompt; "Unknown" when unanswered), ``pred`` (the answer text; "FAILED" when unanswered) and
  ``is_multimodal`` (``'<image>' in question``);
* ``--output-result``: ``{"acc", "correct", "count", "results": {pid: predicted index or -1},
  "outputs": {pid: answer text}}``;

both as ``json.dump(obj, f, indent=2)``. IMG-Accuracy is over the entries with ``is_multimodal``, LLaVA's
rule, so an unanswered image problem is not in its denominator (the scorer's ``img_accuracy`` counts it
wrong; the two agree on a complete answers file). Parsing and scoring are the scorer's; see its docstring.

Additions: a ``coverage:`` line and ``WARNING:`` lines (unanswered, unknown, repeated ids) follow the
LLaVA line; an accuracy over nothing prints ``n/a`` where LLaVA raised ZeroDivisionError, and the exit
status is 1 when nothing was answered.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

if __package__ in (None, ""):
    # Run as a file: sys.path[0] is llava/eval, so the package root must be added for the imports below.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from llava.atomic import atomic_write  # noqa: E402
from llava.eval.scoring import sqa  # noqa: E402
from llava.eval.scoring.common import load_answers  # noqa: E402
from llava.eval.scoring.report import exit_code, report_lines  # noqa: E402

UNKNOWN_PROMPT = "Unknown"  # what LLaVA records as the question of an unanswered problem


def analysis_entry(graded: sqa.Graded) -> dict:
    """One entry of the --output-file lists, keys in LLaVA's order."""
    prompt = UNKNOWN_PROMPT if graded.answer is None else graded.answer.get("prompt", "")
    return {
        "question_id": graded.pid,
        "parsed_ans": graded.letter,
        "ground_truth": sqa.OPTION_LETTERS[graded.problem["answer"]],
        "question": prompt,
        "pred": graded.text,
        "is_multimodal": "<image>" in prompt,
    }


def ratio_text(numerator: int, denominator: int) -> str:
    return f"{numerator / denominator * 100:.2f}%" if denominator else "n/a"


def summary_line(entries: dict[str, list[dict]]) -> str:
    """LLaVA's printed line from the correct / incorrect entry lists."""
    correct, total = len(entries["correct"]), len(entries["correct"]) + len(entries["incorrect"])
    img_correct = sum(e["is_multimodal"] for e in entries["correct"])
    img_total = img_correct + sum(e["is_multimodal"] for e in entries["incorrect"])
    return (f"Total: {total}, Correct: {correct}, Accuracy: {ratio_text(correct, total)}, "
            f"IMG-Accuracy: {ratio_text(img_correct, img_total)}")


def write_llava_json(path: str, obj: dict) -> None:
    """Byte-for-byte LLaVA's ``json.dump(obj, open(path, 'w'), indent=2)``, written atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="ScienceQA accuracy (LLaVA's eval_science_qa.py command line).")
    parser.add_argument("--base-dir", required=True, help="directory with problems.json and pid_splits.json")
    parser.add_argument("--result-file", required=True, help="answers jsonl")
    parser.add_argument("--output-file", required=True, help="per-problem analysis (correct / incorrect lists)")
    parser.add_argument("--output-result", required=True, help="acc, correct, count, results, outputs")
    parser.add_argument("--split", default="test")
    # LLaVA declared --options with type=list; only its default is meaningful, so only that is accepted.
    parser.add_argument("--options", type=list, default=list(sqa.OPTION_LETTERS))
    return parser


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if tuple(args.options) != sqa.OPTION_LETTERS:
        raise SystemExit(f"--options {''.join(args.options)}: only the default ABCDE is supported")
    problems, split_ids = sqa.load_split(args.base_dir, args.split, img_only=False)
    answers = load_answers(args.result_file)
    graded, report = sqa.grade_split(problems, split_ids, answers)
    metrics = sqa.summarize(graded, report)

    entries: dict[str, list[dict]] = {"correct": [], "incorrect": []}
    for g in graded:
        entries["correct" if g.correct else "incorrect"].append(analysis_entry(g))
    correct, total = len(entries["correct"]), len(graded)
    result = {
        "acc": correct / total * 100 if total else None,
        "correct": correct,
        "count": total,
        "results": {g.pid: g.pred_index for g in graded},
        "outputs": {g.pid: g.text for g in graded},
    }
    print(summary_line(entries))
    for line in report_lines(metrics):
        print(line)
    write_llava_json(args.output_file, entries)
    write_llava_json(args.output_result, result)
    return metrics


if __name__ == "__main__":
    sys.exit(exit_code(main(sys.argv[1:])))
