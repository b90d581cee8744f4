"""A tiny Llama-style sentencepiece tokenizer, trained at test time, laid out like a LLaVA checkpoint.

``make_llama_tokenizer_dir(path)`` writes ``tokenizer.model`` + ``tokenizer_config.json`` (the
fields liuhaotian/llava-v1.5-7b ships) into ``path`` and returns ``path``. Load it with
``AutoTokenizer.from_pretrained(path)``; works offline (``HF_HUB_OFFLINE=1``).

With transformers 5.24 it loads as ``LlamaTokenizer`` (the tokenizers-backed class; 5.x has no
separate slow/fast pair), ids: unk 0, bos 1, eos 2, no pad token; ``tokenizer(text)`` prepends BOS
and no EOS, like the real Llama tokenizer. Like Llama's, the model uses byte fallback (so ``\\n``
becomes ``<0x0A>``), a dummy prefix space and no whitespace normalisation.
"""

from __future__ import annotations

import json
import os
import random

import sentencepiece as spm

VOCAB_SIZE = 400  # 3 specials + 256 byte-fallback pieces + ~140 learned pieces

TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "legacy": False,
    "add_bos_token": True,
    "add_eos_token": False,
    "model_max_length": 2048,
    "pad_token": None,
    "padding_side": "right",
}

_WORDS = (
    "a chat between curious user human and an artificial intelligence assistant the gives helpful "
    "detailed polite answers to questions what is in this image describe picture color red green blue "
    "cat dog USER ASSISTANT yes no answer with single word or phrase there are two three cars on street"
).split()


def _corpus(num_lines: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(12)) for _ in range(num_lines)]
    lines += ["USER: what is this? ASSISTANT: a cat."] * 50
    return lines


def make_llama_tokenizer_dir(path: str | os.PathLike) -> str | os.PathLike:
    """Train the tiny tokenizer into ``path`` (created if needed) and return ``path``."""
    os.makedirs(path, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_prefix=os.path.join(os.fspath(path), "tokenizer"),
        vocab_size=VOCAB_SIZE,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        minloglevel=2,
    )
    os.remove(os.path.join(os.fspath(path), "tokenizer.vocab"))
    with open(os.path.join(os.fspath(path), "tokenizer_config.json"), "w") as f:
        json.dump(TOKENIZER_CONFIG, f, indent=2)
    return path
