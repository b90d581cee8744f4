"""LLaVA-1.5-shaped models with random weights, so speed can be measured without downloading a checkpoint.

Every shape keeps what decides the cost ratios of pruning: a CLIP-style tower at 336 px with 14 px patches
(576 visual tokens per image, features from layer -2), LLaVA's mlp2x_gelu projector, and a Llama decoder.

- `7b`, `13b`: LLaVA-1.5-7B / -13B exactly (CLIP ViT-L/14-336 + Vicuna-7B / -13B), for a GPU.
- `small`: for CPUs. The decoder keeps 7B's depth (32 layers, so FastV's K = 2 is the same share of the model) and its
  MLP/width ratio, at width 512 (8 heads of 64); the tower is ViT-S-wide (384, 6 heads) with 12 layers. About 0.13 B
  LLM parameters (most in the 32k vocabulary) and 20 M in the tower: a full-budget prefill of ~640 tokens is ~140
  GFLOPs, a few seconds on two cores, where 7B's ~8.4 TFLOPs would take minutes per run.
- `tiny`: a few thousand parameters per layer, for smoke tests (the timings mean nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.bench.measure import Inputs
from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower

SELECT_LAYER = -2  # LLaVA's mm_vision_select_layer
PROMPT_BEFORE, PROMPT_AFTER = 35, 29  # text tokens around <image> in a LLaVA-1.5 VQA prompt (system + question)


@dataclass(frozen=True)
class SyntheticShape:
    # vision tower (CLIP ViT)
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    # language model (Llama)
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int = 32000
    image_size: int = 336
    patch_size: int = 14


SHAPES = {
    "7b": SyntheticShape(1024, 24, 16, 4096, hidden=4096, layers=32, heads=32, kv_heads=32, mlp=11008),
    "13b": SyntheticShape(1024, 24, 16, 4096, hidden=5120, layers=40, heads=40, kv_heads=40, mlp=13824),
    "small": SyntheticShape(384, 12, 6, 1536, hidden=512, layers=32, heads=8, kv_heads=8, mlp=1376),
    "tiny": SyntheticShape(32, 2, 2, 64, hidden=64, layers=4, heads=4, kv_heads=2, mlp=128, vocab=1000),
}


def build_synthetic_model(name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                          attn_implementation: str = "sdpa", seed: int = 0):
    """A `LlavaLlamaForCausalLM` of shape `SHAPES[name]` with random weights and its tower attached (no pruning).
    Weights are created on `device` in `dtype` directly."""
    if name not in SHAPES:
        raise ValueError(f"unknown synthetic shape {name!r}; choose one of {sorted(SHAPES)}")
    s = SHAPES[name]
    vision_config = CLIPVisionConfig(
        hidden_size=s.vision_hidden, intermediate_size=s.vision_mlp, num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads, image_size=s.image_size, patch_size=s.patch_size,
    )
    config = LlavaConfig(
        hidden_size=s.hidden, intermediate_size=s.mlp, num_hidden_layers=s.layers, num_attention_heads=s.heads,
        num_key_value_heads=s.kv_heads, vocab_size=s.vocab, max_position_embeddings=4096, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
        mm_vision_tower=f"synthetic-{name}", mm_hidden_size=s.vision_hidden, mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=SELECT_LAYER, mm_vision_select_feature="patch", image_aspect_ratio="pad",
        mm_use_im_start_end=False, mm_use_im_patch_token=False,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaLlamaForCausalLM._from_config(config, attn_implementation=attn_implementation, dtype=dtype)
        clip = CLIPVisionModel._from_config(vision_config, attn_implementation=attn_implementation, dtype=dtype)
    model.eval().requires_grad_(False)
    clip.eval().requires_grad_(False)
    model.attach_vision_tower(CLIPVisionTower(clip, select_layer=SELECT_LAYER))
    return model


def synthetic_inputs(model, device, dtype) -> Inputs:
    """A LLaVA-1.5-long prompt of random text ids around one <image> (ids (1, L)) and random pixels (1, 3, S, S)."""
    gen = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    before = torch.randint(3, vocab, (PROMPT_BEFORE - 1,), generator=gen)
    after = torch.randint(3, vocab, (PROMPT_AFTER,), generator=gen)
    ids = torch.cat([torch.tensor([1]), before, torch.tensor([IMAGE_TOKEN_INDEX]), after])[None].to(device)
    size = model.get_vision_tower().config.image_size
    pixels = torch.randn(1, 3, size, size, generator=gen).to(device=device, dtype=dtype)
    return Inputs(ids, pixels, None)
