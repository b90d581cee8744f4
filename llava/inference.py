"""From a question and its images to an answer: the prompt, the generation settings, one prompt or a left-padded
batch through `model.generate`, and the model flags every command line shares.

Two ways of asking, behind one small interface (`asking_for`): `LlavaAsking` (our model: a conversation template,
`tokenizer_image_token`, `process_images`, `generate_batch`) and `NativeAsking` (a transformers-native model from
llava/model/native.py: the processor's chat template, the processor's own batch, `generate_native_batch`). The eval
loop (`llava.eval.answering`) and the lmms-eval plugin call only `sample` / `generate`, so they keep one loop.

Used by `llava.eval.run_llava`, the eval entry points (`llava.eval.answering`), the demo and the analyses, so that
each asks the model the same way. The prompt follows LLaVA's `run_llava.py` / `model_vqa_loader.py`
(github.com/haotian-liu/LLaVA, llava/eval/): one `<image>` per image before the query, in the template's user turn.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from llava.cli import check_conv_mode
from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_PLACEHOLDER
from llava.conversation import Conversation, SeparatorStyle, conv_templates
from llava.integrations.transformers.handle import HANDLE_ATTRIBUTE
from llava.mm_utils import get_model_name_from_path, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.model.native import CHAT_TEMPLATE_FILES
from llava.model.placeholders import left_pad
from llava.model.pruning import PruningConfig

DEFAULT_CONV_MODE = "vicuna_v1"  # when neither --conv-mode nor the checkpoint's config names one (LLaVA-1.5)


# --------------------------------------------------------------------------- the prompt


def build_prompt(query: str, n_images: int, conv_mode: str) -> str:
    """`<image-placeholder>` marks where images go; without it, one `<image>` per image is put first."""
    if IMAGE_PLACEHOLDER in query:
        query = re.sub(re.escape(IMAGE_PLACEHOLDER), DEFAULT_IMAGE_TOKEN, query)
    elif DEFAULT_IMAGE_TOKEN not in query:
        query = (DEFAULT_IMAGE_TOKEN + "\n") * n_images + query
    conv = conv_templates[conv_mode].copy()
    conv.append_message(conv.roles[0], query)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


def resolve_conv_mode(requested: str | None, model_config) -> str:
    """--conv-mode if given, else the checkpoint's own `conv_mode`, else vicuna_v1."""
    if requested:
        return check_conv_mode(requested)
    own = getattr(model_config, "conv_mode", None)
    if own:
        return check_conv_mode(own, "the checkpoint's config.json conv_mode")
    return DEFAULT_CONV_MODE


def stop_string(conv: Conversation) -> str:
    """The text that ends an assistant turn in `conv`'s template: generation stops there (upstream LLaVA's
    run_llava stops on `sep2` for the two-separator style and on `sep` otherwise; here LLAMA_2 and PLAIN also
    use the separator written after an assistant turn, which is what the model learned to emit)."""
    if conv.sep_style == SeparatorStyle.MPT:
        text = conv.sep
    else:
        text = conv.sep if conv.sep2 is None else conv.sep2
    return text.strip() or text


def trim_at_stop(text: str, stop: str) -> str:
    """The answer before the first `stop` (the stopping criterion lets the stop string itself through)."""
    return text.split(stop, 1)[0].strip() if stop else text.strip()


# --------------------------------------------------------------------------- generation


def generation_kwargs(args) -> dict:
    """`generate` settings from --temperature / --top_p / --num_beams / --max_new_tokens: greedy at temperature 0
    (top_p is then ignored), sampling above."""
    sample = args.temperature > 0
    kw = dict(do_sample=sample, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, use_cache=True)
    if sample:
        kw.update(temperature=args.temperature, top_p=args.top_p)
    return kw


def pad_id(tokenizer) -> int:
    """The id prompts are padded with: the tokenizer's pad token, else EOS (LLaMA tokenizers have none)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def answer(model, tokenizer, image_processor, prompt: str, images, **gen_kwargs):
    """Generate for one prompt about `images` (PIL, in prompt order); returns (text, kept visual tokens, [CLS]
    attention) as `model.generate` gives them."""
    pixels = process_images(images, image_processor, model.config, anyres_mode=model.pruning.anyres_mode)
    pixels = pixels.to(model.device) if isinstance(pixels, torch.Tensor) else [p.to(model.device) for p in pixels]
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt").unsqueeze(0).to(model.device)
    out, v_token_num, cls_attn = model.generate(ids, images=pixels, image_sizes=[im.size for im in images],
                                                pad_token_id=pad_id(tokenizer), **gen_kwargs)
    return tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip(), v_token_num, cls_attn


def native_handle(model):
    """The `PruningHandle` of a transformers-native model (llava/model/native.py), None for our own model."""
    return model.__dict__.get(HANDLE_ATTRIBUTE)


def native_prompt(processor, query: str, n_images: int, conv_mode: str | None = None) -> str:
    """The prompt of a native model: its processor's chat template with one image entry per image before the query
    (the `{"type": "image"}` content items the llava-hf / Qwen-VL templates expand to their image tokens);
    Video-LLaVA's `VideoLlavaInputs` has no template: `build_prompt` with conv_mode (default llava_v1, as its
    video prompt). A template-less processor otherwise: an error naming the files it is read from."""
    if not hasattr(processor, "apply_chat_template"):
        return build_prompt(query, n_images, conv_mode or "llava_v1")
    if processor.chat_template is None:
        raise ValueError(f"the checkpoint's processor has no chat template: expected one of "
                         f"{list(CHAT_TEMPLATE_FILES)} in the model directory")
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": query}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


def answer_native(model, processor, prompt: str, images, **gen_kwargs) -> tuple[str, int]:
    """Generate for one prompt about `images` with a native model and its processor; returns (the new tokens'
    text, visual tokens kept): `generate_native_batch` on a batch of one."""
    (answer,) = generate_native_batch(model, processor, [Sample(0, prompt=prompt, images=list(images))], gen_kwargs)
    return answer


def generate_batch(model, tokenizer, samples, gen_kwargs: dict) -> list[tuple[str, int]]:
    """(answer text, visual tokens kept) per sample, one `generate` call for all of them.

    samples: objects with `input_ids` ((L_i,) LongTensor with IMAGE_TOKEN_INDEX), `pixels` ((3, S, S) or
    (crops, 3, S, S), None for a text-only prompt) and `image_size` ((width, height) or None), as
    `llava.eval.answering.QuestionDataset` makes them. Prompts are left-padded (`left_pad`) with an attention mask,
    so each sample's answer equals its batch-size-1 answer under greedy decoding.
    """
    pad = pad_id(tokenizer)
    ids, mask = left_pad([s.input_ids for s in samples], fill=pad)  # (B, L) each
    with_image = [s for s in samples if s.pixels is not None]
    images = [s.pixels.to(model.device) for s in with_image] or None
    sizes = [s.image_size for s in with_image] or None
    with torch.inference_mode():
        out, v_token_num, _ = model.generate(ids.to(model.device), attention_mask=mask.to(model.device),
                                             images=images, image_sizes=sizes, pad_token_id=pad, **gen_kwargs)
    texts = [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
    counts = v_token_num if isinstance(v_token_num, list) else [int(v_token_num)] * len(samples)
    return list(zip(texts, counts))


def native_batch(processor, samples, device, dtype) -> dict:
    """The processor's inputs for `samples` (their `prompt` and `images`), left-padded to one (B, L) batch on
    `device`, floating tensors in `dtype`. Images go in prompt order, flat over the samples (each processor pairs
    them with its image entries in that order)."""
    images = [im for s in samples for im in s.images] or None
    # transformers' processors pad only when asked to; Video-LLaVA's VideoLlavaInputs always pads, takes no flag
    padding = {"padding": True} if hasattr(processor, "apply_chat_template") else {}
    batch = processor(text=[s.prompt for s in samples], images=images, return_tensors="pt", padding_side="left",
                      **padding)
    return {k: v.to(device, dtype=dtype) if v.is_floating_point() else v.to(device)
            for k, v in batch.items() if isinstance(v, torch.Tensor)}


def generate_native_batch(model, processor, samples, gen_kwargs: dict) -> list[tuple[str, int]]:
    """(answer text, visual tokens kept) per sample of a transformers-native model, one `generate` call for all.

    samples: `Sample`s with `prompt` (the chat-template text, `native_prompt`) and `images` (PIL). The prompts are
    left-padded with an attention mask by the processor, so under greedy decoding each answer equals its batch-1
    answer; the kept counts are the pruning handle's, per sample (0 for a text-only one).
    """
    batch = native_batch(processor, samples, model.device, model.dtype)
    with torch.inference_mode():
        out = model.generate(**batch, pad_token_id=pad_id(processor.tokenizer), **gen_kwargs)
    # generate returns the (padded) prompt first: every answer starts at the same column
    texts = processor.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    last = native_handle(model).last
    counts = list(last.v_token_num) if last is not None else [0] * len(samples)
    return [(text.strip(), int(n)) for text, n in zip(texts, counts)]


# --------------------------------------------------------------------------- one interface for both


@dataclass
class Sample:
    """One question ready to be batched. Our model: `input_ids` / `pixels` / `image_size`; a native model:
    `prompt` / `images`. `error` (--skip-bad-images): why the image could not be read (then nothing else is set)."""

    index: int  # into the questions being answered
    input_ids: Any = None  # (L,) LongTensor with IMAGE_TOKEN_INDEX
    pixels: Any = None  # (3, S, S) or (crops, 3, S, S) tensor, None without an image
    image_size: tuple[int, int] | None = None  # (width, height)
    error: str | None = None
    prompt: str | None = None  # native: the chat-template prompt (image entries expanded by the processor)
    images: list = field(default_factory=list)  # native: PIL images in prompt order


class LlavaAsking:
    """Our model: `build_prompt` with a conversation template, the image through `process_images` (one per prompt;
    several go through `answer`), batches through `generate_batch`. Picklable (DataLoader workers)."""

    def __init__(self, tokenizer, image_processor, model_config, conv_mode: str, anyres_mode: str | None = None):
        self.tokenizer, self.image_processor, self.model_config = tokenizer, image_processor, model_config
        self.conv_mode, self.anyres_mode = conv_mode, anyres_mode

    def sample(self, index: int, query: str, images: list) -> Sample:
        ids = tokenizer_image_token(build_prompt(query, len(images), self.conv_mode), self.tokenizer,
                                    return_tensors="pt")
        if not images:
            return Sample(index, ids)
        pixels = process_images(images[:1], self.image_processor, self.model_config, anyres_mode=self.anyres_mode)
        return Sample(index, ids, pixels[0], images[0].size)

    def generate(self, model, samples: list[Sample], gen_kwargs: dict) -> list[tuple[str, int]]:
        return generate_batch(model, self.tokenizer, samples, gen_kwargs)


class NativeAsking:
    """A transformers-native model: `native_prompt` (the processor's chat template; Video-LLaVA: `conv_mode`), the
    images kept as PIL for the processor, batches through `generate_native_batch`. Under FastV each sample is asked
    alone: FastV refuses a batch whose samples drop different numbers of tokens (any two Qwen images of different
    sizes, OneVision grids that differ, image and text-only samples), and greedy answers equal batch 1 anyway."""

    def __init__(self, processor, conv_mode: str | None = None):
        self.processor, self.conv_mode = processor, conv_mode

    def sample(self, index: int, query: str, images: list) -> Sample:
        prompt = native_prompt(self.processor, query, len(images), self.conv_mode)
        return Sample(index, prompt=prompt, images=list(images))

    def generate(self, model, samples: list[Sample], gen_kwargs: dict) -> list[tuple[str, int]]:
        if native_handle(model).llm_pruner is not None and len(samples) > 1:
            return [answer for s in samples for answer in self.generate(model, [s], gen_kwargs)]
        return generate_native_batch(model, self.processor, samples, gen_kwargs)


def asking_for(model, tokenizer, image_processor, conv_mode: str | None) -> LlavaAsking | NativeAsking:
    """How to ask `model` as `load_pretrained_model` returned it (with its tokenizer and image processor, which is
    the whole processor for a native model)."""
    if native_handle(model) is not None:
        return NativeAsking(image_processor, conv_mode)
    return LlavaAsking(tokenizer, image_processor, model.config, conv_mode, model.pruning.anyres_mode)


# --------------------------------------------------------------------------- the model flags


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None) -> None:
    """A CUDA device asked for on a machine without one fails here, in words, not inside torch."""
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available (torch.cuda.is_available() is False); "
                         "use --device cpu")


def add_model_args(parser: argparse.ArgumentParser, model_path_required: bool = True) -> None:
    """Flags shared by every entry point that loads a model (`model_path_required=False`: a command that can also
    run without a model, e.g. the analyses' --replot, checks --model-path itself)."""
    parser.add_argument("--model-path", required=model_path_required)
    parser.add_argument("--model-base", default=None)
    parser.add_argument("--conv-mode", default="vicuna_v1")
    PruningConfig.add_cli_args(parser)  # --visual-token-num, --pruning-method, --anyres-mode, --fastv-layer
    parser.add_argument("--vision-tower-path", default=None, help="local copy of the config's mm_vision_tower")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--temperature", type=float, default=0.2)  # run_llava: 0 (greedy)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=512)


def load_from_args(args):
    """`load_pretrained_model` with the flags of `add_model_args`: (tokenizer, model, image_processor, context)."""
    return load_pretrained_model(
        args.model_path, args.model_base, get_model_name_from_path(args.model_path),
        device=args.device or default_device(), vision_tower_path=args.vision_tower_path,
        pruning=PruningConfig.from_args(args),
    )
