"""ScienceQA accuracy by option letter, with the IMG subset (SQA-IMG) and the usual breakdowns.

Inputs
  base dir     ``problems.json`` (pid -> problem with ``choices``, ``answer`` (index),
               ``hint``, ``image``, ``subject``, ``grade``) and ``pid_splits.json``
               (split name -> list of pids)
  result file  answers jsonl; ``question_id`` is the problem id

Letter extraction follows LLaVA's ``eval_science_qa``: the answer text (newlines
read as ". ") is a bare letter, starts with "X. ", or contains "The answer is X"
(with the trailing period preferred). In addition a bare letter followed by one
period or parenthesis ("A." / "A)") is accepted; LLaVA scored those as failed.
A letter beyond the problem's choices counts as wrong.

Breakdowns (ScienceQA's own): subject NAT/SOC/LAN; context TXT (has a hint),
IMG (has an image), NO (neither); grade G1-6 / G7-12. ``img_accuracy`` is the
ScienceQA-IMG number LLaVA reports; ``accuracy`` is over the whole split.
"""

from __future__ import annotations

import os
import re
import sys

from .common import MatchReport, base_parser, emit, index_by_id, load_answers, percent, qid_key, read_json

OPTION_LETTERS = "ABCDE"
_LEADING_LETTER = re.compile(r"^([A-E])\. ")
_BARE_LETTER_PUNCT = re.compile(r"^([A-E])[.)]$")
_ANSWER_IS_PERIOD = re.compile(r"The answer is ([A-E])\.")
_ANSWER_IS = re.compile(r"The answer is ([A-E])")

SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
GRADES_LOW = {f"grade{i}" for i in range(1, 7)}
GRADES_HIGH = {f"grade{i}" for i in range(7, 13)}


def extract_letter(text: str) -> str | None:
    """Option letter of a ScienceQA answer, or None when none can be read."""
    text = text.replace("\n", ". ")
    stripped = text.strip()
    if len(stripped) == 1 and stripped in OPTION_LETTERS:
        return stripped
    match = _BARE_LETTER_PUNCT.match(stripped) or _LEADING_LETTER.match(text)
    if match:
        return match.group(1)
    match = _ANSWER_IS_PERIOD.search(text) or _ANSWER_IS.search(text)
    return match.group(1) if match else None


def predicted_index(text: str, n_choices: int) -> int:
    """0-based choice index, or -1 if no letter or a letter past the last choice."""
    letter = extract_letter(text)
    if letter is None or OPTION_LETTERS.index(letter) >= n_choices:
        return -1
    return OPTION_LETTERS.index(letter)


def problem_groups(problem: dict) -> list[str]:
    groups = []
    subject = SUBJECTS.get(problem.get("subject"))
    if subject:
        groups.append(subject)
    has_text, has_image = bool(problem.get("hint")), bool(problem.get("image"))
    if has_text:
        groups.append("TXT")
    if has_image:
        groups.append("IMG")
    if not has_text and not has_image:
        groups.append("NO")
    grade = problem.get("grade")
    if grade in GRADES_LOW:
        groups.append("G1-6")
    elif grade in GRADES_HIGH:
        groups.append("G7-12")
    return groups


def score_sqa(problems: dict, split_ids: list, answers: list[dict]) -> dict:
    report = MatchReport(n_results=len(answers), n_annotations=len(split_ids))
    results = index_by_id(answers, report)
    split_keys = [qid_key(pid) for pid in split_ids]
    split_set = set(split_keys)
    report.unknown_ids = [key for key in results if key not in split_set]
    counts: dict[str, list[int]] = {}  # group -> [correct, total]
    parse_failures = 0
    for pid in split_keys:
        if pid not in results:
            report.missing_ids.append(pid)
            continue
        if pid not in problems:
            raise ValueError(f"pid {pid} is in the split but not in problems.json")
        problem = problems[pid]
        pred = predicted_index(results[pid]["text"], len(problem["choices"]))
        parse_failures += pred == -1
        correct = int(pred == problem["answer"])
        for group in ["all"] + problem_groups(problem):
            tally = counts.setdefault(group, [0, 0])
            tally[0] += correct
            tally[1] += 1
    report.n_matched = counts.get("all", [0, 0])[1]

    def acc(group: str) -> float:
        correct, total = counts.get(group, (0, 0))
        return percent(correct, total)

    return {
        "accuracy": acc("all"),
        "img_accuracy": acc("IMG"),
        "subject": {name: acc(name) for name in ("NAT", "SOC", "LAN")},
        "context": {name: acc(name) for name in ("TXT", "IMG", "NO")},
        "grade": {name: acc(name) for name in ("G1-6", "G7-12")},
        "counts": {group: total for group, (_, total) in sorted(counts.items())},
        "n_unparsed": parse_failures,
        "report": report.to_dict(),
    }


def load_split(base_dir: str, split: str, img_only: bool) -> tuple[dict, list]:
    problems = read_json(os.path.join(base_dir, "problems.json"), role="ScienceQA problems.json")
    splits = read_json(os.path.join(base_dir, "pid_splits.json"), role="ScienceQA pid_splits.json")
    if split not in splits:
        raise ValueError(f"split {split!r} not in pid_splits.json (has {sorted(splits)})")
    split_ids = splits[split]
    if img_only:
        split_ids = [pid for pid in split_ids if problems.get(qid_key(pid), {}).get("image")]
    return problems, split_ids


def evaluate(result_file: str, base_dir: str, split: str = "test", img_only: bool = False) -> dict:
    problems, split_ids = load_split(base_dir, split, img_only)
    return score_sqa(problems, split_ids, load_answers(result_file))


def main(argv=None) -> dict:
    parser = base_parser("ScienceQA accuracy (overall, IMG subset, subject / context / grade).")
    parser.add_argument("--base-dir", required=True, help="directory with problems.json and pid_splits.json")
    parser.add_argument("--split", default="test")
    parser.add_argument("--img-only", action="store_true",
                        help="score only problems with an image (when the answers cover SQA-IMG only)")
    args = parser.parse_args(argv)
    metrics = evaluate(args.result_file, args.base_dir, args.split, args.img_only)
    emit(metrics, args.output_json)
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
