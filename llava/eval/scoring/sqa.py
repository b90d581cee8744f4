"""ScienceQA accuracy by option letter, with the IMG subset (SQA-IMG) and the usual breakdowns.

Inputs
  base dir     ``problems.json`` (pid -> problem with ``choices``, ``answer`` (index),
               ``hint``, ``image``, ``subject``, ``grade``) and ``pid_splits.json``
               (split name -> list of pids)
  result file  answers jsonl; ``question_id`` is the problem id

The algorithm is LLaVA's ``llava/eval/eval_science_qa.py`` (haotian-liu/LLaVA main,
commit ce1aa08 "Release evaluation scripts", unchanged in Theia-4869/FasterVLM):

* Letter parsing, on the raw answer text (no stripping, newlines kept), first rule that applies:
  1. the whole text is one of ``A`` .. ``E``;
  2. the text is at least 3 characters and starts with a letter ``A`` .. ``E`` then ``". "``;
  3. ``re.findall(r"The answer is ([A-Z]).")`` finds exactly one match -- note the unescaped
     ``.``: any one character (not a newline) must follow the letter, so a text *ending* in
     "The answer is B" fails, and two "The answer is" sentences fail even when they agree;
  otherwise the answer is ``FAILED``. So "A." / "A)" / " A" / "a" / "(A)" are all FAILED.
* A parsed letter scores only if it is within the problem's choices (``E`` on a 4-choice problem is
  wrong); index equal to the problem's ``answer`` is correct.
* A split problem without an answer counts as FAILED (wrong): the denominator is the whole split.
* Several answers with one id: the last one is used (a dict keyed by id); ids outside the split are
  ignored. Both are listed in the report here; LLaVA said nothing.

Departures from the LLaVA script (same numbers whenever the answers file is complete):
* ids are compared as strings (LLaVA compared raw json values, so int ids would all be missing);
* ``img_accuracy`` and the ``IMG`` breakdown use the problem's ``image`` field. LLaVA's
  ``IMG-Accuracy`` used ``'<image>' in prompt`` instead, so a *missing* image problem (prompt
  "Unknown") dropped out of its IMG denominator rather than counting as wrong. The
  ``llava.eval.eval_science_qa`` command line reproduces LLaVA's rule for its printed line and files.

Breakdowns (ScienceQA's own): subject NAT/SOC/LAN; context TXT (has a hint),
IMG (has an image), NO (neither); grade G1-6 / G7-12. ``img_accuracy`` is the
ScienceQA-IMG number LLaVA reports; ``accuracy`` is over the whole split.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

from .common import MatchReport, base_id, expand_repeats, index_by_id, load_answers, percent, qid_key, read_json
from .report import base_parser, emit, exit_code

OPTION_LETTERS = ("A", "B", "C", "D", "E")  # LLaVA's --options default
FAILED = "FAILED"  # LLaVA's parse result (and stand-in answer text) for "no letter"
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")  # the '.' is deliberately unescaped, as in LLaVA

SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}
GRADES_LOW = {f"grade{i}" for i in range(1, 7)}
GRADES_HIGH = {f"grade{i}" for i in range(7, 13)}


def extract_letter(text: str) -> str:
    """LLaVA's parse of a ScienceQA answer: a capital letter, or ``FAILED`` (rules in the module docstring)."""
    if text in OPTION_LETTERS:
        return text
    if len(text) >= 3 and text[0] in OPTION_LETTERS and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else FAILED


def letter_index(letter: str, n_choices: int) -> int:
    """0-based choice index of a parsed letter, -1 for FAILED or a letter past the last choice."""
    options = OPTION_LETTERS[:n_choices]
    return options.index(letter) if letter in options else -1


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


@dataclass
class Graded:
    """One split problem after parsing. ``answer`` is None when the problem has no answer."""

    pid: str
    problem: dict
    answer: dict | None
    text: str  # the answer text, or "FAILED" for a missing answer (as LLaVA writes it)
    letter: str  # parsed letter or "FAILED"
    pred_index: int  # -1 when wrong by construction
    correct: bool


def grade_split(problems: dict, split_ids: list, answers: list[dict]) -> tuple[list[Graded], MatchReport]:
    """Parse and judge every problem of the split, in split order (a pid repeated in the split counted once, as
    LLaVA's dict). A problem the runner asked more than once (``metadata.repeat``, a question file that repeats
    an id) counts once per asking, each answer judged against the problem (:func:`.common.expand_repeats`)."""
    report = MatchReport(n_results=len(answers))
    results = index_by_id(answers, report)
    split_ids = list(dict.fromkeys(qid_key(pid) for pid in split_ids))
    split_set = set(split_ids)
    report.unknown_ids = [key for key in results if base_id(key) not in split_set]
    split_keys = expand_repeats(split_ids, results)
    report.n_annotations = len(split_keys)
    graded = []
    for pid in split_keys:
        if base_id(pid) not in problems:
            raise ValueError(f"pid {base_id(pid)} is in pid_splits.json but not in problems.json")
        problem = problems[base_id(pid)]
        answer = results.get(pid)
        if answer is None:
            report.missing_ids.append(pid)
            text = FAILED
        else:
            text = answer["text"]
        letter = extract_letter(text)
        index = letter_index(letter, len(problem["choices"]))
        graded.append(Graded(pid, problem, answer, text, letter, index, index == problem["answer"]))
    report.n_matched = sum(g.answer is not None for g in graded)
    return graded, report


def score_sqa(problems: dict, split_ids: list, answers: list[dict]) -> dict:
    return summarize(*grade_split(problems, split_ids, answers))


def summarize(graded: list[Graded], report: MatchReport) -> dict:
    """Accuracy overall, on IMG and per breakdown group (percent); unanswered problems count as wrong."""
    counts: dict[str, list[int]] = {}  # group -> [correct, total]
    for g in graded:
        for group in ["all"] + problem_groups(g.problem):
            tally = counts.setdefault(group, [0, 0])
            tally[0] += g.correct
            tally[1] += 1

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
        "correct": counts.get("all", [0, 0])[0],
        # Answered but no letter read: scored wrong, like the missing ones.
        "n_unparsed": sum(g.answer is not None and g.letter == FAILED for g in graded),
        "partial": report.partial,
        "report": report.to_dict(),
    }


def load_split(base_dir: str, split: str, img_only: bool) -> tuple[dict, list]:
    problems = read_json(os.path.join(base_dir, "problems.json"), role="ScienceQA problems.json")
    splits = read_json(os.path.join(base_dir, "pid_splits.json"), role="ScienceQA pid_splits.json")
    if split not in splits:
        raise ValueError(f"split {split!r} not in {os.path.join(base_dir, 'pid_splits.json')} (has {sorted(splits)})")
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
    sys.exit(exit_code(main(sys.argv[1:])))
