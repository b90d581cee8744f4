"""GQA predictions file for GQA's eval.py, with the flags of LLaVA's scripts/convert_gqa_for_eval.py.

    python scripts/convert_gqa_for_eval.py --src answers/merge.jsonl --dst data/testdev_balanced_predictions.json

writes ``[{"questionId", "prediction"}]``, one entry per answer line in file order, the prediction being the
answer with trailing periods removed, lower-cased (:func:`llava.eval.scoring.gqa.predictions_list`).
GQA's own ``eval.py --tier testdev_balanced`` then scores it; ``python -m llava.eval.scoring.gqa`` gives the
same accuracy without it.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llava.eval.scoring.common import load_answers, write_json  # noqa: E402
from llava.eval.scoring.gqa import predictions_list  # noqa: E402


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=str, required=True, help="answers jsonl")
    parser.add_argument("--dst", type=str, required=True, help="testdev_balanced_predictions.json")
    args = parser.parse_args(argv)
    predictions = predictions_list(load_answers(args.src))
    write_json(args.dst, predictions, indent=None)
    print(f"{len(predictions)} predictions written to {args.dst}")
    return predictions


if __name__ == "__main__":
    main(sys.argv[1:])
