"""Answer a list of :class:`~llava.eval.questions.Question` into an answers file: the loop every eval entry point
(``model_vqa_loader``, ``model_vqa``, ``model_vqa_science``, ``model_vqa_mmbench``) shares, and their common flags.

:func:`run` numbers repeated ids, takes this chunk, resumes what ``--answers-file`` already holds (refusing another
run's file before the model loads, :mod:`llava.eval.run_identity`), checks the images, loads the model, and answers
the rest in batches, one fsynced line per answer (:mod:`llava.eval.answers`). The model's way of asking
(:func:`llava.inference.asking_for`: our conversation templates, or a transformers-native checkpoint's chat template
and processor) builds each prompt and runs each batch; everything else is shared.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import threading
import time
from pathlib import Path

from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import VideoLlavaForConditionalGeneration

from llava.cli import WATCH_PARENT_ENV, check_conv_mode
from llava.eval.answer_identity import IDENTITY_FIELDS
from llava.eval.answers import AnswersFile, hold_lock
from llava.eval.questions import Question, check_images, chunk_questions, number_repeats
from llava.eval.run_identity import answer_record, model_identity, requested_identity, skipped_record
from llava.inference import (
    LlavaAsking,
    Sample,
    add_model_args,
    asking_for,
    default_device,
    generation_kwargs,
    load_from_args,
)
from llava.model.checkpoint import native_checkpoint
from llava.model.pruning import PruningConfig

# What LLaVA's model_vqa_loader generates at most; the other entry points use 1024, as upstream.
DEFAULT_MAX_NEW_TOKENS = 128
# A native checkpoint's files that decide its prompts (chat template, processor settings, tokenizer).
PROCESSOR_FILES = ("chat_template.jinja", "chat_template.json", "processor_config.json", "preprocessor_config.json",
                   "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json")
CHAT_TEMPLATE = "chat_template"  # the conv_mode a native checkpoint's answers record (see `prompt_identity`)


# --------------------------------------------------------------------------- prompts and pixels


class QuestionDataset:
    """Each question as a `Sample` (prompt and image, read in DataLoader workers) through `asking`, the model's way
    of asking (`llava.inference.asking_for`). Without `asking`: our model's (`LlavaAsking`) from the tokenizer, image
    processor, config, conv_mode and `anyres_mode` (the model's own, `model.pruning.anyres_mode`, which decides an
    anyres image's crop grid)."""

    def __init__(self, questions: list[Question], tokenizer, image_processor, model_config, conv_mode: str | None,
                 skip_bad_images: bool = False, anyres_mode: str | None = None, asking=None):
        self.questions = questions
        self.asking = asking or LlavaAsking(tokenizer, image_processor, model_config, conv_mode, anyres_mode)
        self.skip_bad_images = skip_bad_images

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> Sample:
        q = self.questions[index]
        try:
            image = q.image.load(q.question_id) if q.image is not None else None
        except (OSError, ValueError) as err:  # passed the header check, fails to decode (e.g. truncated data)
            if not self.skip_bad_images:
                raise
            return Sample(index, error=f"cannot read image ({err})")
        return self.asking.sample(index, q.query, [] if image is None else [image])


def _collate(samples: list[Sample]) -> list[Sample]:
    return samples


def _num_workers(args) -> int:
    if args.num_workers is not None:
        return args.num_workers
    return 4 if (args.device or "cuda").startswith("cuda") and default_device() == "cuda" else 0


# --------------------------------------------------------------------------- chunk workers


def watch_parent(parent_pid: int, interval: float = 1.0) -> threading.Thread:
    """Exit this process (status 1) as soon as its parent is no longer ``parent_pid`` (the parent died and the
    process was re-parented). A daemon thread polling ``os.getppid()``: the portable fallback of the runner's
    parent-death signal."""
    def poll():
        while os.getppid() == parent_pid:
            time.sleep(interval)
        print(f"[answers] parent process {parent_pid} is gone; stopping this chunk worker", file=sys.stderr,
              flush=True)
        os._exit(1)

    thread = threading.Thread(target=poll, name="watch-parent", daemon=True)
    thread.start()
    return thread


def _watch_parent_from_env() -> None:
    value = os.environ.get(WATCH_PARENT_ENV)
    if value and value.isdigit():
        watch_parent(int(value))


# --------------------------------------------------------------------------- the loop


def run(args, questions: list[Question], n_records: int, prompt_options: dict | None = None) -> str:
    """Answer this chunk's questions that ``--answers-file`` does not hold yet; returns its path.

    ``questions`` covers the whole question file (``n_records`` records); chunking, resuming,
    batching, writing and the progress bar happen here, under the answers file's lock. The model
    is loaded only if something is left to answer, or to resolve the budget of a finished file.
    ``prompt_options``: the entry point's prompt flags, part of the run identity.
    """
    _watch_parent_from_env()
    number_repeats(questions)
    with hold_lock(args.answers_file):
        return _run_locked(args, questions, n_records, prompt_options)


def _chunk_label(args) -> str:
    return f" chunk {args.chunk_idx + 1}/{args.num_chunks}" if args.num_chunks > 1 else ""


def _refuse_other_runs(args, answers: AnswersFile, questions: list[Question], prompt_options) -> tuple[str, ...]:
    """Before the model loads: refuse a file another run wrote. Returns the identity fields compared so far."""
    if not (answers.records or answers.skipped):
        return IDENTITY_FIELDS
    identity, fields = requested_identity(*prompt_identity(args, prompt_options))
    answers.check(identity, fields)
    answers.check_prompts({q.key: q.prompt for q in questions})
    return fields


def _say_resumed(answers: AnswersFile, mine: list[Question], resumed: int, chunk: str) -> None:
    stray = len(answers.done - {q.key for q in mine})
    if stray:
        print(f"[answers] {answers.path}: {stray} answer(s) for questions outside this question file / chunk "
              "(kept as they are)", file=sys.stderr)
    if resumed:
        print(f"[answers] resuming {answers.path}: {resumed} of {len(mine)} already answered", file=sys.stderr)


def _finish_answered(answers: AnswersFile, n_mine: int, chunk: str) -> str:
    answers.finish()  # an empty chunk still leaves its (empty) file for the merge
    print(f"[answers] {answers.path}: all {n_mine} questions{chunk} answered", file=sys.stderr)
    return answers.path


def processor_fingerprint(model_dir: Path) -> str:
    """``sha256:<16 hex>`` of the files a native checkpoint's chat template, processor and tokenizer are read from
    (`PROCESSOR_FILES`, those present): an edited template or processor setting changes the prompts."""
    digest = hashlib.sha256()
    for name in PROCESSOR_FILES:
        path = model_dir / name
        digest.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b"<none>") + b"\0")
    return "sha256:" + digest.hexdigest()[:16]


def prompt_identity(args, prompt_options: dict | None) -> tuple[argparse.Namespace, dict | None]:
    """(flags, prompt options) as the run identity records them. A transformers-native checkpoint
    (llava/model/native.py) adds ``processor``: its `processor_fingerprint`; its prompts come from the chat template,
    so --conv-mode, which they do not read, is recorded as ``chat_template`` (Video-LLaVA, which has no template and
    reads --conv-mode, keeps it)."""
    model_dir, native = native_checkpoint(args.model_path)
    if native is None:
        return args, prompt_options
    options = {**(prompt_options or {}), "processor": processor_fingerprint(model_dir)}
    if native is VideoLlavaForConditionalGeneration:
        return args, options
    return argparse.Namespace(**{**vars(args), "conv_mode": CHAT_TEMPLATE}), options


def _run_locked(args, questions: list[Question], n_records: int, prompt_options: dict | None) -> str:
    mine = chunk_questions(questions, n_records, args.num_chunks, args.chunk_idx)
    answers = AnswersFile(args.answers_file, overwrite=args.overwrite)
    fields = _refuse_other_runs(args, answers, questions, prompt_options)
    pending = [q for q in mine if q.key not in answers.done]
    resumed = len(mine) - len(pending)
    chunk = _chunk_label(args)
    _say_resumed(answers, mine, resumed, chunk)
    if not pending and "visual_token_num" in fields:
        return _finish_answered(answers, len(mine), chunk)
    bad = check_images(pending, skip_bad=args.skip_bad_images)
    tokenizer, model, image_processor, _ = load_from_args(args)
    id_args, id_options = prompt_identity(args, prompt_options)
    identity = model_identity(id_args, model, id_options)
    answers.check(identity)
    if not pending:
        return _finish_answered(answers, len(mine), chunk)
    for q in pending:
        if q.key in bad:
            answers.append_skipped(skipped_record(q, bad[q.key], identity))
            print(f"[answers] skipped question {q.question_id!r}: {bad[q.key]}: {q.image.describe()}",
                  file=sys.stderr)
    todo = [q for q in pending if q.key not in bad]
    dataset = QuestionDataset(todo, None, None, None, None, skip_bad_images=args.skip_bad_images,
                              asking=asking_for(model, tokenizer, image_processor, args.conv_mode))
    bar = tqdm_bar(len(mine), resumed + len(bad), os.path.basename(args.question_file) + chunk)
    _answer_all(args, answers, dataset, model, identity, bar)
    answers.finish()
    if answers.skipped or bad:
        print(f"[answers] questions with unreadable images were skipped (unanswered): {answers.skipped_path}",
              file=sys.stderr)
    return answers.path


def _answer_all(args, answers: AnswersFile, dataset: QuestionDataset, model, identity, bar) -> None:
    """Answer every question of `dataset` in batches of --batch-size (through its `asking`), appending each answer
    (or skip) as it comes."""
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=_num_workers(args),
                        collate_fn=_collate)
    gen_kwargs = generation_kwargs(args)
    todo = dataset.questions
    with answers, bar:
        for samples in loader:
            for sample in samples:
                if sample.error is not None:
                    answers.append_skipped(skipped_record(todo[sample.index], sample.error, identity))
            good = [s for s in samples if s.error is None]
            if good:
                for sample, (text, v_tokens) in zip(good, dataset.asking.generate(model, good, gen_kwargs)):
                    answers.append(answer_record(todo[sample.index], text, v_tokens, identity))
            bar.update(len(samples))


def tqdm_bar(total: int, initial: int, name: str) -> tqdm:
    bar = tqdm(total=total, initial=initial, desc=name, unit="q", dynamic_ncols=True)
    if initial:
        bar.set_postfix_str(f"resumed {initial}")
    return bar


# --------------------------------------------------------------------------- flags


def build_parser(description: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> argparse.ArgumentParser:
    """Flags of every entry point: the model flags (:func:`llava.inference.add_model_args`) plus files, chunks and
    batching."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--question-file", required=True)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--image-folder", default="")
    parser.add_argument("--answers-file", required=True, help="jsonl; resumed if it exists (see --overwrite)")
    parser.add_argument("--num-chunks", type=int, default=1, help="split the questions into this many chunks")
    parser.add_argument("--chunk-idx", type=int, default=0, help="answer only this chunk (0-based)")
    parser.add_argument("--batch-size", type=int, default=1, help="prompts per generate call (left-padded)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers for image preprocessing (default: 4 on GPU, 0 on CPU)")
    parser.add_argument("--overwrite", action="store_true",
                        help="answer everything afresh instead of resuming; the old --answers-file is replaced only "
                             "when the new run completes")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave questions with unreadable images unanswered (listed in <answers>.skipped.jsonl) "
                             "instead of stopping")
    parser.set_defaults(max_new_tokens=max_new_tokens)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv=None):
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.num_chunks < 1 or not 0 <= args.chunk_idx < args.num_chunks:
        parser.error(f"--chunk-idx must be in [0, --num-chunks); got {args.chunk_idx} of {args.num_chunks}")
    check_conv_mode(args.conv_mode)  # before anything is read, loaded or written
    PruningConfig.from_args(args)  # the same for the pruning flags
    return args
