"""The loader's tokenizer gives the prompt ids of the original stack: SentencePiece under transformers 4.37's slow
`LlamaTokenizer` rules (haotian-liu/LLaVA loads it with `use_fast=False`).

Sources of truth, none of them the code under test:
- `sentencepiece.SentencePieceProcessor` itself, driven by an oracle written here from transformers v4.37's
  `LlamaTokenizer` (huggingface/transformers src/transformers/models/llama/tokenization_llama.py): text is cut at
  special tokens; legacy=True encodes every piece of text with the model as it is (dummy prefix "▁" included);
  legacy=False gives the first piece of text the dummy prefix and the others none; bos in front;
- upstream LLaVA's `tokenizer_image_token` (llava/mm_utils.py), transcribed below: chunks between `<image>` are
  tokenized one by one, each chunk's bos dropped but the first, -200 in between;
- id sequences worked out by hand from the hand-built vocabulary of `tests/helpers_tokenizer.py` (scores listed
  there; the derivations are in the comments).
"""

import json
import pickle
import random
import re

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import get_conv_template
from llava.mm_utils import tokenizer_image_token
from llava.model.tokenizer import SentencePieceLlamaTokenizer, is_sentencepiece_llama, load_tokenizer
from tests.helpers_tokenizer import make_sentencepiece_dir, piece_ids, sentencepiece_proto

P = piece_ids()
BOS, EOS, IMG = 1, 2, IMAGE_TOKEN_INDEX
SPACE = P["▁"]  # SentencePiece's lone dummy-prefix piece: 29871 in LLaMA's vocabulary
SPECIALS = ("<s>", "</s>", "<unk>")


# ----------------------------------------------------------------------------- oracle


def _processors(proto: bytes) -> tuple[spm.SentencePieceProcessor, spm.SentencePieceProcessor]:
    """(the model as it is, the same model with add_dummy_prefix off)."""
    with_prefix = spm.SentencePieceProcessor()
    with_prefix.LoadFromSerializedProto(proto)
    m = pb.ModelProto.FromString(proto)
    m.normalizer_spec.add_dummy_prefix = False
    without = spm.SentencePieceProcessor()
    without.LoadFromSerializedProto(m.SerializeToString())
    return with_prefix, without


def oracle_ids(text: str, proto: bytes, legacy: bool, specials=SPECIALS, special_ids=None) -> list[int]:
    """transformers 4.37 slow LlamaTokenizer(text).input_ids, from SentencePiece directly."""
    with_prefix, without = _processors(proto)
    special_ids = special_ids or {s: with_prefix.piece_to_id(s) for s in specials}
    pattern = "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
    ids = [BOS]
    for i, part in enumerate(re.split(pattern, text)):
        if part in special_ids:
            ids.append(special_ids[part])
        elif part:
            first_text = i == 0  # re.split puts the text before the first special token at index 0
            ids += (with_prefix if legacy or first_text else without).encode(part)
    return ids


def upstream_tokenizer_image_token(prompt: str, encode) -> list[int]:
    """haotian-liu/LLaVA llava/mm_utils.py tokenizer_image_token, transcribed: `encode(chunk)` gives bos + ids."""
    chunks = [encode(c) for c in prompt.split("<image>")]
    out, offset = [], 0
    if chunks and chunks[0] and chunks[0][0] == BOS:
        offset = 1
        out.append(chunks[0][0])
    joined = []
    for i, chunk in enumerate(chunks):
        if i:
            joined.append([IMG] * (offset + 1))
        joined.append(chunk)
    for x in joined:
        out.extend(x[offset:])
    return out


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def proto():
    return sentencepiece_proto()


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """liuhaotian/llava-v1.5-7b's configuration: legacy false, pad_token "<unk>" in special_tokens_map.json."""
    return load_tokenizer(make_sentencepiece_dir(tmp_path_factory.mktemp("sp"), legacy=False, pad_token="<unk>"))


@pytest.fixture(scope="module")
def tok_legacy(tmp_path_factory):
    return load_tokenizer(make_sentencepiece_dir(tmp_path_factory.mktemp("sp_legacy"), legacy=True))


def _vicuna(*messages) -> str:
    conv = get_conv_template("vicuna_v1")
    for i, msg in enumerate(messages):
        conv.append_message(conv.roles[i % 2], msg)
    return conv.get_prompt()


PROMPTS = [
    _vicuna("<image>\nWhat is the cat?", None),
    _vicuna("<image>\nWhat?  Thank you.  ", None),  # VizWiz: transcribed speech with double spaces
    _vicuna("<image>\n   What   cat?\n\nAnswer.", None),
    _vicuna("Compare <image> with <image>.", None),  # text after <image> starting with a space
    _vicuna("<image> What cat?", None),
    _vicuna("<image>\nWhat?", "A cat.", "And  what?", None),  # multi-turn: "</s>USER: ..."
    _vicuna("<image>\nQuelle café? 猫 🐱", None),  # byte fallback
    "<image>\n",
    "USER: <image>",
]


# ----------------------------------------------------------------------------- hand-checked ids


def test_loader_tokenizer_class_and_special_ids(tok):
    assert isinstance(tok, SentencePieceLlamaTokenizer) and tok.legacy is False
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 0)
    assert len(tok) == len(P) and tok.convert_tokens_to_ids("▁Thank") == P["▁Thank"]


def test_double_space_merges_last(tok):
    # "What?  Thank" -> "▁What?▁▁Thank". By score: at, ▁W, ▁Wh, ▁What; ▁T, ▁Th, an, ▁Than, ▁Thank; "▁▁" (-1e9)
    # would come last but its two "▁" are no longer neighbours: one is inside "▁Thank".
    assert tok("What?  Thank").input_ids == [BOS, P["▁What"], P["?"], SPACE, P["▁Thank"]]
    # Three spaces: after "▁Thank" forms, the two lone "▁" merge into "▁▁" (LLaMA: 259, then "▁Thank").
    assert tok("What?   Thank").input_ids == [BOS, P["▁What"], P["?"], P["▁▁"], P["▁Thank"]]


def test_standard_prompt_with_image(tok):
    # "USER: " -> "▁USER:▁": US, ER, USER, ▁USER, then ":" and the lone "▁" before <image>;
    # "\nWhat?" is a new call, so it gets the dummy prefix: "▁", <0x0A> (13 as in LLaMA), W h at ?
    ids = tokenizer_image_token("USER: <image>\nWhat?", tok)
    assert P["<0x0A>"] == 13
    assert ids == [BOS, P["▁USER"], P[":"], SPACE, IMG, SPACE, 13, P["W"], P["h"], P["at"], P["?"]]


def test_leading_space_after_image_keeps_the_dummy_prefix(tok):
    # " cat" -> "▁▁cat": at, ▁c, ▁cat, leaving a lone "▁" (29871) in front, as SentencePiece does.
    ids = tokenizer_image_token("USER: <image> cat", tok)
    assert ids == [BOS, P["▁USER"], P[":"], SPACE, IMG, SPACE, P["▁cat"]]


def test_two_images_and_leading_image(tok):
    ids = tokenizer_image_token("<image>\nWhat<image> cat", tok, return_tensors="pt").tolist()
    assert ids == [BOS, IMG, SPACE, 13, P["W"], P["h"], P["at"], IMG, SPACE, P["▁cat"]]


@pytest.mark.parametrize("legacy, after_eos", [
    (False, [P["USER"], P[":"], P["▁What"], P["?"]]),  # no prefix after </s>: "USER" not "▁USER"
    (True, [P["▁USER"], P[":"], P["▁What"], P["?"]]),
    (None, [P["▁USER"], P[":"], P["▁What"], P["?"]]),  # unset in the config: transformers 4.37 used legacy
])
def test_legacy_flag_on_multi_turn(tmp_path, legacy, after_eos):
    tokenizer = load_tokenizer(make_sentencepiece_dir(tmp_path, legacy=legacy))
    assert tokenizer.legacy is (True if legacy is None else legacy)
    ids = tokenizer("USER: cat</s>USER: What?").input_ids
    assert ids == [BOS, P["▁USER"], P[":"], P["▁cat"], EOS] + after_eos


def test_text_starting_with_a_special_token(tok, tok_legacy):
    assert tok("<s>What").input_ids == [BOS, BOS, P["W"], P["h"], P["at"]]
    assert tok_legacy("<s>What").input_ids == [BOS, BOS, P["▁What"]]


# ----------------------------------------------------------------------------- oracle comparisons


@pytest.mark.parametrize("prompt", PROMPTS)
def test_prompt_ids_equal_sentencepiece(tok, tok_legacy, proto, prompt):
    for tokenizer, legacy in ((tok, False), (tok_legacy, True)):
        expected = upstream_tokenizer_image_token(prompt, lambda c: oracle_ids(c, proto, legacy))
        assert tokenizer_image_token(prompt, tokenizer) == expected, (legacy, prompt)


def test_random_texts_equal_sentencepiece(tok, tok_legacy, proto):
    words = ["What", "cat", "Thank", "USER:", "ASSISTANT:", "?", " ", "  ", "   ", "\n", "\t", "é", "猫", "</s>",
             "<s>", "<unk>", "▁", "at", "an"]
    rng = random.Random(0)
    texts = ["".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(300)]
    for tokenizer, legacy in ((tok, False), (tok_legacy, True)):
        bad = [t for t in texts if tokenizer(t).input_ids != oracle_ids(t, proto, legacy)]
        assert not bad, (legacy, bad[:5])


def test_tiny_checkpoint_tokenizer_equals_sentencepiece(v15_dir):
    """The trained tokenizer the tiny checkpoints ship goes through the loader and matches SentencePiece too."""
    tokenizer = load_tokenizer(v15_dir)
    assert isinstance(tokenizer, SentencePieceLlamaTokenizer)
    proto = (v15_dir / "tokenizer.model").read_bytes()
    legacy = json.loads((v15_dir / "tokenizer_config.json").read_text())["legacy"]
    for prompt in PROMPTS:
        expected = upstream_tokenizer_image_token(prompt, lambda c: oracle_ids(c, proto, legacy))
        assert tokenizer_image_token(prompt, tokenizer) == expected, prompt


def test_load_pretrained_model_returns_the_sentencepiece_tokenizer(load, v15_dir):
    tokenizer, *_ = load(v15_dir)
    assert isinstance(tokenizer, SentencePieceLlamaTokenizer)
    proto = (v15_dir / "tokenizer.model").read_bytes()
    prompt = _vicuna("<image>\nWhat?  Thank you.", None)
    expected = upstream_tokenizer_image_token(prompt, lambda c: oracle_ids(c, proto, False))
    assert tokenizer_image_token(prompt, tokenizer) == expected


def test_config_values_win_over_a_tokenizer_json(tmp_path, proto):
    """A re-saved checkpoint with tokenizer.json next to tokenizer.model: still SentencePiece, and the config's
    add_bos_token still holds (transformers 5 drops it from the config when it sees a tokenizer.json)."""
    d = make_sentencepiece_dir(tmp_path / "a", legacy=False, with_tokenizer_json=True)
    tokenizer = load_tokenizer(d)
    assert isinstance(tokenizer, SentencePieceLlamaTokenizer)
    assert tokenizer("What?  Thank").input_ids == oracle_ids("What?  Thank", proto, False)
    d = make_sentencepiece_dir(tmp_path / "b", legacy=False, with_tokenizer_json=True,
                               config={"add_bos_token": False, "add_eos_token": True})
    assert load_tokenizer(d)("What?  Thank").input_ids == oracle_ids("What?  Thank", proto, False)[1:] + [EOS]


def test_leading_space_with_a_whitespace_removing_normalizer(tmp_path):
    """legacy=False encodes a text that starts with a space behind the unk token's text (transformers 4.37). With a
    normalizer that drops leading spaces (LLaMA's does not), " cat" after </s> encoded alone would lose its "▁"
    (c, at); behind "<unk>" it stays "▁cat". Hand-traced; runs of spaces collapse to one."""
    tokenizer = load_tokenizer(make_sentencepiece_dir(tmp_path, legacy=False, remove_extra_whitespaces=True))
    assert tokenizer("cat</s> cat").input_ids == [BOS, P["▁cat"], EOS, P["▁cat"]]
    assert tokenizer("What?   cat").input_ids == [BOS, P["▁What"], P["?"], P["▁cat"]]


# ----------------------------------------------------------------------------- what the rest of the code uses


def test_decode_gives_back_the_text(tok, tok_legacy, proto):
    with_prefix, _ = _processors(proto)
    for tokenizer in (tok, tok_legacy):
        for text in ("What?  Thank", "\nQuelle café? 猫", "USER:   cat\n"):
            ids = tokenizer(text).input_ids
            assert tokenizer.decode(ids, skip_special_tokens=True) == with_prefix.decode(ids[1:]) == text
        assert tokenizer.batch_decode([[BOS, P["▁What"], EOS], [P["▁cat"]]], skip_special_tokens=True) == \
            ["What", "cat"]
    # A leading space: legacy=False gives it back; transformers 4.37 with legacy=True lost it, because both its
    # own "strip the first piece's ▁" and the model's dummy-prefix decoding removed a space.
    assert tok.decode(tok(" cat").input_ids, skip_special_tokens=True) == " cat"
    assert tok_legacy.decode(tok_legacy(" cat").input_ids, skip_special_tokens=True) == "cat"
    # Special tokens kept (transformers 4.37's convert_tokens_to_string, traced by hand): legacy=False decodes each
    # run of pieces without the dummy prefix, so "▁What" and "▁cat" keep their space; legacy=True decodes with it
    # (the space goes) but writes a space before a run of pieces that a special token closes.
    ids = [BOS, P["▁What"], EOS, P["▁cat"]]
    assert tok.decode(ids) == "<s> What</s> cat"
    assert tok_legacy.decode(ids) == "<s> What</s>cat"


def test_left_padding_batch(tok, proto):
    tok.padding_side = "left"
    try:
        batch = tok(["What", "What?  Thank"], padding=True, return_tensors="pt")
    finally:
        tok.padding_side = "right"
    long = oracle_ids("What?  Thank", proto, False)
    short = oracle_ids("What", proto, False)
    assert batch.input_ids.tolist() == [[0] * (len(long) - len(short)) + short, long]
    assert batch.attention_mask.tolist() == [[0] * (len(long) - len(short)) + [1] * len(short), [1] * len(long)]


def test_added_special_tokens_split_the_text(tmp_path, proto):
    """`_add_image_tokens` adds <im_patch> etc. as special tokens: new ids after the vocabulary, text split there."""
    tokenizer = load_tokenizer(make_sentencepiece_dir(tmp_path, legacy=False))
    assert tokenizer.add_tokens(["<im_patch>"], special_tokens=True) == 1
    new_id = len(P)
    assert tokenizer.convert_tokens_to_ids("<im_patch>") == new_id and len(tokenizer) == new_id + 1
    expected = oracle_ids("cat<im_patch>What", proto, False, specials=SPECIALS + ("<im_patch>",),
                          special_ids={"<s>": 1, "</s>": 2, "<unk>": 0, "<im_patch>": new_id})
    assert tokenizer("cat<im_patch>What").input_ids == expected
    assert expected == [BOS, P["▁cat"], new_id, P["W"], P["h"], P["at"]]  # no prefix after <im_patch>


def test_saved_tokenizer_loads_back_the_same(tmp_path, proto):
    d = make_sentencepiece_dir(tmp_path / "a", legacy=False, pad_token="<unk>", config={"add_bos_token": False})
    load_tokenizer(d).save_pretrained(str(tmp_path / "saved"))
    again = load_tokenizer(tmp_path / "saved")
    assert isinstance(again, SentencePieceLlamaTokenizer) and again.pad_token_id == 0
    text = "USER: cat</s>USER:  What?"
    assert again(text).input_ids == oracle_ids(text, proto, False)[1:]


def test_pickled_tokenizer_encodes_the_same(tok, proto):
    """DataLoader workers receive the tokenizer pickled."""
    clone = pickle.loads(pickle.dumps(tok))
    assert clone("USER: cat</s>USER:  What?").input_ids == oracle_ids("USER: cat</s>USER:  What?", proto, False)


# ----------------------------------------------------------------------------- which directories get it


def _gpt2_style_dir(path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(["<|endoftext|>", "a", "b", "c", "Ġ", "Ġa", "ab"])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "a"), ("a", "b")]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    path.mkdir(parents=True, exist_ok=True)
    backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}))
    return path


def test_non_sentencepiece_directories_load_as_before(tmp_path):
    gpt2 = _gpt2_style_dir(tmp_path / "gpt2")
    assert not is_sentencepiece_llama(gpt2)
    tokenizer = load_tokenizer(gpt2)
    assert not isinstance(tokenizer, SentencePieceLlamaTokenizer)
    assert tokenizer("ab a").input_ids == [6, 5]  # "ab" merged, "Ġa" merged: GPT-2 style, no bos added
    # A tokenizer.model that SentencePiece cannot read (Llama-3 keeps a tiktoken file under that name).
    tiktoken = _gpt2_style_dir(tmp_path / "tiktoken")
    (tiktoken / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")
    (tiktoken / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))  # no class named
    assert not is_sentencepiece_llama(tiktoken)
    assert not isinstance(load_tokenizer(tiktoken), SentencePieceLlamaTokenizer)


def test_tokenizer_class_decides(tmp_path):
    """Llama classes (slow or fast) were SentencePiece under use_fast=False; another class is left to transformers."""
    for name, ours in (("LlamaTokenizerFast", True), ("T5Tokenizer", False)):
        d = make_sentencepiece_dir(tmp_path / name, legacy=False)
        cfg = json.loads((d / "tokenizer_config.json").read_text())
        (d / "tokenizer_config.json").write_text(json.dumps(dict(cfg, tokenizer_class=name)))
        assert is_sentencepiece_llama(d) is ours
