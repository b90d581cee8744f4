"""Answer a LLaVA question file, and the inference loop that every eval entry point shares.

Question file (LLaVA's jsonl): one object per line with ``question_id``, ``image`` (a path
relative to ``--image-folder``) and ``text`` (the question, including any answer-format
instruction such as "Answer the question using a single word or phrase.")::

    python -m llava.eval.model_vqa_loader --model-path liuhaotian/llava-v1.5-7b \\
        --question-file q.jsonl --image-folder images/ --answers-file answers.jsonl \\
        --visual-token-num 144 --temperature 0 --conv-mode vicuna_v1

Answers go to ``--answers-file`` as jsonl (layout in :mod:`llava.eval.answers`), one line per
question, written and fsynced as each batch finishes; a rerun skips the questions already
answered. ``--num-chunks N --chunk-idx K`` answers only the K-th of N contiguous slices of the
question file (LLaVA's ``split_list``), for one process per GPU.

Run identity: every answer line records what produced it (:class:`llava.eval.answers.RunIdentity`:
checkpoint fingerprint, budget, method and its parameters, template, decoding, prompt options);
a rerun that differs in any of them, or whose question text for an id changed, is refused
before the model loads. ``--overwrite`` writes the new run beside the old file and replaces it
only when complete. A run holds ``<answers>.lock`` while it writes; a second one is refused.

Images are checked before the model loads (the file exists, Pillow reads its header). A bad one
stops the run with the question id and path, unless ``--skip-bad-images``: then the question is
recorded in ``<answers stem>.skipped.jsonl`` and left unanswered (the scorers' coverage counts it).

``--batch-size N`` (LLaVA itself answers one question at a time) left-pads N prompts and prunes
each sample's visual tokens on its own; greedy answers equal those of batch size 1.

The other entry points (:mod:`.model_vqa`, :mod:`.model_vqa_science`,
:mod:`.model_vqa_mmbench`) only turn their own question format into :class:`Question` objects
and call :func:`run`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import io
import math
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llava.cli import WATCH_PARENT_ENV, check_conv_mode, run_cli
from llava.inference import generate_batch
from llava.eval.answers import IDENTITY_FIELDS, AnswersFile, RunIdentity, hold_lock, item_key, repeat_numbers

if TYPE_CHECKING:  # the module stays light: torch only when a model runs
    from llava.model.pruning import PruningConfig

# What LLaVA's model_vqa_loader generates at most; the other entry points use 1024, as upstream.
DEFAULT_MAX_NEW_TOKENS = 128


# --------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class ImageRef:
    """Where a question's image comes from: a file, or base64 bytes (MMBench tsv)."""

    path: str | None = None
    b64: str | None = None

    def describe(self) -> str:
        return self.path if self.path is not None else "<base64 image in the question file>"

    def verify(self) -> None:
        """Cheap check before the model loads: Pillow identifies the image and ``verify()`` passes (header and,
        for PNG, chunk checksums; nothing is decoded). Raises OSError / ValueError with Pillow's reason."""
        from PIL import Image

        source = self.path if self.path is not None else io.BytesIO(base64.b64decode(self.b64, validate=False))
        with Image.open(source) as image:
            image.verify()

    def load(self, question_id: Any):
        """The image as RGB PIL; errors name the question and the file."""
        from PIL import Image, UnidentifiedImageError

        from llava.mm_utils import load_image, to_rgb

        where = f"question {question_id!r}"
        if self.path is not None:
            try:
                return load_image(self.path)
            except FileNotFoundError as err:
                raise FileNotFoundError(f"{where}: {err}") from None
            except ValueError as err:
                raise ValueError(f"{where}: {err}") from None
        try:
            with Image.open(io.BytesIO(base64.b64decode(self.b64, validate=False))) as image:
                image.load()
                rgb = to_rgb(image)  # 16-bit and transparent images too, as load_image
                return image.copy() if rgb is image else rgb
        except (binascii.Error, UnidentifiedImageError, OSError, TypeError, ValueError) as err:
            raise ValueError(f"{where}: cannot decode its base64 image ({err})") from None


@dataclass
class Question:
    """One generation request.

    question_id:  recorded as ``question_id``.
    query:        the user turn, without the ``<image>`` token (added when there is an image).
    prompt:       recorded as ``prompt`` (LLaVA's ``cur_prompt``: the question as the scorers read it).
    image:        None for a text-only question (ScienceQA).
    extra:        further top-level answer fields (MMBench: ``round_id``, ``options``, ``option_char``).
    metadata:     the answer's ``metadata``.
    source:       index of the question-file record it came from; chunks split records, not rounds.
    """

    question_id: Any
    query: str
    prompt: str
    image: ImageRef | None = None
    extra: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    source: int = 0

    @property
    def key(self) -> str:
        return item_key(self.question_id, self.extra.get("round_id"), self.metadata.get("repeat", 0))


def number_repeats(questions: list[Question]) -> None:
    """Mark the 2nd, 3rd, ... question with the same id (and round) as ``metadata.repeat`` = 1, 2, ...

    LLaVA's TextVQA file uses the image id as ``question_id``, so ids repeat; resuming needs a
    unique key per answer. Done on the whole file, so keys do not depend on the chunking.
    """
    bases = [item_key(q.question_id, q.extra.get("round_id")) for q in questions]
    for q, n in zip(questions, repeat_numbers(bases)):
        if n:
            q.metadata["repeat"] = n


def read_jsonl_questions(path: str, required: tuple[str, ...] = ("question_id", "image", "text")) -> list[dict]:
    """Question records of a jsonl file; errors name the file and line number."""
    from llava.eval.scoring.common import read_jsonl

    return read_jsonl(path, role="question file", required=required)


def require_image_folder(folder: str) -> str:
    folder = os.path.expanduser(folder or "")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder!r} (pass --image-folder)")
    return folder


def image_problem(image: ImageRef) -> str | None:
    """Why ``image`` cannot be used (missing file, unreadable header), or None when it looks fine."""
    if image.path is not None and not os.path.isfile(image.path):
        return "image file not found"
    try:
        image.verify()
    except Exception as err:  # Pillow raises many types for a bad file (OSError, SyntaxError, struct.error, ...)
        return f"cannot read image ({type(err).__name__}: {err})"
    return None


def check_images(questions: list[Question], skip_bad: bool = False) -> dict[str, str]:
    """Check every image before the model loads. Returns {question key: reason} of the bad ones when ``skip_bad``;
    otherwise the first bad one is an error naming the question, the file and the way out."""
    bad = {}
    for q in questions:
        if q.image is None:
            continue
        problem = image_problem(q.image)
        if problem is None:
            continue
        if skip_bad:
            bad[q.key] = problem
            continue
        message = (f"question {q.question_id!r}: {problem}: {q.image.describe()} "
                   "(fix or replace it, or rerun with --skip-bad-images to leave this question unanswered)")
        if problem == "image file not found":
            raise FileNotFoundError(message)
        raise ValueError(message)
    return bad


# --------------------------------------------------------------------------- chunks


def split_list(lst: list, n: int) -> list[list]:
    """LLaVA's split: contiguous chunks of ``ceil(len / n)`` items (the last one shorter).

    With few items this gives fewer than ``n`` chunks; :func:`get_chunk` returns an empty list
    for the missing ones, so every process of a multi-GPU run still finds its chunk.
    """
    size = math.ceil(len(lst) / n)
    return [lst[i:i + size] for i in range(0, len(lst), size)] if size else []


def get_chunk(lst: list, n: int, k: int) -> list:
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"chunk index {k} out of range for {n} chunks")
    chunks = split_list(lst, n)
    return chunks[k] if k < len(chunks) else []


def chunk_questions(questions: list[Question], n_records: int, n: int, k: int) -> list[Question]:
    """The questions whose source record is in chunk ``k`` of ``n``."""
    mine = set(get_chunk(list(range(n_records)), n, k))
    return [q for q in questions if q.source in mine]


# --------------------------------------------------------------------------- batches


@dataclass
class Sample:
    index: int  # into the pending questions
    input_ids: Any  # (L,) LongTensor with IMAGE_TOKEN_INDEX
    pixels: Any  # (3, S, S) or (crops, 3, S, S) tensor, None without an image
    image_size: tuple[int, int] | None  # (width, height)
    error: str | None = None  # --skip-bad-images: why the image could not be loaded (then nothing else is set)


class QuestionDataset:
    """Prompt ids and pixels of each question; runs in DataLoader workers."""

    def __init__(self, questions: list[Question], tokenizer, image_processor, model_config, conv_mode: str,
                 skip_bad_images: bool = False):
        self.questions = questions
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.model_config = model_config
        self.conv_mode = conv_mode
        self.skip_bad_images = skip_bad_images

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> Sample:
        from llava.inference import build_prompt
        from llava.mm_utils import process_images, tokenizer_image_token

        q = self.questions[index]
        try:
            image = q.image.load(q.question_id) if q.image is not None else None
        except (OSError, ValueError) as err:  # passed the header check, fails to decode (e.g. truncated data)
            if not self.skip_bad_images:
                raise
            return Sample(index, None, None, None, error=f"cannot read image ({err})")
        prompt = build_prompt(q.query, 0 if image is None else 1, self.conv_mode)
        ids = tokenizer_image_token(prompt, self.tokenizer, return_tensors="pt")
        if image is None:
            return Sample(index, ids, None, None)
        pixels = process_images([image], self.image_processor, self.model_config)[0]
        return Sample(index, ids, pixels, image.size)


def _collate(samples: list[Sample]) -> list[Sample]:
    return samples


# --------------------------------------------------------------------------- the loop


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json", ".pt", ".pth")


def checkpoint_fingerprint(model_path: str, model_base: str | None = None) -> str:
    """``sha256:<16 hex>`` of each checkpoint directory's config.json bytes and its weight files' names and sizes.

    Cheap (no weights are read) yet it tells apart two checkpoints that share a directory name, a re-trained
    checkpoint written over the old one, and a projector-only checkpoint on another base. Hub names resolve in the
    local HF cache as the loader does; a path that is no checkpoint fails here with the loader's message.
    """
    from llava.model.builder import resolve_local_dir

    digest = hashlib.sha256()
    for path in (model_path, model_base):
        if not path:
            continue
        directory = resolve_local_dir(path)
        config = directory / "config.json"
        digest.update(b"config.json\0" + (config.read_bytes() if config.is_file() else b"<none>") + b"\0")
        for entry in sorted(directory.iterdir()):
            if entry.is_file() and entry.name.endswith(WEIGHT_SUFFIXES):
                digest.update(f"{entry.name}\0{entry.stat().st_size}\0".encode())
    return "sha256:" + digest.hexdigest()[:16]


def checkpoint_is_anyres(model_path: str) -> bool:
    """Whether the checkpoint's config asks for anyres (LLaVA-1.6), read from config.json without loading."""
    from llava.model.builder import read_llava_config, resolve_local_dir

    return getattr(read_llava_config(resolve_local_dir(model_path)), "image_aspect_ratio", None) == "anyres"


def method_params(pruning: PruningConfig) -> dict:
    """The pruning method's parameters besides its budget, only those the method reads (`method_parameters`)."""
    from llava.model.pruning import method_parameters  # here: the module stays light (no torch) until a model runs

    return {name: int(value) for name, value in method_parameters(pruning).items()}


def _run_identity(args, visual_token_num, anyres_mode, params: dict, prompt_options: dict | None) -> RunIdentity:
    from llava.mm_utils import get_model_name_from_path

    temperature = float(args.temperature)
    return RunIdentity(
        get_model_name_from_path(args.model_path), visual_token_num, args.pruning_method, anyres_mode,
        method_params=params, conv_mode=args.conv_mode, temperature=temperature,
        top_p=args.top_p if temperature > 0 else None,  # greedy decoding ignores top_p (generation_kwargs)
        num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, prompt_options=dict(prompt_options or {}),
        checkpoint=checkpoint_fingerprint(args.model_path, args.model_base))


def requested_identity(args, prompt_options: dict | None = None) -> tuple[RunIdentity, tuple[str, ...]]:
    """The identity known before the model loads, and which of its fields are meaningful yet.

    Everything but the budget when ``--visual-token-num`` is not given: "all tokens" is resolved from the vision
    tower, so a file of a pruned run is compared against the resolved budget once the model is loaded."""
    from llava.model.pruning import PruningConfig

    anyres = checkpoint_is_anyres(args.model_path)
    requested = PruningConfig(method=args.pruning_method, llm_layer=args.fastv_layer)  # validated: a clear error
    identity = _run_identity(args, args.visual_token_num, args.anyres_mode if anyres else None,
                             method_params(requested), prompt_options)
    fields = tuple(f for f in IDENTITY_FIELDS if f != "visual_token_num" or args.visual_token_num is not None)
    return identity, fields


def model_identity(args, model, prompt_options: dict | None = None) -> RunIdentity:
    """The identity of the loaded model: resolved budget, method and its parameters, (anyres checkpoints) mode."""
    anyres = getattr(model.config, "image_aspect_ratio", None) == "anyres"
    pruning = model.pruning
    return _run_identity(args, pruning.visual_token_num, pruning.anyres_mode if anyres else None,
                         method_params(pruning), prompt_options)


def answer_record(q: Question, text: str, v_token_num: int, identity: RunIdentity) -> dict:
    import shortuuid

    return {"question_id": q.question_id, **q.extra, "prompt": q.prompt, "text": text,
            "answer_id": shortuuid.uuid(), **identity.as_fields(), "v_token_num": v_token_num,
            "metadata": q.metadata}


def skipped_record(q: Question, reason: str, identity: RunIdentity) -> dict:
    """A line of the skipped-questions side file: the question's key fields, why, and the run identity."""
    image = q.image.describe() if q.image is not None else None
    return {"question_id": q.question_id, **q.extra, "prompt": q.prompt, "skipped": reason, "image": image,
            **identity.as_fields(), "metadata": q.metadata}


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


def _num_workers(args) -> int:
    if args.num_workers is not None:
        return args.num_workers
    return 4 if (args.device or "cuda").startswith("cuda") and _cuda_available() else 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


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


def _run_locked(args, questions: list[Question], n_records: int, prompt_options: dict | None) -> str:
    mine = chunk_questions(questions, n_records, args.num_chunks, args.chunk_idx)
    answers = AnswersFile(args.answers_file, overwrite=args.overwrite)
    fields = IDENTITY_FIELDS
    if answers.records or answers.skipped:  # fail before the model loads when the file is another run's
        identity, fields = requested_identity(args, prompt_options)
        answers.check(identity, fields)
        answers.check_prompts({q.key: q.prompt for q in questions})
    pending = [q for q in mine if q.key not in answers.done]
    resumed = len(mine) - len(pending)
    stray = len(answers.done - {q.key for q in mine})
    if stray:
        print(f"[answers] {answers.path}: {stray} answer(s) for questions outside this question file / chunk "
              "(kept as they are)", file=sys.stderr)
    chunk = f" chunk {args.chunk_idx + 1}/{args.num_chunks}" if args.num_chunks > 1 else ""
    if resumed:
        print(f"[answers] resuming {answers.path}: {resumed} of {len(mine)} already answered", file=sys.stderr)
    if not pending and "visual_token_num" in fields:
        answers.finish()  # an empty chunk still leaves its (empty) file for the merge
        print(f"[answers] {answers.path}: all {len(mine)} questions{chunk} answered", file=sys.stderr)
        return answers.path
    bad = check_images(pending, skip_bad=getattr(args, "skip_bad_images", False))

    from torch.utils.data import DataLoader

    from llava.inference import generation_kwargs, load_from_args

    tokenizer, model, image_processor, _ = load_from_args(args)
    identity = model_identity(args, model, prompt_options)
    answers.check(identity)
    if not pending:
        answers.finish()
        print(f"[answers] {answers.path}: all {len(mine)} questions{chunk} answered", file=sys.stderr)
        return answers.path
    for q in pending:
        if q.key in bad:
            answers.append_skipped(skipped_record(q, bad[q.key], identity))
            print(f"[answers] skipped question {q.question_id!r}: {bad[q.key]}: {q.image.describe()}",
                  file=sys.stderr)
    todo = [q for q in pending if q.key not in bad]
    dataset = QuestionDataset(todo, tokenizer, image_processor, model.config, args.conv_mode,
                              skip_bad_images=getattr(args, "skip_bad_images", False))
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=_num_workers(args),
                        collate_fn=_collate)
    gen_kwargs = generation_kwargs(args)
    name = os.path.basename(args.question_file) + chunk
    with answers, tqdm_bar(len(mine), resumed + len(bad), name) as bar:
        for samples in loader:
            for sample in samples:
                if sample.error is not None:
                    answers.append_skipped(skipped_record(todo[sample.index], sample.error, identity))
            good = [s for s in samples if s.error is None]
            if good:
                for sample, (text, v_tokens) in zip(good, generate_batch(model, tokenizer, good, gen_kwargs)):
                    answers.append(answer_record(todo[sample.index], text, v_tokens, identity))
            bar.update(len(samples))
    answers.finish()
    if answers.skipped or bad:
        print(f"[answers] questions with unreadable images were skipped (unanswered): {answers.skipped_path}",
              file=sys.stderr)
    return answers.path


def tqdm_bar(total: int, initial: int, name: str):
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=name, unit="q", dynamic_ncols=True)
    if initial:
        bar.set_postfix_str(f"resumed {initial}")
    return bar


# --------------------------------------------------------------------------- CLI


def build_parser(description: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> argparse.ArgumentParser:
    """Flags of every entry point: the model flags of ``run_llava`` plus files, chunks and batching."""
    from llava.inference import add_model_args

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
    return args


def loader_questions(args) -> tuple[list[Question], int]:
    """LLaVA's question jsonl (question_id, image, text) as :class:`Question`s."""
    records = read_jsonl_questions(args.question_file)
    folder = require_image_folder(args.image_folder)
    questions = [Question(r["question_id"], r["text"], r["text"], ImageRef(path=os.path.join(folder, r["image"])),
                          source=i)
                 for i, r in enumerate(records)]
    return questions, len(records)


def main(argv=None) -> str:
    args = parse_args(build_parser(__doc__), argv)
    questions, n_records = loader_questions(args)
    return run(args, questions, n_records)


if __name__ == "__main__":
    sys.exit(run_cli(main))
