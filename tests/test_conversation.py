"""Prompt strings of each template, written out by hand from upstream LLaVA's formats."""

import dataclasses

import pytest
from PIL import Image

from llava.conversation import (
    SeparatorStyle,
    conv_templates,
    default_conversation,
    get_conv_template,
)

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def _chat(name, *messages):
    """Template ``name`` with messages alternating user / assistant."""
    conv = get_conv_template(name)
    for i, msg in enumerate(messages):
        conv.append_message(conv.roles[i % 2], msg)
    return conv


def test_vicuna_v1_generation_prompt():
    prompt = _chat("vicuna_v1", "<image>\nWhat is shown?", None).get_prompt()
    assert prompt == VICUNA_SYSTEM + " USER: <image>\nWhat is shown? ASSISTANT:"


def test_vicuna_v1_multi_turn_uses_sep2_after_answers():
    prompt = _chat("vicuna_v1", "<image>\nQ1", "A1", "Q2", None).get_prompt()
    assert prompt == VICUNA_SYSTEM + " USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:"


def test_vicuna_v1_empty_string_is_an_open_turn():
    assert _chat("vicuna_v1", "Q", "").get_prompt() == VICUNA_SYSTEM + " USER: Q ASSISTANT:"


def test_llava_v1_says_human():
    conv = _chat("llava_v1", "Q", None)
    assert conv.get_prompt() == LLAVA_V1_SYSTEM + " USER: Q ASSISTANT:"
    assert conv.sep_style is SeparatorStyle.TWO and (conv.sep, conv.sep2) == (" ", "</s>")


def test_plain_has_no_system_and_no_roles():
    assert _chat("plain", "<image>\n", None).get_prompt() == "<image>\n\n"
    # A filled-in answer ends with sep as well (plain pretraining: image, caption, "\n").
    assert _chat("plain", "<image>", "a cat").get_prompt() == "<image>\na cat\n"


def test_mistral_instruct_inst_blocks():
    assert _chat("mistral_instruct", "<image>\nQ1", None).get_prompt() == "[INST] <image>\nQ1 [/INST]"
    prompt = _chat("mistral_instruct", "Q1", "A1", "Q2", None).get_prompt()
    assert prompt == "[INST] Q1 [/INST] A1 </s>[INST] Q2 [/INST]"


def test_llava_llama_2_wraps_system_once_and_separates_turns():
    system = conv_templates["llava_llama_2"].system
    prompt = _chat("llava_llama_2", "Q1", "A1", "Q2", None).get_prompt()
    assert prompt == f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\nQ1 [/INST] A1 </s><s>[INST] Q2 [/INST]"


def test_llama_2_rejects_empty_first_message():
    with pytest.raises(ValueError, match="user message"):
        _chat("mistral_instruct", None).get_prompt()


def test_chatml_direct():
    prompt = _chat("chatml_direct", "<image>\nQ", None).get_prompt()
    assert prompt == (
        "<|im_start|>system\nAnswer the questions.<|im_end|>"
        "<|im_start|>user\n<image>\nQ<|im_end|><|im_start|>assistant\n"
    )
    prompt = _chat("chatml_direct", "Q", "A").get_prompt()
    assert prompt.endswith("<|im_start|>user\nQ<|im_end|><|im_start|>assistant\nA<|im_end|>")


def test_image_token_inside_text_is_kept_in_place():
    prompt = _chat("vicuna_v1", "Compare <image> with <image>.", None).get_prompt()
    assert prompt == VICUNA_SYSTEM + " USER: Compare <image> with <image>. ASSISTANT:"


def test_tuple_first_message_moves_image_token_to_front():
    image = Image.new("RGB", (4, 4))
    conv = _chat("vicuna_v1", ("What is this? <image>", image, "Default"), None)
    assert conv.get_prompt() == VICUNA_SYSTEM + " USER: <image>\nWhat is this? ASSISTANT:"
    conv = _chat("vicuna_v1", ("<image>\nKeep me", image, "Default"), None)
    assert conv.get_prompt() == VICUNA_SYSTEM + " USER: <image>\nKeep me ASSISTANT:"


@pytest.mark.parametrize("text, rebuilt", [
    # Upstream LLaVA (haotian-liu/LLaVA llava/conversation.py, get_prompt) always rebuilds a tuple first message as
    # "<image>\n" + text.replace("<image>", "").strip(), also when the text already starts with <image>.
    ("<image>What is it?  ", "<image>\nWhat is it?"),
    ("<image> \n What is it?", "<image>\nWhat is it?"),
    ("  Is it <image> red <image>?  ", "<image>\nIs it  red ?"),
    ("No image token.", "<image>\nNo image token."),
])
def test_tuple_first_message_is_rebuilt_as_upstream(text, rebuilt):
    image = Image.new("RGB", (4, 4))
    conv = _chat("vicuna_v1", (text, image, "Pad"), "A1", ("Then? <image>", image, "Pad"), None)
    # Only the first message is rebuilt; a later tuple contributes its text as is.
    expected = VICUNA_SYSTEM + f" USER: {rebuilt} ASSISTANT: A1</s>USER: Then? <image> ASSISTANT:"
    assert conv.get_prompt() == expected


def test_tuple_first_message_in_other_styles():
    image = Image.new("RGB", (4, 4))
    assert _chat("plain", ("<image>caption me ", image, "Pad"), None).get_prompt() == "<image>\ncaption me\n"
    prompt = _chat("chatml_direct", ("Q <image>", image, "Pad"), None).get_prompt()
    assert prompt.endswith("<|im_start|>user\n<image>\nQ<|im_end|><|im_start|>assistant\n")


def test_tuple_first_message_with_mmtag_version():
    # Upstream's "mmtag" templates put the image in a turn of its own, answered with "Received.".
    conv = dataclasses.replace(get_conv_template("vicuna_v1"), version="v1_mmtag")
    conv.append_message("USER", ("<image>\nWhat is it?", Image.new("RGB", (4, 4)), "Pad"))
    conv.append_message("ASSISTANT", None)
    assert conv.get_prompt() == (
        VICUNA_SYSTEM + " USER: <Image><image></Image> ASSISTANT: Received.</s>USER: What is it? ASSISTANT:"
    )


def test_copy_and_get_conv_template_do_not_share_messages():
    conv = get_conv_template("vicuna_v1")
    conv.append_message("USER", "hi")
    assert conv_templates["vicuna_v1"].messages == []
    clone = conv.copy()
    clone.append_message("ASSISTANT", "hello")
    assert len(conv.messages) == 1 and len(clone.messages) == 2


def test_default_conversation_is_vicuna_v1():
    assert default_conversation is conv_templates["vicuna_v1"]
    assert default_conversation.system == VICUNA_SYSTEM
    assert default_conversation.roles == ("USER", "ASSISTANT")


def test_unknown_template_lists_known_names():
    with pytest.raises(ValueError, match="vicuna_v1") as info:
        get_conv_template("vicuna_v9")
    assert "vicuna_v9" in str(info.value) and "chatml_direct" in str(info.value)
