"""MME eval_tool files, with the flag and paths of LLaVA's convert_answer_to_mme.py (playground/data/eval/MME).

Run it, as the original, from the MME folder:

    cd playground/data/eval/MME && python /path/to/scripts/convert_answer_to_mme.py --experiment llava-v1.5-7b
    cd eval_tool && python calculation.py --results_dir answers/llava-v1.5-7b

reads   answers/<experiment>.jsonl                  (the answers)
        MME_Benchmark_release_version/              (the ground truth)
writes  eval_tool/answers/<experiment>/<subtask>.txt  (``<name>.txt<TAB>question<TAB>gt<TAB>answer`` lines)

(:func:`llava.eval.scoring.mme.evaluate`.) A complete
run gives the original's files. Unlike the original, every ground-truth question gets a line -- an unanswered
one with an empty answer, which calculation.py counts wrong, instead of shifted pairs or a missing subtask
file -- and an answer without ground truth is listed and skipped instead of stopping the script. The scores
calculation.py will print are printed here too.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llava.eval.scoring import mme  # noqa: E402
from llava.eval.scoring.report import emit, exit_code  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", type=str, required=True, help="answers/<experiment>.jsonl")
    args = parser.parse_args(argv)
    if not os.path.isdir("MME_Benchmark_release_version"):
        raise FileNotFoundError(f"MME_Benchmark_release_version not found in {os.getcwd()}: run this from the MME "
                                "folder (playground/data/eval/MME), as LLaVA's mme.sh does")
    result_dir = os.path.join("eval_tool", "answers", args.experiment)
    metrics = mme.evaluate(os.path.join("answers", f"{args.experiment}.jsonl"),
                           mme_dir="MME_Benchmark_release_version", eval_tool_dir=result_dir)
    emit(metrics, None)
    return metrics


if __name__ == "__main__":
    sys.exit(exit_code(main(sys.argv[1:])))
