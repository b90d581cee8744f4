"""Answer a LLaVA question jsonl (``question_id``, ``image``, ``text``), e.g. MM-Vet's ``llava-mm-vet.jsonl``.

Same flags, answers file and resuming as :mod:`llava.eval.model_vqa_loader` (the shared loop is
:mod:`llava.eval.answering`); as LLaVA's ``model_vqa.py`` it allows long free-form answers (1024 new
tokens) and preprocesses in the main process unless ``--num-workers`` says otherwise::

    python -m llava.eval.model_vqa --model-path DIR --question-file llava-mm-vet.jsonl \\
        --image-folder images/ --answers-file answers.jsonl --visual-token-num 144 --temperature 0
"""

from __future__ import annotations

import sys

from llava.cli import run_cli
from llava.eval.answering import build_parser, parse_args, run
from llava.eval.questions import jsonl_questions


def main(argv=None) -> str:
    parser = build_parser(__doc__, max_new_tokens=1024)
    parser.set_defaults(num_workers=0)
    args = parse_args(parser, argv)
    questions, n_records = jsonl_questions(args.question_file, args.image_folder)
    return run(args, questions, n_records)


if __name__ == "__main__":
    sys.exit(run_cli(main))
