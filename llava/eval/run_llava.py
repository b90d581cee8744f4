"""Ask one question about one or more images:

    python -m llava.eval.run_llava --model-path DIR --image-file IMG[,IMG2] --query "..." --visual-token-num 58

Greedy by default (`--temperature` > 0 samples); the conversation template is the checkpoint's own (`conv_mode`
in its config) unless `--conv-mode` names one; generation stops at the template's stop string or EOS. A
transformers-native directory (LLaVA-OneVision-hf, Qwen-VL, see llava/model/native.py) is asked through its
processor's chat template and stops at EOS. Expected
errors (a bad path, image, budget or template) print one line and exit 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import sys

from llava.cli import check_conv_mode, run_cli
from llava.conversation import conv_templates
from llava.inference import (
    add_model_args,
    answer,
    answer_native,
    build_prompt,
    check_device,
    generation_kwargs,
    load_from_args,
    native_handle,
    native_prompt,
    resolve_conv_mode,
    stop_string,
    trim_at_stop,
)
from llava.mm_utils import KeywordsStoppingCriteria, load_images
from llava.model.pruning import PruningConfig


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
    PruningConfig.from_args(args)  # a bad pruning flag fails here, before the model loads
    images = load_images(args.image_file.split(args.sep))
    tokenizer, model, image_processor, _ = load_from_args(args)
    if native_handle(model) is not None:  # transformers' own class: its processor and chat template
        return answer_natively(args, model, image_processor, images)
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


def answer_natively(args, model, processor, images) -> str:
    """A transformers-native checkpoint (llava/model/native.py): the prompt from the processor's chat template,
    generation until EOS."""
    prompt = native_prompt(processor, args.query, len(images), args.conv_mode)
    text, v_token_num = answer_native(model, processor, prompt, images, **generation_kwargs(args))
    pruning = native_handle(model).pruning
    print(text)
    print(f"[FasterVLM] {v_token_num} visual tokens kept ({pruning.method}, {pruning.visual_token_num} per crop)",
          file=sys.stderr)
    return text


def cli(argv=None) -> int:
    return run_cli(main, argv)


if __name__ == "__main__":
    sys.exit(cli())
