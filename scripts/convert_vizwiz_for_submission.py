"""VizWiz test upload file, with the flags of LLaVA's scripts/convert_vizwiz_for_submission.py.

    python scripts/convert_vizwiz_for_submission.py --annotation-file llava_test.jsonl \\
        --result-file answers/llava-v1.5-7b.jsonl --result-upload-file answers_upload/llava-v1.5-7b.json

writes ``[{"image", "answer"}]`` in the order of the annotation file, answers EvalAI-processed
(:func:`llava.eval.scoring.vizwiz.submission`). Where the original stops on a question without an answer,
this writes "" for it and lists it.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llava.eval.scoring import vizwiz  # noqa: E402
from llava.eval.scoring.report import emit, exit_code  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", type=str, required=True, help="llava_test.jsonl")
    parser.add_argument("--result-file", type=str, required=True, help="answers jsonl")
    parser.add_argument("--result-upload-file", type=str, required=True, help="the upload json")
    args = parser.parse_args(argv)
    metrics = vizwiz.evaluate(args.result_file, args.annotation_file, args.result_upload_file)
    emit(metrics, None)
    return metrics


if __name__ == "__main__":
    sys.exit(exit_code(main(sys.argv[1:])))
