"""Efficiency benchmark: what each pruning method buys at each visual-token budget.

    python -m llava.bench.efficiency --synthetic 7b --methods fastervlm,fastv,visionzip,vispruner \\
        --budgets 576,144,58,29 --new-tokens 32
    python -m llava.bench.efficiency --model-path DIR [--vision-tower-path DIR] ...
    python -m llava.bench.efficiency --synthetic tiny --repeats 1 --warmup 0     # smoke run
    python -m llava.bench.efficiency --synthetic video-7b --budgets 256,64,26   # Video-LLaVA-7B, 8 frames

`--synthetic video-7b / video-small / video-tiny` runs transformers' Video-LLaVA on one 8-frame video instead, pruned
per frame through `apply_pruning` (llava/bench/video.py; budgets are per frame, default 256,64,26).
`--synthetic onevision-7b / onevision-video-7b / qwen2.5-vl-7b / qwen2.5-vl-video-7b` (and -small / -tiny) run
transformers' LLaVA-OneVision or Qwen2.5-VL on a 1024x1024 image or an 8-frame video (llava/bench/native.py; budgets
per crop / pooled frame / image / frame pair, default every token and 75 / 90 / 95 % fewer; default methods the ones
that need no [CLS]: fastv, divprune, attention_received, random). Their towers have no [CLS] row, so vision_ms
is the model's own encoder (tower + projector or merger) and vision_plain_ms is n/a.

For one image and one LLaVA-style prompt, each (method, budget) is run end to end with greedy decoding of
`--new-tokens` tokens, and these are reported as the median over `--repeats` runs after `--warmup` runs (repeats are
interleaved over all cases, so drift in machine speed hits every case alike):

  vision_ms       the vision tower with [CLS] attention (ours), next to the same layers without it (vision_plain_ms);
                  3 alternating pairs per pass
  ttft_ms         time to first token: tower + selection + projector + splice + LLM prefill (+ argmax)
  prefill_ms      the LLM prefill alone
  decode_tok_s    tokens per second of the decode steps after the first token
  e2e_ms          time to first token + the decode steps
  prefill_gflops  analytic LLM prefill FLOPs (llava.bench.flops), and flops_bound = unpruned FLOPs / these
  kv_cache_mb     bytes held by the KV cache after generation (measured on the cache; FastV keeps K full layers)
  peak_mem_mb     peak memory above the weights during one run: CUDA allocator peak on GPU, process RSS peak on CPU
                  (sampled every 2 ms: coarse, the allocator keeps freed memory)

Every row also has its ratio to the unpruned model (`<metric>_ratio`), measured in the same session: FasterVLM at
the full budget keeps every token, which is vanilla LLaVA plus the [CLS] row. `prefill_speedup` is unpruned
prefill_ms / this prefill_ms, and `speedup_over_bound` = prefill_speedup / flops_bound (1 = as fast as FLOPs allow).
Timing uses CUDA events on GPU, `time.perf_counter` on CPU. Writes `<output-dir>/efficiency_<model>.csv` and `.png`.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from llava.bench.flops import LlamaShape
from llava.bench.measure import BASELINE, Case, ImageSubject, Inputs, benchmark
from llava.bench.native import NATIVE_SHAPES, build_native_subject
from llava.bench.report import format_table, plot, summarize, write_csv
from llava.bench.synthetic import SHAPES, build_synthetic_model, synthetic_inputs
from llava.bench.video import VIDEO_SHAPES, VideoSubject, build_video_model, video_inputs
from llava.conversation import conv_templates
from llava.mm_utils import load_image, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.model.pruning import METHODS

DEFAULT_METHODS = "fastervlm,fastv,visionzip,vispruner"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    threads = torch.get_num_threads()
    return f"CPU {cpu}, {threads} thread{'s' if threads != 1 else ''}"


def checkpoint_inputs(model, tokenizer, processor, device, dtype, image_path: str | None) -> Inputs:
    if image_path:
        image = load_image(image_path)
    else:
        rng = np.random.default_rng(0)
        image = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    conv = conv_templates["vicuna_v1"].copy()
    conv.append_message(conv.roles[0], "<image>\nWhat is shown in this image? Answer in detail.")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None].to(device)
    pixels = process_images([image], processor, model.config, anyres_mode=model.pruning.anyres_mode)
    pixels = pixels.to(device=device, dtype=dtype) if isinstance(pixels, torch.Tensor) else \
        [p.to(device=device, dtype=dtype) for p in pixels]
    return Inputs(ids, pixels, [image.size])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-path", help="a LLaVA checkpoint directory (liuhaotian layout)")
    source.add_argument("--synthetic", choices=[*SHAPES, *VIDEO_SHAPES, *NATIVE_SHAPES],
                        help="random weights in a LLaVA-1.5 shape (llava.bench.synthetic), video-*: a Video-LLaVA "
                             "shape with one 8-frame video (llava.bench.video), onevision-* / qwen2.5-vl-*: "
                             "LLaVA-OneVision / Qwen2.5-VL on one image or 8-frame video (llava.bench.native)")
    parser.add_argument("--vision-tower-path", default=None)
    parser.add_argument("--image", default=None, help="image for --model-path (default: random pixels)")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated (default {DEFAULT_METHODS}; onevision-* / qwen2.5-vl-*: "
                             f"the methods without [CLS])")
    parser.add_argument("--budgets", default=None,
                        help="visual tokens per crop / video frame (default 576,144,58,29; video: 256,64,26; "
                             "onevision-* / qwen2.5-vl-*: all, 75/90/95%% fewer per crop / frame / image)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per run (greedy)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fastv-layer", type=int, default=2, help="FastV's K (PruningConfig.llm_layer)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--dtype", default=None,
                        help="float16 / bfloat16 / float32 (default: fp16 on GPU, fp32 on CPU)")
    parser.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager"])
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--output-dir", default="outputs/efficiency")
    args = parser.parse_args(argv)
    if args.new_tokens < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--new-tokens and --repeats must be >= 1, --warmup >= 0")
    return args


def build_subject(args, device: torch.device, dtype: torch.dtype) -> tuple[str, object]:
    """(model name, what `benchmark` runs): a synthetic image or video shape, or a LLaVA checkpoint."""
    if args.synthetic in NATIVE_SHAPES:
        return f"synthetic-{args.synthetic}", build_native_subject(args.synthetic, device, dtype,
                                                                   args.attn_implementation)
    if args.synthetic in VIDEO_SHAPES:
        model = build_video_model(args.synthetic, device, dtype, args.attn_implementation)
        return f"synthetic-{args.synthetic}", VideoSubject(model, video_inputs(model, device, dtype))
    if args.synthetic:
        model = build_synthetic_model(args.synthetic, device, dtype, args.attn_implementation)
        return f"synthetic-{args.synthetic}", ImageSubject(model, synthetic_inputs(model, device, dtype))
    tokenizer, model, processor, _ = load_pretrained_model(
        args.model_path, device=str(device), dtype=dtype, vision_tower_path=args.vision_tower_path,
        attn_implementation=args.attn_implementation)
    inputs = checkpoint_inputs(model, tokenizer, processor, device, dtype, args.image)
    return Path(args.model_path).name, ImageSubject(model, inputs)


def parse_cases(args, subject) -> list[Case]:
    """The unpruned case, then every (method, budget) of the command line, checked."""
    methods = [m.strip() for m in (args.methods or getattr(subject, "default_methods", DEFAULT_METHODS)).split(",")
               if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; registered: {sorted(METHODS)}")
    budgets = [int(b) for b in (args.budgets or subject.default_budgets).split(",") if b.strip()]
    bad = [b for b in budgets if not 1 <= b <= subject.per_crop]
    if bad:
        raise SystemExit(f"budgets {bad} out of range: 1..{subject.per_crop} visual tokens per {subject.crop_name}")
    return [Case(BASELINE, subject.per_crop)] + [Case(m, b) for m in methods for b in budgets]


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    model_name, subject = build_subject(args, device, dtype)
    cases = parse_cases(args, subject)
    name = device_name(device)
    print(f"{model_name} on {name}: {len(cases)} cases x ({args.warmup} warm-up + {args.repeats} timed) runs")
    results, tower = benchmark(subject, cases, args.new_tokens, args.repeats, args.warmup, args.fastv_layer)
    rows = summarize(results, tower, LlamaShape.from_config(subject.llm_config), args.fastv_layer, args.new_tokens,
                     name, model_name)
    print(format_table(rows))
    out = Path(args.output_dir)
    csv_path, png_path = out / f"efficiency_{model_name}.csv", out / f"efficiency_{model_name}.png"
    write_csv(rows, csv_path)
    plot(rows, png_path)
    print(f"wrote {csv_path} and {png_path}")
    return rows

if __name__ == "__main__":
    main()
