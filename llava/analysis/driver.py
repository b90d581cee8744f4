"""What both analyses share around their statistics: the command line, the run over this chunk's samples, the
statistics files (one per run or per chunk, merged by `--replot --num-chunks N`) and `run_analysis`.

An analysis (`llava.analysis.shift`, `llava.analysis.dispersion`) is an `AnalysisSpec`: which rows and layers it
captures, how it accumulates them over samples and merges chunks, and how it draws and summarises the result.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from llava.analysis.capture import capture_image_attention
from llava.analysis.samples import (
    prefill_inputs,
    read_samples,
    refuse_pruning,
    refuse_unsupported_checkpoint,
    report_missing,
)
from llava.atomic import atomic_path, atomic_write
from llava.eval.answering import QuestionDataset
from llava.eval.questions import chunk_questions
from llava.inference import add_model_args, load_from_args
from llava.mm_utils import get_model_name_from_path


@dataclass
class AnalysisSpec:
    """What one analysis contributes to :func:`run_analysis`.

    name:        stem of its files (`<name>.pt`, `<name>.png`, `<name>_summary.json`).
    queries:     FROM_IMAGE or LAST (rows of :func:`capture_image_attention`).
    layers:      (args, number of LLM layers) -> 0-based layer indices to capture.
    accumulator: (args, model) -> object with `add(sample_id, cls_attn (P,), blocks {layer: (R, P)})` and
                 `stats() -> dict` (tensors and plain values: what is saved).
    merge:       list of chunk stats dicts (chunk order) -> one stats dict.
    plot:        (stats, folder, args) -> written PNG paths.
    summarize:   (stats, args) -> (summary dict, one headline line).
    """

    name: str
    queries: str
    layers: Callable[[argparse.Namespace, int], list[int]]
    accumulator: Callable[[argparse.Namespace, Any], Any]
    merge: Callable[[list[dict]], dict]
    plot: Callable[[dict, str, argparse.Namespace], list[str]]
    summarize: Callable[[dict, argparse.Namespace], tuple[dict, str]]


# --------------------------------------------------------------------------- files


def stats_path(folder: str, name: str, num_chunks: int = 1, chunk_idx: int = 0) -> str:
    """`<name>.pt` for a whole run, `<name>.chunk<K>-of-<N>.pt` for chunk K of N."""
    suffix = f".chunk{chunk_idx}-of-{num_chunks}" if num_chunks > 1 else ""
    return os.path.join(folder, f"{name}{suffix}.pt")


def save_stats(stats: dict, path: str) -> None:
    """torch.save through a fsynced temporary file and a rename (:func:`llava.atomic.atomic_path`), so a killed
    or failed run never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save(stats, tmp)


def load_stats(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved statistics at {path}: run the analysis first (without --replot)")
    return torch.load(path, map_location="cpu", weights_only=True)


def write_json(data: dict, path: str) -> None:
    with atomic_write(path) as f:
        json.dump(data, f, indent=2)
        f.write("\n")


# --------------------------------------------------------------------------- command line


def build_parser(description: str) -> argparse.ArgumentParser:
    """The original flags (`--model-path --question-file --image-folder --output-folder --visual-token-num
    --temperature --conv-mode --num-chunks --chunk-idx`) plus `--replot`, `--skip-missing`, `--num-workers`."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, model_path_required=False)  # --replot redraws from the saved statistics: no model
    parser.add_argument("--question-file", default="./playground/data/analysis/llava_v1_5_mix1k.jsonl")
    parser.add_argument("--image-folder", default="./playground/data/train")
    parser.add_argument("--output-folder", required=True)
    parser.add_argument("--num-chunks", type=int, default=1,
                        help="split the samples into this many chunks (one process per GPU); merge with --replot")
    parser.add_argument("--chunk-idx", type=int, default=0, help="analyse only this chunk (0-based)")
    parser.add_argument("--replot", action="store_true",
                        help="redraw the figures and summary from the saved statistics (with --num-chunks N: "
                             "merge the N chunk files first); the model is not loaded")
    parser.add_argument("--skip-missing", action="store_true",
                        help="analyse the samples whose image exists (default: stop and list the missing ones)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers for image preprocessing (default: 4 on GPU, 0 on CPU)")
    parser.add_argument("--chunk-rows", type=int, default=128,
                        help="query rows per attention chunk inside a layer (memory vs. speed)")
    return parser


def fraction(text: str) -> float:
    """argparse type of the summaries' fractions (`--tail-fraction`, `--top-fraction`): a number in (0, 1]."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.num_chunks < 1 or not 0 <= args.chunk_idx < args.num_chunks:
        parser.error(f"--chunk-idx must be in [0, --num-chunks); got {args.chunk_idx} of {args.num_chunks}")
    if not args.replot and not args.model_path:
        parser.error("--model-path is required (except with --replot)")
    if args.chunk_rows < 1:
        parser.error("--chunk-rows must be at least 1")
    return args


# --------------------------------------------------------------------------- running


def _collate(samples):
    return samples


def _my_samples(args: argparse.Namespace) -> tuple[list, list]:
    """This chunk's samples whose image exists, and those skipped for a missing image."""
    questions = read_samples(args.question_file, args.image_folder)
    mine = chunk_questions(questions, len(questions), args.num_chunks, args.chunk_idx)
    if not mine:
        raise ValueError(f"chunk {args.chunk_idx} of {args.num_chunks} holds no samples "
                         f"({len(questions)} in {args.question_file}); use fewer chunks")
    missing = report_missing(mine, args.skip_missing)
    skipped = {id(q) for q in missing}
    return [q for q in mine if id(q) not in skipped], missing


def collect(args: argparse.Namespace, spec: AnalysisSpec) -> dict:
    """Run the model over this chunk's samples and return the accumulated statistics."""
    todo, missing = _my_samples(args)
    refuse_unsupported_checkpoint(args.model_path)
    tokenizer, model, image_processor, _ = load_from_args(args)
    refuse_pruning(model)
    layers = spec.layers(args, len(model.get_model().layers))
    acc = spec.accumulator(args, model)
    dataset = QuestionDataset(todo, tokenizer, image_processor, model.config, args.conv_mode,
                              anyres_mode=model.pruning.anyres_mode)
    workers = args.num_workers if args.num_workers is not None else (4 if model.device.type == "cuda" else 0)
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=workers, collate_fn=_collate)
    chunk = f" chunk {args.chunk_idx + 1}/{args.num_chunks}" if args.num_chunks > 1 else ""
    with torch.inference_mode():
        for (sample,) in tqdm(loader, desc=f"{spec.name}{chunk}", unit="sample", dynamic_ncols=True):
            prefill = prefill_inputs(model, sample.input_ids, sample.pixels, sample.image_size)
            blocks = capture_image_attention(model.get_model(), prefill.inputs_embeds, prefill.attention_mask,
                                             prefill.span, layers, spec.queries, args.chunk_rows)
            acc.add(todo[sample.index].question_id, prefill.cls_attn, blocks)
    stats = acc.stats()
    stats.update(model=get_model_name_from_path(args.model_path), question_file=os.path.basename(args.question_file),
                 skipped_ids=[q.question_id for q in missing], grid=model.get_vision_tower().num_patches_per_side)
    return stats


def merge_chunk_files(folder: str, spec: AnalysisSpec, num_chunks: int) -> dict:
    paths = [stats_path(folder, spec.name, num_chunks, k) for k in range(num_chunks)]
    absent = [p for p in paths if not os.path.isfile(p)]
    if absent:
        raise FileNotFoundError(f"cannot merge {num_chunks} chunks: missing " + ", ".join(absent))
    parts = [load_stats(p) for p in paths]
    merged = spec.merge(parts)
    merged.update({k: parts[0][k] for k in ("model", "question_file", "grid")},
                  skipped_ids=[i for p in parts for i in p["skipped_ids"]])
    return merged


def run_analysis(args: argparse.Namespace, spec: AnalysisSpec) -> dict:
    """Collect (or, with --replot, load / merge) the statistics, save them, draw the figures, write the summary.

    A chunk of several (`--num-chunks N`) only saves its statistics file; `--replot --num-chunks N` merges them.
    Returns the summary (also written to `<output folder>/<name>_summary.json`).
    """
    folder = args.output_folder
    whole = stats_path(folder, spec.name)
    if args.replot:
        stats = merge_chunk_files(folder, spec, args.num_chunks) if args.num_chunks > 1 else load_stats(whole)
    else:
        stats = collect(args, spec)
        if args.num_chunks > 1:
            path = stats_path(folder, spec.name, args.num_chunks, args.chunk_idx)
            save_stats(stats, path)
            print(f"[{spec.name}] chunk {args.chunk_idx + 1}/{args.num_chunks} saved to {path}; when all chunks are "
                  f"done, merge and plot with --replot --num-chunks {args.num_chunks}", file=sys.stderr)
            return {"chunk_stats": path}
    if not args.replot or args.num_chunks > 1:
        save_stats(stats, whole)
    figures = spec.plot(stats, folder, args)
    summary, headline = spec.summarize(stats, args)
    summary.update(model=stats["model"], question_file=stats["question_file"], skipped_ids=stats["skipped_ids"],
                   statistics=os.path.basename(whole), figures=[os.path.relpath(f, folder) for f in figures])
    write_json(summary, os.path.join(folder, f"{spec.name}_summary.json"))
    print(headline)
    return summary
