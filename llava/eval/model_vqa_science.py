"""Answer ScienceQA in LLaVA's format (``llava_test_CQM-A.json``).

The question file is a JSON list; each entry has ``id``, ``conversations`` (the first turn's
``value`` is the question: context, question and options) and, for questions with a picture,
``image`` (relative to ``--image-folder``). Text-only questions are asked without an image.
``--single-pred-prompt`` appends LLaVA's "Answer with the option's letter from the given
choices directly." (what the published numbers use)::

    python -m llava.eval.model_vqa_science --model-path DIR --question-file llava_test_CQM-A.json \\
        --image-folder images/test --answers-file answers.jsonl --single-pred-prompt \\
        --visual-token-num 144 --temperature 0

Flags, answers file and resuming as :mod:`llava.eval.model_vqa_loader` (the loop: :mod:`llava.eval.answering`).
"""

from __future__ import annotations

import os
import sys

from llava.cli import run_cli
from llava.constants import DEFAULT_IMAGE_TOKEN
from llava.eval.answering import build_parser, parse_args, run
from llava.eval.questions import ImageRef, Question, require_image_folder
from llava.eval.scoring.common import read_json

SINGLE_PRED_PROMPT = "Answer with the option's letter from the given choices directly."


def read_problems(path: str) -> list[dict]:
    path = os.path.expanduser(path)
    problems = read_json(path, role="question file")
    if not isinstance(problems, list):
        raise ValueError(f"{path}: expected a JSON list of questions (LLaVA's ScienceQA format)")
    for i, problem in enumerate(problems):
        if not isinstance(problem, dict) or "id" not in problem or not problem.get("conversations"):
            raise ValueError(f"{path}: entry #{i} needs 'id' and 'conversations'")
    return problems


def science_questions(args) -> tuple[list[Question], int]:
    problems = read_problems(args.question_file)
    folder = None
    if any("image" in p for p in problems):
        folder = require_image_folder(args.image_folder)
    questions = []
    for i, problem in enumerate(problems):
        query = problem["conversations"][0]["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
        shown = query
        image = None
        if "image" in problem:
            image = ImageRef(path=os.path.join(folder, problem["image"]))
            shown = DEFAULT_IMAGE_TOKEN + "\n" + shown
        if args.single_pred_prompt:
            query += "\n" + SINGLE_PRED_PROMPT
            shown += "\n" + SINGLE_PRED_PROMPT
        questions.append(Question(problem["id"], query, shown, image, source=i))
    return questions, len(problems)


def main(argv=None) -> str:
    parser = build_parser(__doc__, max_new_tokens=1024)
    parser.add_argument("--single-pred-prompt", action="store_true",
                        help=f"append {SINGLE_PRED_PROMPT!r} to every question")
    args = parse_args(parser, argv)
    questions, n_records = science_questions(args)
    return run(args, questions, n_records, prompt_options={"single_pred_prompt": bool(args.single_pred_prompt)})


if __name__ == "__main__":
    sys.exit(run_cli(main))
