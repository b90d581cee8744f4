"""Ask one question about one or more images:

    python -m llava.eval.run_llava --model-path DIR --image-file IMG[,IMG2] --query "..." --visual-token-num 58

Greedy by default (`--temperature` > 0 samples); the conversation template is the checkpoint's own (`conv_mode`
in its config) unless `--conv-mode` names one; generation stops at the template's stop string or EOS. Expected
errors (a bad path, image, budget or template) print one line and exit 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import re
import sys

import torch

from llava.cli import check_conv_mode, run_cli
from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_PLACEHOLDER
from llava.conversation import Conversation, SeparatorStyle, conv_templates
from llava.mm_utils import (
    KeywordsStoppingCriteria,
    get_model_name_from_path,
    load_images,
    process_images,
    tokenizer_image_token,
)
from llava.model.builder import load_pretrained_model

DEFAULT_CONV_MODE = "vicuna_v1"  # when neither --conv-mode nor the checkpoint's config names one (LLaVA-1.5)


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


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str | None) -> None:
    """A CUDA device asked for on a machine without one fails here, in words, not inside torch."""
    if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available (torch.cuda.is_available() is False); "
                         "use --device cpu")


def resolve_conv_mode(requested: str | None, model_config) -> str:
    """--conv-mode if given, else the checkpoint's own `conv_mode` (as llava/demo.py), else vicuna_v1."""
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


def generation_kwargs(args) -> dict:
    sample = args.temperature > 0
    kw = dict(do_sample=sample, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, use_cache=True)
    if sample:
        kw.update(temperature=args.temperature, top_p=args.top_p)
    return kw


def answer(model, tokenizer, image_processor, prompt: str, images, **gen_kwargs):
    """Generate for one prompt; returns (text, kept visual tokens, [CLS] attention)."""
    pixels = process_images(images, image_processor, model.config)
    pixels = pixels.to(model.device) if isinstance(pixels, torch.Tensor) else [p.to(model.device) for p in pixels]
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt").unsqueeze(0).to(model.device)
    out, v_token_num, cls_attn = model.generate(ids, images=pixels, image_sizes=[im.size for im in images],
                                                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                                                **gen_kwargs)
    return tokenizer.batch_decode(out, skip_special_tokens=True)[0].strip(), v_token_num, cls_attn


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every entry point that loads a model."""
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-base", default=None)
    parser.add_argument("--conv-mode", default="vicuna_v1")
    parser.add_argument("--visual-token-num", type=int, default=None,
                        help="visual tokens kept per crop (default: all, i.e. no pruning; 576 for CLIP-336)")
    parser.add_argument("--pruning-method", default="fastervlm")
    parser.add_argument("--anyres-mode", default="paper", choices=["paper", "upstream"])
    parser.add_argument("--fastv-layer", type=int, default=2, help="FastV's K: prune after this many LLM layers")
    parser.add_argument("--vision-tower-path", default=None, help="local copy of the config's mm_vision_tower")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--temperature", type=float, default=0.2)  # run_llava: 0 (greedy)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_beams", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=512)


def load_from_args(args):
    return load_pretrained_model(
        args.model_path, args.model_base, get_model_name_from_path(args.model_path),
        device=args.device or default_device(), visual_token_num=args.visual_token_num,
        pruning_method=args.pruning_method, anyres_mode=args.anyres_mode, vision_tower_path=args.vision_tower_path,
        llm_layer=args.fastv_layer,
    )


def main(argv=None) -> str:
    """Answer the query; raises on errors (see `cli` for the command line)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--image-file", required=True, help="one image, or several joined by --sep")
    parser.add_argument("--query", required=True)
    parser.add_argument("--sep", default=",")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.set_defaults(conv_mode=None, temperature=0.0)  # the checkpoint's own template; greedy
    args = parser.parse_args(argv)

    # Everything that can be checked without the model is checked before it loads.
    if args.conv_mode is not None:
        check_conv_mode(args.conv_mode)
    check_device(args.device)
    if args.visual_token_num is not None and args.visual_token_num < 1:
        raise ValueError(f"--visual-token-num {args.visual_token_num}: must be a positive number of tokens per crop")
    images = load_images(args.image_file.split(args.sep))
    tokenizer, model, image_processor, _ = load_from_args(args)
    conv_mode = resolve_conv_mode(args.conv_mode, model.config)
    prompt = build_prompt(args.query, len(images), conv_mode)
    stop = stop_string(conv_templates[conv_mode])
    gen = generation_kwargs(args)
    gen.update(eos_token_id=tokenizer.eos_token_id,
               stopping_criteria=[KeywordsStoppingCriteria([stop], tokenizer)] if stop else None)
    text, v_token_num, _ = answer(model, tokenizer, image_processor, prompt, images, **gen)
    text = trim_at_stop(text, stop)
    print(text)
    print(f"[FasterVLM] {v_token_num} visual tokens kept ({model.pruning.method}, "
          f"{model.pruning.visual_token_num} per crop)", file=sys.stderr)
    return text


def cli(argv=None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
