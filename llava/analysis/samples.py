"""The samples the analyses read (LLaVA training conversations), the missing-image report, one sample's prefill
inputs, and the setups the analyses refuse (LLaVA-1.6 checkpoints, pruning)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

from llava.analysis.capture import ImageSpan
from llava.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from llava.eval.questions import ImageRef, Question, read_jsonl_questions, require_image_folder
from llava.model.checkpoint import read_llava_config, resolve_local_dir


@dataclass
class Prefill:
    """What the LLM gets for one sample: embeddings (1, S, D), mask (1, S), the image span, [CLS] attention (P,)."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    span: ImageSpan
    cls_attn: torch.Tensor


def first_human_turn(record: dict, where: str) -> str:
    """The prompt of a LLaVA conversation without its `<image>` token (the analysis puts the image first).

    As the original analysis: `<image>\n`, then any other `<image>`, is removed, and nothing else ("Q?\n<image>"
    leaves "Q?\n"), so the prompts' tokens are the original's.
    """
    for turn in record.get("conversations") or []:
        if turn.get("from") == "human":
            return turn["value"].replace(DEFAULT_IMAGE_TOKEN + "\n", "").replace(DEFAULT_IMAGE_TOKEN, "")
    raise ValueError(f"{where}: sample {record.get('id')!r} has no human turn in 'conversations'")


def read_samples(question_file: str, image_folder: str) -> list[Question]:
    """The samples of a LLaVA conversation jsonl (`id`, `image`, `conversations`) as eval `Question`s.

    The query is the first human turn; as in the original analysis the image goes first in the prompt
    (``<image>\\n`` + question) wherever the conversation put it, so every sample's image tokens start at the
    same position. `metadata['line']` is the sample's line number in the file.
    """
    records = read_jsonl_questions(question_file, required=("id", "image", "conversations"))
    folder = require_image_folder(image_folder)
    questions = []
    for i, r in enumerate(records):
        query = first_human_turn(r, f"{question_file} sample #{i + 1}")
        questions.append(Question(r["id"], query, query, ImageRef(path=os.path.join(folder, r["image"])),
                                  metadata={"line": i + 1}, source=i))
    return questions


def report_missing(questions: list[Question], skip: bool) -> list[Question]:
    """The questions whose image file is missing. Without `skip` any is an error listing their sample ids."""
    missing = [q for q in questions if not os.path.isfile(q.image.path)]
    if not missing:
        return []
    listed = "\n".join(f"  id {q.question_id!r} (line {q.metadata['line']}): {q.image.path}" for q in missing[:20])
    more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
    head = f"{len(missing)} of {len(questions)} sample image(s) not found"
    if not skip:
        raise FileNotFoundError(f"{head}:\n{listed}{more}\nfix --image-folder, or pass --skip-missing to analyse "
                                "the others (the skipped ids are recorded in the summary)")
    if len(missing) == len(questions):
        raise FileNotFoundError(f"{head} (all of them):\n{listed}{more}")
    print(f"[analysis] skipping {head}:\n{listed}{more}", file=sys.stderr)
    return missing


def prefill_inputs(model, input_ids: torch.Tensor, pixels: torch.Tensor, image_size) -> Prefill:
    """Embeddings of one prompt (L,) with one IMAGE_TOKEN_INDEX and one image (3, S, S), as generate builds them."""
    ids = input_ids[None].to(model.device)
    mm = model.prepare_multimodal_inputs(ids, None, pixels[None].to(model.device), [image_size])
    start = int((input_ids == IMAGE_TOKEN_INDEX).nonzero()[0])
    return Prefill(mm.inputs_embeds, mm.attention_mask, ImageSpan(start, start + mm.v_token_num[0]),
                   mm.cls_attn[0][0])


def refuse_unsupported_checkpoint(model_path: str) -> None:
    """LLaVA-1.6 is refused before anything heavy is loaded: per-position averages need one fixed token layout."""
    config = read_llava_config(resolve_local_dir(model_path))
    if config.is_anyres:
        raise NotImplementedError(
            f"{model_path} is a LLaVA-1.6 (anyres) checkpoint: its images become a base crop plus a grid of crops "
            f"that depends on each image's size, so image-token positions do not line up across samples and "
            f"per-position averages are undefined. The attention analyses follow the paper (LLaVA-1.5: one crop, "
            f"576 tokens, per image); use a LLaVA-1.5 checkpoint")


def refuse_pruning(model) -> None:
    """The analyses need every visual token in raster order (no pruning)."""
    per_crop = model.get_vision_tower().num_patches
    if model.pruning.visual_token_num != per_crop:
        raise ValueError(f"the attention analyses need all {per_crop} visual tokens (--visual-token-num {per_crop} "
                         f"or leave it out), got --visual-token-num {model.pruning.visual_token_num}")
