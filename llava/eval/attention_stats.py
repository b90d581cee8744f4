"""The LLM's attention onto the image tokens of a prompt, gathered without attention maps.

The analyses of the paper (§3: :mod:`llava.eval.analyze_attn_shift`, :mod:`llava.eval.analyze_attn_dispersion`)
need, for some decoder layers, the head-mean softmax attention of some query rows onto the image-token columns of
the prompt's prefill. The original asked for ``output_attentions=True``, which forces eager attention and keeps
every layer's (H, S, S) map. Here hooks on the attention modules of the layers asked for take q (after rotary) and
k and compute only the rows asked for, in chunks of rows and in float32, while the forward itself keeps SDPA /
flash attention; the forward stops after the deepest layer asked for.

The module also holds what both analyses share: reading the samples (LLaVA training conversations), the
missing-image report, the prefill inputs of one sample, the statistics files (one per run or per chunk) and the
driver :func:`run_analysis`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import torch

from llava.atomic import atomic_path, atomic_write

# Which query rows a capture computes.
FROM_IMAGE = "from_image"  # every row from the first image token to the last token of the prompt
LAST = "last"  # the last token of the prompt only
QUERY_SETS = (FROM_IMAGE, LAST)


# --------------------------------------------------------------------------- gathering


@dataclass(frozen=True)
class ImageSpan:
    """The image tokens' positions [start, stop) in the LLM's input sequence."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


class _StopForward(Exception):
    """Raised by the hook of the deepest layer asked for: the layers after it are not needed."""


def image_attention_rows(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, span: ImageSpan, scale: float,
                         chunk_rows: int = 128) -> torch.Tensor:
    """Head-mean causal softmax attention of the query positions `rows` onto the image columns.

    q (H, S, d) and k (H_kv, S, d) after rotary; rows: ascending positions (R,). Computed `chunk_rows` rows at a
    time in float32, each row's softmax over keys 0..row. Returns (R, span.size) float32.
    """
    heads = q.shape[0]
    if heads % k.shape[0]:
        raise ValueError(f"{heads} query heads do not group evenly over {k.shape[0]} key heads")
    k = k.repeat_interleave(heads // k.shape[0], dim=0)  # grouped-query attention: one key head per query head
    out = []
    for chunk in rows.split(chunk_rows):
        # Keys after the chunk's last row are masked for all its rows; the image columns are always kept, so an
        # early chunk of image rows still gives (c, P), zeros right of each row.
        top = max(int(chunk[-1]) + 1, span.stop)
        logits = torch.einsum("hrd,hsd->hrs", q[:, chunk].float(), k[:, :top].float()) * scale  # (H, c, top)
        future = torch.arange(top, device=q.device)[None, :] > chunk[:, None]  # (c, top)
        probs = logits.masked_fill_(future, float("-inf")).softmax(dim=-1)
        out.append(probs[..., span.start:span.stop].mean(dim=0))  # (c, P)
    return torch.cat(out)


def _attention_modules(llm, layers: list[int]) -> list:
    decoder = getattr(llm, "layers", None)
    if decoder is None:
        raise TypeError(f"{type(llm).__name__} has no .layers: pass the decoder model (model.get_model())")
    if not layers or min(layers) < 0 or max(layers) >= len(decoder):
        raise ValueError(f"layers {layers} out of range: the LLM has {len(decoder)} layers (0-based indices)")
    modules = [decoder[i].self_attn for i in layers]
    for m in modules:
        missing = [a for a in ("q_proj", "k_proj", "head_dim", "scaling") if not hasattr(m, a)]
        if missing:
            raise TypeError(f"{type(m).__name__} lacks {missing}: only Llama-style attention modules are supported")
    return modules


def capture_image_attention(llm, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, span: ImageSpan,
                            layers: list[int], queries: str = FROM_IMAGE,
                            chunk_rows: int = 128) -> dict[int, torch.Tensor]:
    """Run the decoder `llm` (``model.get_model()``) on one prompt and return, per layer index in `layers`
    (0-based), the head-mean attention of the `queries` rows onto the image columns: (R, span.size) float32, with
    R = S - span.start rows for FROM_IMAGE, 1 for LAST.

    Hooks on each needed layer keep the outputs of q_proj / k_proj; the attention module's own hook applies the
    model's rotary embedding to them and computes the rows with :func:`image_attention_rows`. The forward runs with
    the model's attention backend and stops after the deepest layer in `layers`. Batch 1 without padding only.
    """
    if queries not in QUERY_SETS:
        raise ValueError(f"queries must be one of {QUERY_SETS}, got {queries!r}")
    if inputs_embeds.shape[0] != 1 or (attention_mask is not None and not bool(attention_mask.all())):
        raise ValueError("capture_image_attention takes one unpadded prompt (batch 1)")
    seq = inputs_embeds.shape[1]
    if not 0 <= span.start < span.stop <= seq:
        raise ValueError(f"image span [{span.start}, {span.stop}) does not fit a sequence of {seq} tokens")
    wanted = sorted(set(layers))
    device = inputs_embeds.device
    rows = torch.arange(span.start if queries == FROM_IMAGE else seq - 1, seq, device=device)
    captured: dict[tuple[int, str], torch.Tensor] = {}
    result: dict[int, torch.Tensor] = {}

    def keep(key):
        def hook(module, args, output):
            captured[key] = output
        return hook

    def reduce(layer_idx):
        def hook(module, args, kwargs, output):
            cos, sin = kwargs.get("position_embeddings") or args[1]
            shape = (1, seq, -1, module.head_dim)
            q = captured.pop((layer_idx, "q")).view(shape).transpose(1, 2)  # (1, H, S, d)
            k = captured.pop((layer_idx, "k")).view(shape).transpose(1, 2)  # (1, H_kv, S, d)
            # The model's own rotary function, so the scores are those its attention backend sees.
            rotary = importlib.import_module(type(module).__module__).apply_rotary_pos_emb
            q, k = rotary(q, k, cos, sin)
            result[layer_idx] = image_attention_rows(q[0], k[0], rows, span, module.scaling, chunk_rows)
            if layer_idx == wanted[-1]:
                raise _StopForward
        return hook

    handles = []
    try:
        for idx, attn in zip(wanted, _attention_modules(llm, wanted)):
            handles += [attn.q_proj.register_forward_hook(keep((idx, "q"))),
                        attn.k_proj.register_forward_hook(keep((idx, "k"))),
                        attn.register_forward_hook(reduce(idx), with_kwargs=True)]
        try:
            llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    finally:
        for h in handles:
            h.remove()
    missing = [i for i in wanted if i not in result]
    if missing:
        raise RuntimeError(f"the attention hooks of layer(s) {missing} did not run")
    return result


# --------------------------------------------------------------------------- statistics


def shift_statistics(blocks: torch.Tensor, num_image: int) -> dict[str, torch.Tensor | None]:
    """Causally normalised attention each image token receives, from the FROM_IMAGE rows of a capture.

    blocks (..., R, P): rows = the P image tokens, then the T = R - P text tokens after the image (the last one is
    the prompt's last token). Image token j can only be seen by rows at or after it, so each column's sum is
    divided by the number of rows that see it:
      all   rows from the first image token on:  sum / ((P - j) + T)
      image image rows:                          sum / (P - j)
      text  text rows after the image, the last token excepted: sum / (T - 1); None when T == 1
      last  the last token's row
    Returns (..., P) tensors.
    """
    rows, p = blocks.shape[-2], num_image
    text_rows = rows - p
    if text_rows < 1:
        raise ValueError(f"{rows} query rows for {p} image tokens: no token after the image")
    seen_by_image = torch.arange(p, 0, -1, device=blocks.device, dtype=blocks.dtype)
    image = blocks[..., :p, :].sum(dim=-2)
    text = blocks[..., p:rows - 1, :].sum(dim=-2)
    return {
        "all": (image + text + blocks[..., -1, :]) / (seen_by_image + text_rows),
        "image": image / seen_by_image,
        "text": text / (text_rows - 1) if text_rows > 1 else None,
        "last": blocks[..., -1, :],
    }


def top_count(num_tokens: int, fraction: float) -> int:
    """How many of `num_tokens` make `fraction` of them (at least 1)."""
    return max(1, min(num_tokens, round(fraction * num_tokens)))


def tail_share(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Share of (..., P) attention held by the last `fraction` of positions (raster order: the bottom rows)."""
    k = top_count(scores.shape[-1], fraction)
    return scores[..., -k:].sum(dim=-1) / scores.sum(dim=-1)


def sorted_shares(scores: torch.Tensor) -> torch.Tensor:
    """(n, P) scores -> each row sorted in descending order and divided by its sum."""
    s = scores.double()
    return s.sort(dim=-1, descending=True).values / s.sum(dim=-1, keepdim=True)


def top_share(scores: torch.Tensor, fraction: float) -> float:
    """Mean over the rows of (n, P) `scores` of the share held by the top `fraction` of tokens."""
    k = top_count(scores.shape[-1], fraction)
    return float(sorted_shares(scores)[:, :k].sum(dim=-1).mean())


# --------------------------------------------------------------------------- samples


@dataclass
class Prefill:
    """What the LLM gets for one sample: embeddings (1, S, D), mask (1, S), the image span, [CLS] attention (P,)."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    span: ImageSpan
    cls_attn: torch.Tensor


def first_human_turn(record: dict, where: str) -> str:
    """The prompt of a LLaVA conversation without its `<image>` token (the analysis puts the image first).

    As the original analysis: `<image>\n`, then any other `<image>`, is removed, and nothing else ("Q?\n<image>"
    leaves "Q?\n"), so the prompts' tokens are the original's.
    """
    from llava.constants import DEFAULT_IMAGE_TOKEN

    for turn in record.get("conversations") or []:
        if turn.get("from") == "human":
            return turn["value"].replace(DEFAULT_IMAGE_TOKEN + "\n", "").replace(DEFAULT_IMAGE_TOKEN, "")
    raise ValueError(f"{where}: sample {record.get('id')!r} has no human turn in 'conversations'")


def read_samples(question_file: str, image_folder: str) -> list:
    """The samples of a LLaVA conversation jsonl (`id`, `image`, `conversations`) as eval `Question`s.

    The query is the first human turn; as in the original analysis the image goes first in the prompt
    (``<image>\\n`` + question) wherever the conversation put it, so every sample's image tokens start at the
    same position. `metadata['line']` is the sample's line number in the file.
    """
    from llava.eval.model_vqa_loader import ImageRef, Question, read_jsonl_questions, require_image_folder

    records = read_jsonl_questions(question_file, required=("id", "image", "conversations"))
    folder = require_image_folder(image_folder)
    questions = []
    for i, r in enumerate(records):
        query = first_human_turn(r, f"{question_file} sample #{i + 1}")
        questions.append(Question(r["id"], query, query, ImageRef(path=os.path.join(folder, r["image"])),
                                  metadata={"line": i + 1}, source=i))
    return questions


def report_missing(questions: list, skip: bool) -> list:
    """The questions whose image file is missing. Without `skip` any is an error listing their sample ids."""
    missing = [q for q in questions if not os.path.isfile(q.image.path)]
    if not missing:
        return []
    listed = "\n".join(f"  id {q.question_id!r} (line {q.metadata['line']}): {q.image.path}" for q in missing[:20])
    more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
    head = f"{len(missing)} of {len(questions)} sample image(s) not found"
    if not skip:
        raise FileNotFoundError(f"{head}:\n{listed}{more}\nfix --image-folder, or pass --skip-missing to analyse "
                                "the others (the skipped ids are recorded in the summary)")
    if len(missing) == len(questions):
        raise FileNotFoundError(f"{head} (all of them):\n{listed}{more}")
    print(f"[analysis] skipping {head}:\n{listed}{more}", file=sys.stderr)
    return missing


def prefill_inputs(model, input_ids: torch.Tensor, pixels: torch.Tensor, image_size) -> Prefill:
    """Embeddings of one prompt (L,) with one IMAGE_TOKEN_INDEX and one image (3, S, S), as generate builds them."""
    from llava.constants import IMAGE_TOKEN_INDEX

    ids = input_ids[None].to(model.device)
    mm = model.prepare_multimodal_inputs(ids, None, pixels[None].to(model.device), [image_size])
    start = int((input_ids == IMAGE_TOKEN_INDEX).nonzero()[0])
    return Prefill(mm.inputs_embeds, mm.attention_mask, ImageSpan(start, start + mm.v_token_num[0]),
                   mm.cls_attn[0][0])


def refuse_unsupported_checkpoint(model_path: str) -> None:
    """LLaVA-1.6 is refused before anything heavy is loaded: per-position averages need one fixed token layout."""
    from llava.model.builder import read_llava_config, resolve_local_dir

    config = read_llava_config(resolve_local_dir(model_path))
    if getattr(config, "image_aspect_ratio", None) == "anyres":
        raise NotImplementedError(
            f"{model_path} is a LLaVA-1.6 (anyres) checkpoint: its images become a base crop plus a grid of crops "
            f"that depends on each image's size, so image-token positions do not line up across samples and "
            f"per-position averages are undefined. The attention analyses follow the paper (LLaVA-1.5: one crop, "
            f"576 tokens, per image); use a LLaVA-1.5 checkpoint")


def refuse_pruning(model) -> None:
    """The analyses need every visual token in raster order (no pruning)."""
    per_crop = model.get_vision_tower().num_patches
    if model.pruning.visual_token_num != per_crop:
        raise ValueError(f"the attention analyses need all {per_crop} visual tokens (--visual-token-num {per_crop} "
                         f"or leave it out), got --visual-token-num {model.pruning.visual_token_num}")


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


# --------------------------------------------------------------------------- driver


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


def build_parser(description: str) -> argparse.ArgumentParser:
    """The original flags (`--model-path --question-file --image-folder --output-folder --visual-token-num
    --temperature --conv-mode --num-chunks --chunk-idx`) plus `--replot`, `--skip-missing`, `--num-workers`."""
    from llava.eval.run_llava import add_model_args

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    for action in parser._actions:  # --replot redraws from the saved statistics: no model needed
        if action.dest == "model_path":
            action.required = False
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


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.num_chunks < 1 or not 0 <= args.chunk_idx < args.num_chunks:
        parser.error(f"--chunk-idx must be in [0, --num-chunks); got {args.chunk_idx} of {args.num_chunks}")
    if not args.replot and not args.model_path:
        parser.error("--model-path is required (except with --replot)")
    if args.chunk_rows < 1:
        parser.error("--chunk-rows must be at least 1")
    return args


def _collate(samples):
    return samples


def collect(args: argparse.Namespace, spec: AnalysisSpec) -> dict:
    """Run the model over this chunk's samples and return the accumulated statistics."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    from llava.eval.model_vqa_loader import QuestionDataset, chunk_questions
    from llava.eval.run_llava import load_from_args
    from llava.mm_utils import get_model_name_from_path

    questions = read_samples(args.question_file, args.image_folder)
    mine = chunk_questions(questions, len(questions), args.num_chunks, args.chunk_idx)
    if not mine:
        raise ValueError(f"chunk {args.chunk_idx} of {args.num_chunks} holds no samples "
                         f"({len(questions)} in {args.question_file}); use fewer chunks")
    missing = report_missing(mine, args.skip_missing)
    skipped = {id(q) for q in missing}
    todo = [q for q in mine if id(q) not in skipped]
    refuse_unsupported_checkpoint(args.model_path)

    tokenizer, model, image_processor, _ = load_from_args(args)
    refuse_pruning(model)
    layers = spec.layers(args, len(model.get_model().layers))
    acc = spec.accumulator(args, model)
    dataset = QuestionDataset(todo, tokenizer, image_processor, model.config, args.conv_mode)
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
