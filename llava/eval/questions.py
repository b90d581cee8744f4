"""The questions of an eval run: what each asks (:class:`Question`), where its image is (:class:`ImageRef`), the
checks made before the model loads, and LLaVA's split of a question file into chunks.

Each entry point (``model_vqa_loader``, ``model_vqa``, ``model_vqa_science``, ``model_vqa_mmbench``) turns its own
question format into :class:`Question` objects; :mod:`llava.eval.answering` answers them.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from llava.eval.answers import item_key, repeat_numbers
from llava.eval.scoring.common import read_jsonl
from llava.mm_utils import load_image, to_rgb

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
        source = self.path if self.path is not None else io.BytesIO(base64.b64decode(self.b64, validate=False))
        with Image.open(source) as image:
            image.verify()

    def load(self, question_id: Any):
        """The image as RGB PIL; errors name the question and the file."""
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
    return read_jsonl(path, role="question file", required=required)


def require_image_folder(folder: str) -> str:
    folder = os.path.expanduser(folder or "")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder not found: {folder!r} (pass --image-folder)")
    return folder


def jsonl_questions(question_file: str, image_folder: str) -> tuple[list[Question], int]:
    """LLaVA's question jsonl (question_id, image, text) as :class:`Question`s, and its number of records."""
    records = read_jsonl_questions(question_file)
    folder = require_image_folder(image_folder)
    questions = [Question(r["question_id"], r["text"], r["text"], ImageRef(path=os.path.join(folder, r["image"])),
                          source=i)
                 for i, r in enumerate(records)]
    return questions, len(records)


# --------------------------------------------------------------------------- images, before the model loads


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
