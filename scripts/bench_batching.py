"""Throughput of batched evaluation (`--batch-size N`) against batch size 1, measured side by side in one run.

    python scripts/bench_batching.py --model-path DIR --question-file Q.jsonl --image-folder IMAGES \
        --visual-token-num 58 --batch-sizes 1,8 --limit 64

Without --model-path / --question-file it uses the tiny real LLaVA (llava/model/tiny_real.py) on the fixed
500-question easy-vqa subset (exported on first use). The same questions are answered at every batch size through
the eval loop's own dataset and `generate_batch`; the script prints questions/s, the speedup over batch 1 and whether
the greedy answers are identical. Model loading and image decoding are outside the timed region.
"""

from __future__ import annotations

import os
import sys
import time
from importlib import import_module
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llava.eval.answering import QuestionDataset, build_parser, parse_args  # noqa: E402
from llava.eval.questions import jsonl_questions  # noqa: E402
from llava.inference import generate_batch, generation_kwargs, load_from_args  # noqa: E402
from llava.model.tiny_real import ensure_tiny_llava  # noqa: E402


def default_inputs(argv: list[str]) -> list[str]:
    """Point at the tiny real model and the easy-vqa subset when the user named neither."""
    if "--model-path" not in argv:
        argv += ["--model-path", str(ensure_tiny_llava()), "--conv-mode", "smollm2_short"]
    if "--question-file" not in argv:
        root = REPO / "playground" / "data" / "eval"
        qfile = root / "easyvqa_500" / "llava_easyvqa_500_test.jsonl"
        if not qfile.is_file():
            sys.path.insert(0, str(REPO / "scripts" / "tiny"))
            import_module("export_easyvqa").export(root)
        argv += ["--question-file", str(qfile), "--image-folder", str(root / "easyvqa" / "images")]
    return argv


def timed_answers(model, tokenizer, dataset, batch_size: int, gen_kwargs: dict) -> tuple[list[str], float]:
    samples = [dataset[i] for i in range(len(dataset))]  # preprocessing is not what batching speeds up
    texts, start = [], time.perf_counter()
    for i in range(0, len(samples), batch_size):
        texts += [t for t, _ in generate_batch(model, tokenizer, samples[i:i + batch_size], gen_kwargs)]
    return texts, time.perf_counter() - start


def main(argv=None) -> list[dict]:
    parser = build_parser(__doc__)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--limit", type=int, default=64, help="questions answered at each batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    argv = default_inputs(list(sys.argv[1:] if argv is None else argv) + ["--answers-file", os.devnull])
    args = parse_args(parser, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.temperature > 0:
        args.temperature = 0.0  # identical answers across batch sizes need greedy decoding
    questions, _ = jsonl_questions(args.question_file, args.image_folder)
    questions = questions[: args.limit]
    tokenizer, model, image_processor, _ = load_from_args(args)
    dataset = QuestionDataset(questions, tokenizer, image_processor, model.config, args.conv_mode,
                              anyres_mode=model.pruning.anyres_mode)
    gen_kwargs = generation_kwargs(args)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    timed_answers(model, tokenizer, dataset, max(sizes), gen_kwargs)  # warm-up
    rows, reference = [], None
    for size in sizes:
        texts, seconds = timed_answers(model, tokenizer, dataset, size, gen_kwargs)
        reference = reference or texts
        rows.append({"batch_size": size, "seconds": seconds, "questions_per_s": len(texts) / seconds,
                     "same_answers": texts == reference})
    base = rows[0]["questions_per_s"]
    print(f"device {args.device}, threads {torch.get_num_threads()}, {len(questions)} questions, "
          f"visual tokens {model.pruning.visual_token_num}/{model.pruning.tokens_per_crop}, model {args.model_path}")
    print(f"{'batch':>5}  {'seconds':>8}  {'q/s':>7}  {'vs batch ' + str(sizes[0]):>11}  same answers")
    for r in rows:
        print(f"{r['batch_size']:>5}  {r['seconds']:>8.2f}  {r['questions_per_s']:>7.2f}  "
              f"{r['questions_per_s'] / base:>10.2f}x  {r['same_answers']}")
    return rows


if __name__ == "__main__":
    main()
