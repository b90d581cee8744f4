"""Chat prompt templates with the exact strings LLaVA checkpoints were trained on.

A :class:`Conversation` holds a system prompt, two role names and a list of
``[role, message]`` pairs; :meth:`Conversation.get_prompt` renders them with one
of four separator styles. A message that is ``None`` (or ``""``) is the turn the
model should fill in, so the prompt ends with the assistant's cue.

Templates live in ``conv_templates``; they are shared objects, so take a fresh
one with :func:`get_conv_template` (or ``conv_templates[name].copy()``) before
appending messages.

Example (``vicuna_v1``, one question, empty answer)::

    conv = get_conv_template("vicuna_v1")
    conv.append_message(conv.roles[0], "<image>\\nWhat is shown?")
    conv.append_message(conv.roles[1], None)
    conv.get_prompt()
    # "A chat between ... questions. USER: <image>\\nWhat is shown? ASSISTANT:"
"""

from __future__ import annotations

import dataclasses
from enum import Enum, auto
from typing import Any

from llava.constants import DEFAULT_IMAGE_TOKEN


class SeparatorStyle(Enum):
    """How turns are joined. Only the styles of the templates below are implemented."""

    TWO = auto()  # "SYSTEM<sep>ROLE: msg<sep>ROLE: msg<sep2>..."  (Vicuna v1)
    MPT = auto()  # "SYSTEM<sep>ROLEmsg<sep>ROLEmsg<sep>..."        (ChatML)
    PLAIN = auto()  # "msg<sep>msg<sep2>..."  no roles, no system      (pretraining)
    LLAMA_2 = auto()  # "[INST] <<SYS>>..<</SYS>>\n\nmsg [/INST] answer <sep2>"


Message = Any  # str, None (turn to be generated) or a (text, image, mode) tuple


def _message_text(message: Message) -> str | None:
    """The text of a message; a gradio-style ``(text, image, mode)`` tuple gives its text."""
    if isinstance(message, tuple):
        return message[0]
    return message


def _image_first(text: str) -> str:
    """The text of a first message that carries an image, as upstream LLaVA rebuilds it: every ``<image>`` is
    removed, the rest stripped, and one ``<image>`` plus a newline put in front (even when the text already
    started with ``<image>``: "<image>What?  " -> "<image>\\nWhat?").
    Source: haotian-liu/LLaVA llava/conversation.py, `Conversation.get_prompt`."""
    return DEFAULT_IMAGE_TOKEN + "\n" + _without_image(text)


def _without_image(text: str) -> str:
    return text.replace(DEFAULT_IMAGE_TOKEN, "").strip()


def _first_image_turns(conv: "Conversation", turns: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """``turns`` with the first one rebuilt because its message was a (text, image, mode) tuple. "mmtag" templates
    get two turns in front instead (the image wrapped in <Image></Image>, then the assistant's "Received."), and
    the first message loses its image token (upstream LLaVA)."""
    role, text = turns[0]
    if "mmtag" in conv.version:
        return [(conv.roles[0], "<Image><image></Image>"), (conv.roles[1], "Received."),
                (role, _without_image(text))] + turns[1:]
    return [(role, _image_first(text))] + turns[1:]


@dataclasses.dataclass
class Conversation:
    """Conversation history plus the template that renders it.

    Attributes:
        system: system prompt, placed before the first turn (style-dependent wrapping).
        roles: (user role, assistant role), e.g. ("USER", "ASSISTANT").
        messages: list of [role, message]; message None means "to be generated".
        offset: number of leading few-shot messages (kept for API compatibility).
        sep_style: how turns are joined, see :class:`SeparatorStyle`.
        sep: separator after the system prompt and after user turns.
        sep2: separator after assistant turns (None means: same as ``sep``).
        version: template family tag ("v1", "llama_v2", "mpt", ...).
    """

    system: str
    roles: tuple[str, str]
    messages: list[list[Message]] = dataclasses.field(default_factory=list)
    offset: int = 0
    sep_style: SeparatorStyle = SeparatorStyle.TWO
    sep: str = " "
    sep2: str | None = None
    version: str = "Unknown"

    def append_message(self, role: str, message: Message) -> None:
        """Add one turn. Pass ``None`` as the last assistant message to get a generation prompt."""
        self.messages.append([role, message])

    def copy(self) -> "Conversation":
        """A copy whose message list can be changed without touching this one."""
        return dataclasses.replace(self, messages=[[role, msg] for role, msg in self.messages])

    def get_prompt(self) -> str:
        """Render the conversation as the single string the language model reads.

        Message text is used as is (an ``<image>`` inside it stays where it is). Only a first
        message given as an ``(text, image, mode)`` tuple is rebuilt as in upstream LLaVA:
        ``"<image>\\n" + text without <image>, stripped`` (see `_first_image_turns`).
        """
        turns = [(role, _message_text(msg)) for role, msg in self.messages]
        if turns and isinstance(self.messages[0][1], tuple):
            turns = _first_image_turns(self, turns)
        render = _RENDERERS.get(self.sep_style)
        if render is None:
            raise ValueError(f"Unsupported separator style: {self.sep_style}")
        return render(self, turns)


def _separators(conv: Conversation) -> tuple[str, str]:
    """(after user turns, after assistant turns); a missing sep2 falls back to sep."""
    return conv.sep, conv.sep if conv.sep2 is None else conv.sep2


def _render_two(conv: Conversation, turns: list[tuple[str, str | None]]) -> str:
    seps = _separators(conv)
    out = conv.system + seps[0]
    for i, (role, text) in enumerate(turns):
        out += f"{role}: {text}{seps[i % 2]}" if text else f"{role}:"
    return out


def _render_mpt(conv: Conversation, turns: list[tuple[str, str | None]]) -> str:
    out = conv.system + conv.sep
    for role, text in turns:
        out += f"{role}{text}{conv.sep}" if text else role
    return out


def _render_plain(conv: Conversation, turns: list[tuple[str, str | None]]) -> str:
    seps = _separators(conv)
    out = conv.system
    for i, (_, text) in enumerate(turns):
        if text:
            out += text + seps[i % 2]
    return out


def _render_llama_2(conv: Conversation, turns: list[tuple[str, str | None]]) -> str:
    if not turns or not turns[0][1] or turns[0][0] != conv.roles[0]:
        raise ValueError("LLAMA_2 prompts must start with a non-empty user message")
    system = f"<<SYS>>\n{conv.system}\n<</SYS>>\n\n" if conv.system else ""
    out = ""
    for i, (_, text) in enumerate(turns):
        if not text:
            continue
        if i == 0:
            text = system + text
        if i % 2 == 0:
            out += f"{conv.sep}[INST] {text} [/INST]"
        else:
            out += f" {text} {conv.sep2}"
    # Upstream strips the leading separator: the first turn is not preceded by one.
    return out.removeprefix(conv.sep) if conv.sep else out


_RENDERERS = {
    SeparatorStyle.TWO: _render_two,
    SeparatorStyle.MPT: _render_mpt,
    SeparatorStyle.PLAIN: _render_plain,
    SeparatorStyle.LLAMA_2: _render_llama_2,
}


conv_vicuna_v1 = Conversation(
    system="A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    roles=("USER", "ASSISTANT"),
    version="v1",
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
)

conv_llava_v1 = Conversation(
    system="A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    roles=("USER", "ASSISTANT"),
    version="v1",
    sep_style=SeparatorStyle.TWO,
    sep=" ",
    sep2="</s>",
)

# Pretraining format: the image token, the caption, a newline.
conv_llava_plain = Conversation(
    system="",
    roles=("", ""),
    version="plain",
    sep_style=SeparatorStyle.PLAIN,
    sep="\n",
)

conv_llava_llama_2 = Conversation(
    system="You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language.",
    roles=("USER", "ASSISTANT"),
    version="llama_v2",
    sep_style=SeparatorStyle.LLAMA_2,
    sep="<s>",
    sep2="</s>",
)

# LLaVA-1.6-Mistral.
conv_mistral_instruct = Conversation(
    system="",
    roles=("USER", "ASSISTANT"),
    version="llama_v2",
    sep_style=SeparatorStyle.LLAMA_2,
    sep="",
    sep2="</s>",
)

conv_mpt = Conversation(
    system="<|im_start|>system\n"
    "A conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest answers.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    version="mpt",
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
)

# LLaVA-1.6-34B (Nous-Hermes-2-Yi).
conv_chatml_direct = Conversation(
    system="<|im_start|>system\nAnswer the questions.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    version="mpt",
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>",
)

# SmolLM2-Instruct's ChatML, as its tokenizer's chat template renders it (a newline after every <|im_end|>), with a
# short system prompt asking for one-word answers: the template of the tiny real LLaVA (llava/model/tiny_real.py).
conv_smollm2_short = Conversation(
    system="<|im_start|>system\nAnswer the question using a single word.",
    roles=("<|im_start|>user\n", "<|im_start|>assistant\n"),
    version="chatml",
    sep_style=SeparatorStyle.MPT,
    sep="<|im_end|>\n",
)

default_conversation = conv_vicuna_v1

conv_templates: dict[str, Conversation] = {
    "v1": conv_vicuna_v1,
    "vicuna_v1": conv_vicuna_v1,
    "llava_v1": conv_llava_v1,
    "plain": conv_llava_plain,
    "llava_llama_2": conv_llava_llama_2,
    "mistral_instruct": conv_mistral_instruct,
    "mpt": conv_mpt,
    "chatml_direct": conv_chatml_direct,
    "smollm2_short": conv_smollm2_short,
}


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of the template called ``name``; ValueError lists the known names."""
    try:
        return conv_templates[name].copy()
    except KeyError:
        known = ", ".join(sorted(conv_templates))
        raise ValueError(f"Unknown conversation template {name!r}; known templates: {known}") from None
