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
import io
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from llava.eval.answers import AnswersFile, RunIdentity, item_key

# What LLaVA's model_vqa_loader generates at most; the other entry points use 1024, as upstream.
DEFAULT_MAX_NEW_TOKENS = 128


# --------------------------------------------------------------------------- questions


@dataclass(frozen=True)
class ImageRef:
    """Where a question's image comes from: a file, or base64 bytes (MMBench tsv)."""

    path: str | None = None
    b64: str | None = None

    def load(self, question_id: Any):
        """The image as RGB PIL; errors name the question and the file."""
        from PIL import Image, UnidentifiedImageError

        from llava.mm_utils import load_image

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
                return image.convert("RGB")
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
    seen: dict[str, int] = {}
    for q in questions:
        base = item_key(q.question_id, q.extra.get("round_id"))
        n = seen.get(base, 0)
        seen[base] = n + 1
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


def check_images_exist(questions: list[Question]) -> None:
    """Fail before the model loads when an image file is missing, naming the question and the file."""
    for q in questions:
        if q.image is not None and q.image.path is not None and not os.path.isfile(q.image.path):
            raise FileNotFoundError(f"question {q.question_id!r}: image file not found: {q.image.path}")


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


class QuestionDataset:
    """Prompt ids and pixels of each question; runs in DataLoader workers."""

    def __init__(self, questions: list[Question], tokenizer, image_processor, model_config, conv_mode: str):
        self.questions = questions
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.model_config = model_config
        self.conv_mode = conv_mode

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> Sample:
        from llava.eval.run_llava import build_prompt
        from llava.mm_utils import process_images, tokenizer_image_token

        q = self.questions[index]
        image = q.image.load(q.question_id) if q.image is not None else None
        prompt = build_prompt(q.query, 0 if image is None else 1, self.conv_mode)
        ids = tokenizer_image_token(prompt, self.tokenizer, return_tensors="pt")
        if image is None:
            return Sample(index, ids, None, None)
        pixels = process_images([image], self.image_processor, self.model_config)[0]
        return Sample(index, ids, pixels, image.size)


def _collate(samples: list[Sample]) -> list[Sample]:
    return samples


def generate_batch(model, tokenizer, samples: list[Sample], gen_kwargs: dict) -> list[tuple[str, int]]:
    """(answer text, visual tokens kept) per sample; prompts are left-padded with an attention mask."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    longest = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample.input_ids)
        ids[row, longest - n:] = sample.input_ids
        mask[row, longest - n:] = 1
    with_image = [s for s in samples if s.pixels is not None]
    images = [s.pixels.to(model.device) for s in with_image] or None
    sizes = [s.image_size for s in with_image] or None
    with torch.inference_mode():
        out, v_token_num, _ = model.generate(ids.to(model.device), attention_mask=mask.to(model.device),
                                             images=images, image_sizes=sizes, pad_token_id=pad, **gen_kwargs)
    texts = [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
    counts = v_token_num if isinstance(v_token_num, list) else [int(v_token_num)] * len(samples)
    return list(zip(texts, counts))


# --------------------------------------------------------------------------- the loop


def requested_identity(args) -> tuple[RunIdentity, tuple[str, ...]]:
    """The identity known before the model loads, and which of its fields are meaningful yet."""
    from llava.mm_utils import get_model_name_from_path

    identity = RunIdentity(get_model_name_from_path(args.model_path), args.visual_token_num, args.pruning_method)
    fields = ("model_id", "pruning_method") + (("visual_token_num",) if args.visual_token_num is not None else ())
    return identity, fields


def model_identity(args, model) -> RunIdentity:
    """The identity of the loaded model: resolved budget, method and (anyres checkpoints) anyres mode."""
    from llava.mm_utils import get_model_name_from_path

    anyres = getattr(model.config, "image_aspect_ratio", None) == "anyres"
    return RunIdentity(get_model_name_from_path(args.model_path), model.pruning.visual_token_num,
                       model.pruning.method, model.pruning.anyres_mode if anyres else None)


def answer_record(q: Question, text: str, v_token_num: int, identity: RunIdentity) -> dict:
    import shortuuid

    return {"question_id": q.question_id, **q.extra, "prompt": q.prompt, "text": text,
            "answer_id": shortuuid.uuid(), **identity.as_fields(), "v_token_num": v_token_num,
            "metadata": q.metadata}


def _num_workers(args) -> int:
    if args.num_workers is not None:
        return args.num_workers
    return 4 if (args.device or "cuda").startswith("cuda") and _cuda_available() else 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run(args, questions: list[Question], n_records: int) -> str:
    """Answer this chunk's questions that ``--answers-file`` does not hold yet; returns its path.

    ``questions`` covers the whole question file (``n_records`` records); chunking, resuming,
    batching, writing and the progress bar happen here. The model is loaded only if something
    is left to answer.
    """
    from tqdm import tqdm

    number_repeats(questions)
    mine = chunk_questions(questions, n_records, args.num_chunks, args.chunk_idx)
    answers = AnswersFile(args.answers_file, overwrite=args.overwrite)
    answers.check(*requested_identity(args))
    pending = [q for q in mine if q.key not in answers.done]
    resumed = len(mine) - len(pending)
    stray = len(answers.done - {q.key for q in mine})
    if stray:
        print(f"[answers] {answers.path}: {stray} answer(s) for questions outside this question file / chunk "
              "(kept as they are)", file=sys.stderr)
    chunk = f" chunk {args.chunk_idx + 1}/{args.num_chunks}" if args.num_chunks > 1 else ""
    if resumed:
        print(f"[answers] resuming {answers.path}: {resumed} of {len(mine)} already answered", file=sys.stderr)
    if not pending:
        answers.touch()  # an empty chunk still leaves its (empty) file for the merge
        print(f"[answers] {answers.path}: all {len(mine)} questions{chunk} answered", file=sys.stderr)
        return answers.path
    check_images_exist(pending)

    from torch.utils.data import DataLoader

    from llava.eval.run_llava import generation_kwargs, load_from_args

    tokenizer, model, image_processor, _ = load_from_args(args)
    identity = model_identity(args, model)
    answers.check(identity)
    dataset = QuestionDataset(pending, tokenizer, image_processor, model.config, args.conv_mode)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=_num_workers(args),
                        collate_fn=_collate)
    gen_kwargs = generation_kwargs(args)
    name = os.path.basename(args.question_file) + chunk
    with answers, tqdm(total=len(mine), initial=resumed, desc=name, unit="q", dynamic_ncols=True) as bar:
        if resumed:
            bar.set_postfix_str(f"resumed {resumed}")
        for samples in loader:
            for sample, (text, v_tokens) in zip(samples, generate_batch(model, tokenizer, samples, gen_kwargs)):
                answers.append(answer_record(pending[sample.index], text, v_tokens, identity))
            bar.update(len(samples))
    return answers.path


# --------------------------------------------------------------------------- CLI


def build_parser(description: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> argparse.ArgumentParser:
    """Flags of every entry point: the model flags of ``run_llava`` plus files, chunks and batching."""
    from llava.eval.run_llava import add_model_args

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--question-file", required=True)
    parser.add_argument("--image-folder", default="")
    parser.add_argument("--answers-file", required=True, help="jsonl; resumed if it exists (see --overwrite)")
    parser.add_argument("--num-chunks", type=int, default=1, help="split the questions into this many chunks")
    parser.add_argument("--chunk-idx", type=int, default=0, help="answer only this chunk (0-based)")
    parser.add_argument("--batch-size", type=int, default=1, help="prompts per generate call (left-padded)")
    parser.add_argument("--num-workers", type=int, default=None,
                        help="DataLoader workers for image preprocessing (default: 4 on GPU, 0 on CPU)")
    parser.add_argument("--overwrite", action="store_true", help="delete --answers-file first instead of resuming")
    parser.set_defaults(max_new_tokens=max_new_tokens)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv=None):
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.num_chunks < 1 or not 0 <= args.chunk_idx < args.num_chunks:
        parser.error(f"--chunk-idx must be in [0, --num-chunks); got {args.chunk_idx} of {args.num_chunks}")
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
    main()
