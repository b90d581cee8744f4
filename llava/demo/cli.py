"""`python -m llava.demo`: the flags, the run (model, images, every budget, figures) and its printed summary."""

from __future__ import annotations

import argparse
import sys
import textwrap
import time

from llava.cli import check_conv_mode, run_cli
from llava.demo import __doc__ as DEMO_DOC
from llava.demo.budgets import DemoResult, default_budgets, requested_budgets, run_image
from llava.demo.figure import draw_figure
from llava.demo.images import DEFAULT_QUERY, demo_images
from llava.demo.model import DEFAULT_MODEL_DIR, RANDOM_WEIGHTS_NOTE, load_quietly, resolve_model
from llava.demo.report import format_table
from llava.inference import answer, build_prompt, check_device, default_device, resolve_conv_mode
from llava.model.pruning import PruningConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llava.demo", description=DEMO_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-dir", default=None,
                   help="where the built demo model is cached (default: ~/.cache/fastervlm/tiny-llava-dinov2-smollm2, "
                        f"with --random-weights {DEFAULT_MODEL_DIR})")
    p.add_argument("--random-weights", action="store_true",
                   help="the tiny random-weight LLaVA-1.5-layout model instead of the tiny real one")
    p.add_argument("--rebuild", action="store_true", help="rebuild the demo model even if it is cached")
    p.add_argument("--model-path", default=None, help="a real LLaVA checkpoint directory instead of the tiny model")
    p.add_argument("--model-base", default=None, help="base LLM for a projector-only --model-path")
    p.add_argument("--vision-tower-path", default=None, help="local copy of the checkpoint's mm_vision_tower")
    p.add_argument("--image", default=None,
                   help="image file (default: scikit-image's chelsea and an easy-vqa test image; with "
                        "--random-weights scikit-image's astronaut)")
    p.add_argument("--query", default=None, help=f"question (default for --image: {DEFAULT_QUERY!r})")
    p.add_argument("--budgets", default=None,
                   help="visual tokens kept per crop, comma separated (default: all, 25%%, 10%%, 5%% of a crop's "
                        "tokens: 64,16,6,3 for the tiny real model, 576,144,58,29 for 576; --visual-token-num N: "
                        "the one budget N)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--output", default="outputs/demo_fastervlm.png", help="PNG to write (default: %(default)s)")
    PruningConfig.add_cli_args(p)
    p.add_argument("--conv-mode", default=None,
                   help="conversation template (default: the model's own, `conv_mode` in its config, else vicuna_v1)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def _say(msg: str) -> None:
    print(f"[demo] {msg}", file=sys.stderr, flush=True)


def _print_result(item, result: DemoResult) -> None:
    print()
    print(f"image: {item.label} {item.image.size[0]}x{item.image.size[1]}  ·  query: {item.query!r}"
          + (f"  ·  expected: {item.expected!r}" if item.expected else ""))
    print(format_table(result.rows))
    print(f"figure: {result.output}")


def _warm_up(model, tokenizer, image_processor, item, config, conv_mode: str, gen: dict) -> None:
    """One short generation at `config`, so that the first budget's time is not one-off start-up cost."""
    model.set_pruning(config)
    answer(model, tokenizer, image_processor, build_prompt(item.query, 1, conv_mode), [item.image],
           **{**gen, "max_new_tokens": 1})


def main(argv=None) -> DemoResult:
    """Run the demo; returns the first image's result (the others in `.more`)."""
    args = build_parser().parse_args(argv)
    # What can be checked without the model is checked before it is built or loaded.
    request = PruningConfig.from_args(args)
    budgets = requested_budgets(args.budgets, request.visual_token_num)
    if args.conv_mode is not None:
        check_conv_mode(args.conv_mode)
    check_device(args.device)
    images = demo_images(args, real_model=not args.random_weights and args.model_path is None)
    start = time.perf_counter()

    model_path, tower_path, model_label, random_weights = resolve_model(args, _say)
    device = args.device or default_device()
    tokenizer, model, image_processor, _ = load_quietly(model_path, args.model_base, device, request, tower_path)
    per_crop = model.pruning.tokens_per_crop
    budgets = budgets or default_budgets(per_crop)
    configs = [model.pruning.replace(visual_token_num=b) for b in budgets]  # all budgets checked before any run
    conv_mode = resolve_conv_mode(args.conv_mode, model.config)
    _say(f"model ready after {time.perf_counter() - start:.1f} s on {device}: {per_crop} visual tokens per crop")

    gen = dict(do_sample=False, num_beams=1, max_new_tokens=args.max_new_tokens, use_cache=True)
    _warm_up(model, tokenizer, image_processor, images[0], max(configs, key=lambda c: c.visual_token_num),
             conv_mode, gen)

    results = [run_image(model, tokenizer, image_processor, item, configs, conv_mode, gen, model_path,
                         random_weights, request.method) for item in images]
    print(f"FasterVLM demo: {model_label} ({model_path})")
    print(f"method: {request.method}, greedy, {args.max_new_tokens} new tokens max, {per_crop} visual tokens "
          f"per crop")
    for item, result in zip(images, results):
        draw_figure(result, item.query, model_label, result.output)
        _print_result(item, result)
    print()
    if random_weights:
        print(textwrap.fill(f"NOTE: {RANDOM_WEIGHTS_NOTE}. Drop --random-weights for the tiny real model, or pass "
                            "--model-path for a real LLaVA checkpoint.", 100))
    print(f"total: {time.perf_counter() - start:.1f} s")
    first = results[0]
    first.more = results[1:]
    return first


def cli(argv=None) -> int:
    """The command line: expected errors (bad path, image, budget, template) as one line and exit 1; --debug
    shows the traceback."""
    return run_cli(main, argv)
