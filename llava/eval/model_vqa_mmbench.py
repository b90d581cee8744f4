"""Answer MMBench / MMBench-CN from the benchmark's tsv (images inline as base64).

Each tsv row has ``index``, ``question``, optional ``hint``, options ``A``..``D`` (the first
blank one ends the list) and ``image`` (base64). The prompt is the hint, the question and one
"X. option" line per option; ``--single-pred-prompt`` appends LLaVA's instruction to answer
with the letter (``--lang cn``: its Chinese version).

Circular evaluation: with ``--all-rounds`` every question is asked once per option, round r
showing the options rotated left by r under the letters A, B, ... (the letter shown at
position i is original option (i + r) mod n). Each round is one answer line with
``question_id`` = the row's ``index``, ``round_id`` = r, and the shown ``options`` /
``option_char``. Without it only round 0 is asked (the tsv's own rotated copies, if any, are
rows of their own)::

    python -m llava.eval.model_vqa_mmbench --model-path DIR --question-file mmbench_dev_20230712.tsv \\
        --answers-file answers.jsonl --single-pred-prompt --visual-token-num 144 --temperature 0

Flags, answers file and resuming as :mod:`llava.eval.model_vqa_loader`; ``--image-folder`` is unused.
"""

from __future__ import annotations

import csv
import os
import sys

from llava.cli import run_cli
from llava.eval.answering import build_parser, parse_args, run
from llava.eval.questions import ImageRef, Question
from llava.eval.scoring.mmbench import LETTERS, is_blank, row_options  # the scorer reads the tsv the same way

INSTRUCTIONS = {
    "en": "Answer with the option's letter from the given choices directly.",
    "cn": "请直接回答选项字母。",
}


def read_tsv(path: str) -> list[tuple[int, dict]]:
    """(line number, row) for every row; the ``index`` becomes an int."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"question file not found: {path}")
    csv.field_size_limit(2**31 - 1)  # a base64 image is far longer than csv's default field limit
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = [c for c in ("index", "question", "A", "B", "image") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not an MMBench tsv, no column(s) {missing} (has {reader.fieldnames})")
        for row in reader:
            line_no = reader.line_num
            try:
                row["index"] = int(float(row["index"]))
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{line_no}: index {row['index']!r} is not a number") from None
            if is_blank(row["image"]):
                raise ValueError(f"{path}:{line_no}: question {row['index']} has no image")
            rows.append((line_no, row))
    return rows


def round_question(row: dict, options: list[str], round_id: int) -> tuple[str, list[str], list[str]]:
    """(question text, shown options, shown letters' original letters) for one rotation."""
    n = len(options)
    shown = options[round_id:] + options[:round_id]
    chars = list(LETTERS[:n][round_id:] + LETTERS[:n][:round_id])
    text = str(row["question"])
    if not is_blank(row.get("hint")):
        text = f"{row['hint']}\n{text}"
    for letter, option in zip(LETTERS, shown):
        text += f"\n{letter}. {option}"
    return text, shown, chars


def mmbench_questions(args) -> tuple[list[Question], int]:
    rows = read_tsv(args.question_file)
    instruction = INSTRUCTIONS[args.lang]
    questions = []
    for i, (line_no, row) in enumerate(rows):
        options = row_options(row)
        if len(options) < 2:
            raise ValueError(f"{args.question_file}:{line_no}: question {row['index']} has fewer than 2 options")
        image = ImageRef(b64=row["image"])
        for round_id in range(len(options) if args.all_rounds else 1):
            text, shown, chars = round_question(row, options, round_id)
            query = f"{text}\n{instruction}" if args.single_pred_prompt else text
            extra = {"round_id": round_id, "options": shown, "option_char": chars}
            questions.append(Question(row["index"], query, text, image, extra=extra, source=i))
    return questions, len(rows)


def main(argv=None) -> str:
    parser = build_parser(__doc__, max_new_tokens=1024)
    parser.add_argument("--all-rounds", action="store_true", help="ask every rotation of the options (circular eval)")
    parser.add_argument("--single-pred-prompt", action="store_true", help="ask for the option letter only")
    parser.add_argument("--lang", default="en", choices=sorted(INSTRUCTIONS), help="language of that instruction")
    args = parse_args(parser, argv)
    questions, n_records = mmbench_questions(args)
    options = {"all_rounds": bool(args.all_rounds), "single_pred_prompt": bool(args.single_pred_prompt),
               "lang": args.lang}
    return run(args, questions, n_records, prompt_options=options)


if __name__ == "__main__":
    sys.exit(run_cli(main))
