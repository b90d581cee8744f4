"""Tokenizer fixtures for the tests.

- `make_llama_tokenizer_dir` (re-exported from `llava.model.tiny`): the tiny checkpoints' trained tokenizer.
- `make_sentencepiece_dir`: a SentencePiece BPE model written piece by piece, in LLaMA's layout (unk 0, <s> 1,
  </s> 2, the 256 byte-fallback pieces 3..258 so "\\n" is <0x0A> = 13 as in LLaMA, then "▁▁" at 259 with LLaMA's
  lowest score), with merge scores chosen by hand so the ids of a few LLaVA prompts can be worked out on paper
  (see tests/test_tokenizer_sentencepiece.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2 as pb

from llava.model.tiny import TOKENIZER_CONFIG, VOCAB_SIZE, make_llama_tokenizer_dir  # noqa: F401

# SentencePiece BPE merges the adjacent pair whose joined string is a piece with the highest score. Listed from the
# highest score down; "▁▁" comes first in id order (as in LLaMA, id 259) but scores lowest, so it merges last.
MERGED = [
    "▁W", "at", "▁Wh", "▁What",          # "What" -> ▁W, at, ▁Wh, ▁What
    "▁T", "▁Th", "an", "▁Than", "▁Thank",  # "Thank"
    "US", "ER", "USER", "▁USER",           # "USER"
    "▁c", "▁cat",                          # "cat" (after "at")
]
SINGLE = list("▁abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ?:.,'")  # "<", ">", "/", "\n": bytes
FIRST_NORMAL_ID = 259


def piece_ids() -> dict[str, int]:
    """piece -> id of the hand-built model (specials and bytes included)."""
    ids = {"<unk>": 0, "<s>": 1, "</s>": 2}
    ids.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for i, piece in enumerate(["▁▁"] + MERGED + SINGLE):
        ids[piece] = FIRST_NORMAL_ID + i
    return ids


def sentencepiece_proto(dummy_prefix: bool = True, remove_extra_whitespaces: bool = False) -> bytes:
    """The serialized model. `dummy_prefix=False` is the same model with the normalizer's add_dummy_prefix off;
    `remove_extra_whitespaces=True` a normalizer that drops leading spaces and collapses runs (LLaMA's does not)."""
    m = pb.ModelProto()
    spec = m.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = FIRST_NORMAL_ID + 1 + len(MERGED) + len(SINGLE)
    spec.byte_fallback = True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
    norm = m.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = dummy_prefix
    norm.remove_extra_whitespaces = remove_extra_whitespaces
    norm.escape_whitespaces = True
    for piece, kind in (("<unk>", pb.ModelProto.SentencePiece.UNKNOWN), ("<s>", pb.ModelProto.SentencePiece.CONTROL),
                        ("</s>", pb.ModelProto.SentencePiece.CONTROL)):
        m.pieces.add(piece=piece, score=0.0, type=kind)
    for b in range(256):
        m.pieces.add(piece=f"<0x{b:02X}>", score=0.0, type=pb.ModelProto.SentencePiece.BYTE)
    m.pieces.add(piece="▁▁", score=-1e9, type=pb.ModelProto.SentencePiece.NORMAL)
    for i, piece in enumerate(MERGED):
        m.pieces.add(piece=piece, score=-float(i), type=pb.ModelProto.SentencePiece.NORMAL)
    for i, piece in enumerate(SINGLE):
        m.pieces.add(piece=piece, score=-1000.0 - i, type=pb.ModelProto.SentencePiece.NORMAL)
    return m.SerializeToString()


def make_sentencepiece_dir(path, legacy: bool | None = False, pad_token: str | None = None,
                           with_tokenizer_json: bool = False, config: dict | None = None,
                           remove_extra_whitespaces: bool = False) -> Path:
    """A checkpoint's tokenizer files: tokenizer.model (the hand-built model), tokenizer_config.json as
    liuhaotian/llava-v1.5-7b writes it (legacy=None leaves the key out, as older configs do), and, when
    `pad_token` is given, special_tokens_map.json naming it (LLaVA's training saved pad_token "<unk>").
    `with_tokenizer_json` adds the transformers-5 tokenizer.json of the same vocabulary, as a re-saved
    checkpoint would hold. `config` overrides tokenizer_config.json entries."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.model").write_bytes(sentencepiece_proto(remove_extra_whitespaces=remove_extra_whitespaces))
    cfg = dict(TOKENIZER_CONFIG, **(config or {}))
    if legacy is None:
        cfg.pop("legacy")
    else:
        cfg["legacy"] = legacy
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    if pad_token is not None:
        special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": pad_token}
        (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    if with_tokenizer_json:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(path)).backend_tokenizer.save(str(path / "tokenizer.json"))
    return path
