"""MM-Vet grader input, with the flags of LLaVA's scripts/convert_mmvet_for_eval.py.

    python scripts/convert_mmvet_for_eval.py --src answers/llava-v1.5-7b.jsonl --dst results/llava-v1.5-7b.json

writes ``{"v1_<question_id>": answer}`` (indent 2), answers verbatim (:func:`llava.eval.scoring.mmvet.submission`).
If ``mm-vet.json`` sits next to ``--src``'s folder (LLaVA's layout: mm-vet/answers/ and mm-vet/mm-vet.json), the ids
are checked against it and unanswered questions are listed: MM-Vet's grader stops on them.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llava.eval.scoring import mmvet  # noqa: E402
from llava.eval.scoring.report import emit, exit_code  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=str, required=True, help="answers jsonl")
    parser.add_argument("--dst", type=str, required=True, help="the json MM-Vet's grader reads")
    args = parser.parse_args(argv)
    known = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(args.src))), "mm-vet.json")
    metrics = mmvet.evaluate(args.src, args.dst, known if os.path.isfile(known) else None)
    emit(metrics, None)
    return metrics


if __name__ == "__main__":
    sys.exit(exit_code(main(sys.argv[1:])))
