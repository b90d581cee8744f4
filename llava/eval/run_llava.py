"""Ask one question about one or more images:

    python -m llava.eval.run_llava --model-path DIR --image-file IMG[,IMG2] --query "..." --visual-token-num 58
"""

from __future__ import annotations

import argparse
import re
import sys

import torch

from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_PLACEHOLDER
from llava.conversation import conv_templates
from llava.mm_utils import get_model_name_from_path, load_images, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model


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
    parser.add_argument("--temperature", type=float, default=0.2)
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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--image-file", required=True, help="one image, or several joined by --sep")
    parser.add_argument("--query", required=True)
    parser.add_argument("--sep", default=",")
    args = parser.parse_args(argv)

    images = load_images(args.image_file.split(args.sep))
    tokenizer, model, image_processor, _ = load_from_args(args)
    prompt = build_prompt(args.query, len(images), args.conv_mode)
    text, v_token_num, _ = answer(model, tokenizer, image_processor, prompt, images, **generation_kwargs(args))
    print(text)
    print(f"[FasterVLM] {v_token_num} visual tokens kept ({model.pruning.method}, "
          f"{model.pruning.visual_token_num} per crop)", file=sys.stderr)
    return text


if __name__ == "__main__":
    main()
