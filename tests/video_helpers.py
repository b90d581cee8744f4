"""A tiny random Video-LLaVA in transformers' own classes (`VideoLlavaForConditionalGeneration`, tiny CLIP image and
video towers, a tiny Llama), its `VideoLlavaProcessor` on the tiny tokenizer, and a Video-LLaVA-hf directory
(config.json with model_type "video_llava", weights, tokenizer, processor) as `LanguageBind/Video-LLaVA-7B-hf`
ships one. Frames: 32 px, patch 8 -> 16 patches per frame (+ [CLS]: 17 placeholders per frame)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    VideoLlavaConfig,
    VideoLlavaForConditionalGeneration,
    VideoLlavaImageProcessor,
)

from llava.integrations.transformers.video_llava import VideoLlavaInputs

from llava.model.tiny import IMAGE_SIZE, PATCH_SIZE, clip_vision_config_dict

PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2  # 16 per frame
FRAMES = 8


def video_llava_config(vocab: int) -> VideoLlavaConfig:
    """Tiny config: Llama with `vocab` + 2 rows (`<image>` = vocab, `<video>` = vocab + 1), 3-layer CLIP towers."""
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=vocab + 2, max_position_embeddings=512,
                       tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return VideoLlavaConfig(vision_config=CLIPVisionConfig(**clip_vision_config_dict()), text_config=text,
                            image_token_index=vocab, video_token_index=vocab + 1, vision_feature_layer=-2,
                            vision_feature_select_strategy="default", image_seq_length=PATCHES,
                            video_seq_length=FRAMES * (PATCHES + 1))


def video_llava_model(vocab: int, seed: int = 0) -> VideoLlavaForConditionalGeneration:
    """Random weights (seeded), eager attention, float32, eval mode; the two towers differ."""
    torch.manual_seed(seed)
    model = VideoLlavaForConditionalGeneration._from_config(video_llava_config(vocab), attn_implementation="eager")
    return model.eval()


def video_llava_processor(tok_dir) -> VideoLlavaInputs:
    """The tiny tokenizer with `<image>` / `<video>` added (ids vocab, vocab + 1; padding left) and the CLIP-style
    image processor at the tiny towers' size (transformers' VideoLlavaProcessor needs torchvision)."""
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    tokenizer.add_tokens(["<image>", "<video>"], special_tokens=True)
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.padding_side = "left"
    sizes = dict(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return VideoLlavaInputs(tokenizer, VideoLlavaImageProcessor(**sizes), PATCH_SIZE)


def vocab_of(tok_dir) -> int:
    """The tiny tokenizer's size before `<image>` / `<video>` are added."""
    return len(AutoTokenizer.from_pretrained(tok_dir))


def make_video_llava_hf_dir(path, tok_dir, seed: int = 0) -> tuple[Path, VideoLlavaForConditionalGeneration]:
    """A Video-LLaVA-hf directory (save_pretrained of the model and the processor) and the model saved in it."""
    path = Path(path)
    processor = video_llava_processor(tok_dir)
    model = video_llava_model(len(processor.tokenizer) - 2, seed)
    model.save_pretrained(path)
    processor.tokenizer.save_pretrained(path)
    processor.image_processor.save_pretrained(path)
    return path, model
