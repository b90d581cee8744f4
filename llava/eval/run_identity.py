"""Which run wrote an answers file: the :class:`llava.eval.answer_identity.RunIdentity` of a command line before the
model loads (to refuse another run's file early) and of the loaded model (the resolved budget), and the answer lines
that carry it.
"""

from __future__ import annotations

import hashlib

import shortuuid

from llava.eval.answer_identity import IDENTITY_FIELDS, RunIdentity, run_identity
from llava.eval.questions import Question
from llava.mm_utils import get_model_name_from_path
from llava.integrations.transformers.handle import HANDLE_ATTRIBUTE
from llava.model.checkpoint import native_checkpoint, read_llava_config, resolve_local_dir
from llava.model.pruning import PruningConfig

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json", ".pt", ".pth")


def checkpoint_fingerprint(model_path: str, model_base: str | None = None) -> str:
    """``sha256:<16 hex>`` of each checkpoint directory's config.json bytes and its weight files' names and sizes.

    Cheap (no weights are read) yet it tells apart two checkpoints that share a directory name, a re-trained
    checkpoint written over the old one, and a projector-only checkpoint on another base. Hub names resolve in the
    local HF cache as the loader does; a path that is no checkpoint fails here with the loader's message.
    """
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
    """Whether the checkpoint's config asks for anyres (LLaVA-1.6), read from config.json without loading. A
    transformers-native checkpoint (llava/model/native.py) tiles as its processor does: anyres_mode does not apply."""
    model_dir, native = native_checkpoint(model_path)
    return native is None and read_llava_config(model_dir).is_anyres


def _identity(args, pruning, anyres: bool, prompt_options: dict | None) -> RunIdentity:
    return run_identity(args, pruning, model_id=get_model_name_from_path(args.model_path), anyres=anyres,
                        checkpoint=checkpoint_fingerprint(args.model_path, args.model_base),
                        prompt_options=prompt_options)


def requested_identity(args, prompt_options: dict | None = None) -> tuple[RunIdentity, tuple[str, ...]]:
    """The identity known before the model loads, and which of its fields are meaningful yet.

    Everything but the budget when ``--visual-token-num`` is not given: "all tokens" is resolved from the vision
    tower, so a file of a pruned run is compared against the resolved budget once the model is loaded. A
    transformers-native checkpoint without a budget leaves the method unresolved too: its tower may have no [CLS],
    and then a [CLS] method keeps every token as `uniform` (llava/model/native.py, `install_pruning`)."""
    request = PruningConfig.from_args(args)  # checked: a clear error for a bad flag
    identity = _identity(args, request, checkpoint_is_anyres(args.model_path), prompt_options)
    unresolved = () if request.visual_token_num is not None else ("visual_token_num",)
    if unresolved and native_checkpoint(args.model_path)[1] is not None:
        unresolved += ("pruning_method",)
    return identity, tuple(f for f in IDENTITY_FIELDS if f not in unresolved)


def model_identity(args, model, prompt_options: dict | None = None) -> RunIdentity:
    """The identity of the loaded model: resolved budget, method and its parameters, (anyres checkpoints) mode.
    A transformers-native model: its pruning handle's settings (no anyres mode, see `checkpoint_is_anyres`)."""
    handle = model.__dict__.get(HANDLE_ATTRIBUTE)
    if handle is not None:
        return _identity(args, handle.pruning, False, prompt_options)
    return _identity(args, model.pruning, model.config.is_anyres, prompt_options)


def answer_record(q: Question, text: str, v_token_num: int, identity: RunIdentity) -> dict:
    """An answers-file line in LLaVA's layout plus the identity (layout in :mod:`llava.eval.answers`)."""
    return {"question_id": q.question_id, **q.extra, "prompt": q.prompt, "text": text,
            "answer_id": shortuuid.uuid(), **identity.as_fields(), "v_token_num": v_token_num,
            "metadata": q.metadata}


def skipped_record(q: Question, reason: str, identity: RunIdentity) -> dict:
    """A line of the skipped-questions side file: the question's key fields, why, and the run identity."""
    image = q.image.describe() if q.image is not None else None
    return {"question_id": q.question_id, **q.extra, "prompt": q.prompt, "skipped": reason, "image": image,
            **identity.as_fields(), "metadata": q.metadata}
