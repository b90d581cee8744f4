"""The tokenizer LLaVA-1.5/1.6 checkpoints were trained and evaluated with: SentencePiece ids, exactly.

The original stack (haotian-liu/LLaVA `llava/model/builder.py`: `AutoTokenizer.from_pretrained(path,
use_fast=False)`, transformers 4.31-4.37) tokenized with the slow `LlamaTokenizer`, i.e. with `sentencepiece` itself.
transformers 5.x only ships a `tokenizers`-backed `LlamaTokenizer` that rebuilds the BPE merges from the vocabulary,
and on LLaMA's vocabulary that differs from SentencePiece on some prompts:
- runs of two or more spaces ("?  Thank"): SentencePiece merges by piece score and LLaMA's "▁▁" pieces score lowest,
  so "▁Thank" forms first; the rebuilt merges join "▁▁" first;
- a text that starts with a space (the chunk after `<image>` in "Compare <image> with ...") loses SentencePiece's
  dummy-prefix piece "▁" (id 29871 in LLaMA's vocabulary);
- the `legacy` flag (how text after a special token such as `</s>` is encoded) defaulted to True in transformers 4
  when the checkpoint's tokenizer_config.json did not set it, and to False in 5.

`SentencePieceLlamaTokenizer` encodes with `sentencepiece.SentencePieceProcessor` and follows the rules of
transformers v4.37's `LlamaTokenizer` (huggingface/transformers, src/transformers/models/llama/tokenization_llama.py):
  legacy=True  (also when the config leaves it unset): every text between special tokens is encoded by the model as
               it is, dummy prefix included ("</s>USER" -> "</s>", "▁USER");
  legacy=False (vicuna-v1.5's config, copied into liuhaotian/llava-v1.5-*; LLaVA's llava/train/train.py
               `preprocess_v1` adjusts its masks for `not tokenizer.legacy`): the model's dummy prefix is switched off;
               "▁" is put once in front of the whole text, so only the first text (and any text that itself starts
               with a space) gets a leading "▁" ("</s>USER" -> "</s>", "US", "ER"); a "▁" left alone in front of a
               leading special token is dropped;
  bos (add_bos_token, default True) before and eos (add_eos_token, default False) after each sequence;
  decoding joins SentencePiece's decoding of the ordinary pieces with the text of special and added tokens.
Everything else (`__call__`, padding, `batch_decode`, `add_tokens`, ...) is transformers' Python tokenizer base.

`load_tokenizer` picks this class for a directory whose `tokenizer.model` is a SentencePiece model of a Llama-family
tokenizer (liuhaotian/llava-v1.5-7b, llava-v1.6-vicuna/mistral/34b), and `AutoTokenizer` for anything else (the tiny
real model's GPT-2-style BPE tokenizer.json, for one).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2
from transformers import AddedToken, AutoTokenizer, PreTrainedTokenizer

SPIECE_UNDERLINE = "▁"
SENTENCEPIECE_FILE = "tokenizer.model"
# tokenizer_config.json classes whose transformers-4 slow tokenizer was SentencePiece with the Llama rules above
LLAMA_TOKENIZER_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast")


def _processor(model_proto: bytes, dummy_prefix: bool, sp_model_kwargs: dict) -> spm.SentencePieceProcessor:
    """A SentencePieceProcessor for ``model_proto`` with its normalizer's add_dummy_prefix forced off unless
    ``dummy_prefix`` (legacy=False switches it off, as transformers 4.37 did)."""
    if not dummy_prefix:
        proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
        proto.normalizer_spec.add_dummy_prefix = False
        model_proto = proto.SerializeToString()
    sp = spm.SentencePieceProcessor(**sp_model_kwargs)
    sp.LoadFromSerializedProto(model_proto)
    return sp


def _special(token) -> AddedToken | None:
    """A special token as transformers 4.37's LlamaTokenizer held it: never normalised nor stripped."""
    if isinstance(token, str):
        return AddedToken(token, normalized=False, special=True)
    return token


class SentencePieceLlamaTokenizer(PreTrainedTokenizer):
    """transformers-4.37 slow `LlamaTokenizer` semantics on top of `sentencepiece` (see the module docstring).

    vocab_file: the SentencePiece `tokenizer.model`; legacy: None means True (transformers 4.x's default).
    """

    vocab_files_names = {"vocab_file": SENTENCEPIECE_FILE}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token=None,
                 sp_model_kwargs: dict | None = None, add_bos_token: bool = True, add_eos_token: bool = False,
                 clean_up_tokenization_spaces: bool = False, legacy: bool | None = None, **kwargs):
        if vocab_file is None or not os.path.isfile(vocab_file):
            raise FileNotFoundError(f"SentencePiece model {vocab_file!r} not found")
        self.vocab_file = str(vocab_file)
        self.legacy = True if legacy is None else bool(legacy)  # transformers 4.x: unset means legacy
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.sp_model_kwargs = dict(sp_model_kwargs or {})
        self._model_proto = Path(self.vocab_file).read_bytes()  # unmodified, for save_vocabulary and pickling
        self.sp_model = _processor(self._model_proto, self.legacy, self.sp_model_kwargs)
        kwargs.pop("add_prefix_space", None)  # a transformers>=4.40 option that 4.37 did not have
        super().__init__(
            unk_token=_special(unk_token), bos_token=_special(bos_token), eos_token=_special(eos_token),
            pad_token=_special(pad_token), sp_model_kwargs=self.sp_model_kwargs, add_bos_token=add_bos_token,
            add_eos_token=add_eos_token, clean_up_tokenization_spaces=clean_up_tokenization_spaces, legacy=self.legacy,
            **kwargs,
        )

    # ------------------------------------------------------------------ pickling (DataLoader workers)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["sp_model"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.sp_model = _processor(self._model_proto, self.legacy, self.sp_model_kwargs)

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        return self.sp_model.get_piece_size()

    def get_vocab(self) -> dict[str, int]:
        vocab = {self.sp_model.id_to_piece(i): i for i in range(self.vocab_size)}
        vocab.update(self._added_tokens_encoder)
        return vocab

    def _convert_token_to_id(self, token: str) -> int:
        return self.sp_model.piece_to_id(token)

    def _convert_id_to_token(self, index: int) -> str:
        return self.sp_model.id_to_piece(index)

    # ------------------------------------------------------------------ encoding

    def tokenize(self, text: str, **kwargs) -> list[str]:
        """Pieces of ``text``; special and added tokens are split out first (transformers' base class), then each
        remaining text is encoded by `_tokenize`. legacy=False puts one "▁" in front of the whole text instead of
        the model's dummy prefix on every text (transformers 4.37 `LlamaTokenizer.tokenize`)."""
        if self.legacy or not text:
            return super().tokenize(text, **kwargs)
        tokens = super().tokenize(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "), **kwargs)
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
            tokens = tokens[1:]  # text that starts with a special token gets no prefix of its own
        return tokens

    def _tokenize(self, text: str, **kwargs) -> list[str]:
        """SentencePiece pieces of one text without special tokens. With legacy=False and a leading space the model
        (whose dummy prefix is off) would not keep that space as "▁" at the very start, so the text is encoded
        behind the unk token's text and those pieces are cut off again (transformers 4.37's rule)."""
        if self.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return self.sp_model.encode(text, out_type=str)
        unk = str(self.unk_token)
        pieces = self.sp_model.encode(unk + text, out_type=str)
        skip = len(self.sp_model.encode(unk))
        return pieces[skip:] if len(pieces) >= skip else pieces

    def build_inputs_with_special_tokens(self, token_ids_0: list[int], token_ids_1: list[int] | None = None):
        """[bos] ids [eos] (each when add_bos_token / add_eos_token), and the same again for a second sequence."""
        bos = [self.bos_token_id] if self.add_bos_token else []
        eos = [self.eos_token_id] if self.add_eos_token else []
        out = bos + token_ids_0 + eos
        if token_ids_1 is not None:
            out += bos + token_ids_1 + eos
        return out

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens: bool = False):
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, already_has_special_tokens=True)
        bos, eos = [1] * int(bool(self.add_bos_token)), [1] * int(bool(self.add_eos_token))
        out = bos + [0] * len(token_ids_0) + eos
        if token_ids_1 is not None:
            out += bos + [0] * len(token_ids_1) + eos
        return out

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return len(self.build_inputs_with_special_tokens([], [] if pair else None))

    # ------------------------------------------------------------------ decoding

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        """Text of ``tokens``: runs of ordinary pieces go through SentencePiece's decoder (byte fallback, "▁" ->
        space), special and added tokens are kept as their text. The leading "▁" of the first piece is the prefix
        space that encoding added, so it is removed (transformers 4.37); legacy=True puts a space before a special
        token that follows ordinary pieces, as 4.37 did."""
        if not tokens:
            return ""
        tokens = list(tokens)
        if tokens[0].startswith(SPIECE_UNDERLINE) and tokens[0] not in self._added_tokens_encoder:
            tokens[0] = tokens[0][1:]
        literal = set(self.all_special_tokens) | set(self._added_tokens_encoder)
        out, run, prev_literal = "", [], False
        for i, token in enumerate(tokens):
            if token in literal:
                if not prev_literal and i != 0 and self.legacy:
                    out += " "
                out += self.sp_model.decode(run) + token
                run, prev_literal = [], True
            else:
                run.append(token)
                prev_literal = False
        return out + self.sp_model.decode(run)

    def save_pretrained(self, save_directory, *args, filename_prefix: str | None = None, **kwargs):
        """transformers' save, with the tokenizer_config.json the original stack reads: class "LlamaTokenizer" (so
        `load_tokenizer` and transformers 4.x pick it up again) and add_bos_token / add_eos_token, which
        transformers 5 leaves out."""
        files = super().save_pretrained(save_directory, *args, filename_prefix=filename_prefix, **kwargs)
        cfg_file = Path(save_directory) / ((filename_prefix + "-" if filename_prefix else "") + "tokenizer_config.json")
        cfg = json.loads(cfg_file.read_text())
        cfg.update(tokenizer_class="LlamaTokenizer", add_bos_token=self.add_bos_token, add_eos_token=self.add_eos_token)
        cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
        return files

    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        """Writes the unmodified SentencePiece model next to the saved config."""
        name = (filename_prefix + "-" if filename_prefix else "") + SENTENCEPIECE_FILE
        out = os.path.join(save_directory, name)
        if os.path.abspath(out) != os.path.abspath(self.vocab_file):
            if os.path.isfile(self.vocab_file):
                shutil.copyfile(self.vocab_file, out)
            else:
                Path(out).write_bytes(self._model_proto)
        return (out,)


def _tokenizer_config(tokenizer_dir: Path) -> dict:
    cfg = tokenizer_dir / "tokenizer_config.json"
    if not cfg.is_file():
        return {}
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg} is not valid JSON: {err}") from None


def is_sentencepiece_llama(tokenizer_dir: str | os.PathLike) -> bool:
    """Whether the original stack read this directory with the slow SentencePiece `LlamaTokenizer`: a
    `tokenizer.model` that SentencePiece can load (Llama-3's tiktoken file of the same name cannot) and a
    tokenizer_config.json that names a Llama tokenizer class or none."""
    tokenizer_dir = Path(tokenizer_dir)
    model_file = tokenizer_dir / SENTENCEPIECE_FILE
    if not model_file.is_file():
        return False
    cls = _tokenizer_config(tokenizer_dir).get("tokenizer_class")
    if cls is not None and cls not in LLAMA_TOKENIZER_CLASSES:
        return False
    try:
        spm.SentencePieceProcessor(model_file=str(model_file))
    except (RuntimeError, OSError):
        return False
    return True


def load_tokenizer(tokenizer_dir: str | os.PathLike):
    """The tokenizer for a checkpoint's tokenizer directory: `SentencePieceLlamaTokenizer` when the original stack
    used the slow SentencePiece `LlamaTokenizer` (see `is_sentencepiece_llama`), else `AutoTokenizer`.

    add_bos_token / add_eos_token / legacy are passed from tokenizer_config.json explicitly: transformers 5 drops
    add_*_token from the config when a tokenizer.json sits next to it, and they decide the ids here.
    """
    tokenizer_dir = Path(tokenizer_dir)
    if not is_sentencepiece_llama(tokenizer_dir):
        return AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = _tokenizer_config(tokenizer_dir)
    explicit = {k: cfg[k] for k in ("add_bos_token", "add_eos_token", "legacy") if k in cfg}
    return SentencePieceLlamaTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True, **explicit)
