"""MMBench upload xlsx, with the flags and paths of LLaVA's scripts/convert_mmbench_for_submission.py.

    python scripts/convert_mmbench_for_submission.py --annotation-file mmbench_dev_20230712.tsv \\
        --result-dir answers/mmbench_dev_20230712 --upload-dir answers_upload/mmbench_dev_20230712 \\
        --experiment llava-v1.5-7b

reads ``<result-dir>/<experiment>.jsonl``, writes ``<upload-dir>/<experiment>.xlsx``: the tsv's rows without the
hint, category, source, image, comment and l2-category columns, ``prediction`` after ``D``
(:func:`llava.eval.scoring.mmbench.write_submission_xlsx`). On a split with answers (dev) it also prints the
local circular accuracy. The upload folder is created if needed.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llava.eval.scoring import mmbench  # noqa: E402
from llava.eval.scoring.report import emit, exit_code  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotation-file", type=str, required=True, help="the MMBench tsv")
    parser.add_argument("--result-dir", type=str, required=True, help="folder of <experiment>.jsonl")
    parser.add_argument("--upload-dir", type=str, required=True, help="folder for <experiment>.xlsx")
    parser.add_argument("--experiment", type=str, required=True)
    args = parser.parse_args(argv)
    result_file = os.path.join(args.result_dir, f"{args.experiment}.jsonl")
    upload_file = os.path.join(args.upload_dir, f"{args.experiment}.xlsx")
    metrics = mmbench.evaluate(result_file, args.annotation_file, upload_file)
    emit(metrics, None)
    return metrics


if __name__ == "__main__":
    sys.exit(exit_code(main(sys.argv[1:])))
