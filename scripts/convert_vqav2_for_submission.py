"""VQAv2 test-dev upload file, with the flags and paths of LLaVA's scripts/convert_vqav2_for_submission.py.

    python scripts/convert_vqav2_for_submission.py --split llava_vqav2_mscoco_test-dev2015 --ckpt llava-v1.5-7b

reads   <dir>/answers/<split>/<ckpt>/merge.jsonl          (the merged answers)
        <dir>/llava_vqav2_mscoco_test2015.jsonl           (every question the server expects)
writes  <dir>/answers_upload/<split>/<ckpt>.json          ([{"question_id", "answer"}], EvalAI-processed)

``--dir`` defaults to ./playground/data/eval/vqav2. Questions without an answer get "" as in the original;
the body is :func:`llava.eval.scoring.vqav2.submission`. When ``<dir>/<split>.jsonl`` exists (the questions that
were asked), coverage is counted against it.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llava.eval.scoring.common import load_answers, write_json  # noqa: E402
from llava.eval.scoring.report import emit, exit_code  # noqa: E402
from llava.eval.scoring.vqav2 import read_split, submission  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=str, default="./playground/data/eval/vqav2")
    parser.add_argument("--ckpt", type=str, required=True)
    parser.add_argument("--split", type=str, required=True)
    args = parser.parse_args(argv)

    src = os.path.join(args.dir, "answers", args.split, args.ckpt, "merge.jsonl")
    test_split = os.path.join(args.dir, "llava_vqav2_mscoco_test2015.jsonl")
    asked_file = os.path.join(args.dir, f"{args.split}.jsonl")
    dst = os.path.join(args.dir, "answers_upload", args.split, f"{args.ckpt}.json")

    answers = load_answers(src)
    questions = read_split(test_split, "VQAv2 test split")
    asked = [q["question_id"] for q in read_split(asked_file, "VQAv2 question file")] \
        if os.path.isfile(asked_file) else None
    print(f"total results: {len(answers)}, total split: {len(questions)}")
    entries, info = submission(questions, answers, asked)
    write_json(dst, entries, indent=None)
    metrics = {"upload_file": dst, "n_questions": len(entries), **info}
    emit(metrics, None)
    return metrics


if __name__ == "__main__":
    sys.exit(exit_code(main(sys.argv[1:])))
