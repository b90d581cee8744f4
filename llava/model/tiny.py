"""Tiny LLaVA checkpoints written in the exact liuhaotian layouts, with random weights.

Used by the tests and by the demo (`python -m llava.demo`), which needs a whole model without any download:
- `make_llama_tokenizer_dir`: a small Llama-style sentencepiece tokenizer trained on the spot (byte fallback,
  dummy prefix, ids unk 0 / bos 1 / eos 2, like Llama's) with the liuhaotian tokenizer_config.json.
- `make_clip_dir`: an `openai/clip-vit-*`-style directory: CLIPModel config.json (text + vision), weights named
  `vision_model.*` / `text_model.*` in pytorch_model.bin, preprocessor_config.json of a CLIPImageProcessor.
- `make_llava_dir`: a `liuhaotian/llava-v1.5-*` (pad, sharded .bin) or `llava-v1.6-*` (anyres, safetensors, with
  its own fine-tuned tower under `model.vision_tower.vision_tower.vision_model.*`) directory whose config.json says
  `model_type: "llava"` and names the tower directory in `mm_vision_tower`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import sentencepiece as spm
import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

VOCAB_SIZE = 400  # 3 specials + 256 byte-fallback pieces + ~140 learned pieces

TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "legacy": False,
    "add_bos_token": True,
    "add_eos_token": False,
    "model_max_length": 2048,
    "pad_token": None,
    "padding_side": "right",
}

_WORDS = (
    "a chat between curious user human and an artificial intelligence assistant the gives helpful "
    "detailed polite answers to questions what is in this image describe picture color red green blue "
    "cat dog USER ASSISTANT yes no answer with single word or phrase there are two three cars on street"
).split()


def _corpus(num_lines: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(_WORDS) for _ in range(12)) for _ in range(num_lines)]
    lines += ["USER: what is this? ASSISTANT: a cat."] * 50
    return lines


def make_llama_tokenizer_dir(path: str | os.PathLike) -> str | os.PathLike:
    """Train the tiny tokenizer into ``path`` (created if needed) and return ``path``."""
    os.makedirs(path, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_prefix=os.path.join(os.fspath(path), "tokenizer"),
        vocab_size=VOCAB_SIZE,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        minloglevel=2,
    )
    os.remove(os.path.join(os.fspath(path), "tokenizer.vocab"))
    with open(os.path.join(os.fspath(path), "tokenizer_config.json"), "w") as f:
        json.dump(TOKENIZER_CONFIG, f, indent=2)
    return path


IMAGE_SIZE = 32  # tower input side; patch 8 -> 4 x 4 = 16 patches per crop
PATCH_SIZE = 8
PATCHES = (IMAGE_SIZE // PATCH_SIZE) ** 2
GRID = [[1, 2], [2, 1], [2, 2], [3, 1], [1, 3]]  # LLaVA-1.6's pinpoints in units of the tower's input side
PINPOINTS = [[a * IMAGE_SIZE, b * IMAGE_SIZE] for a, b in GRID]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def clip_vision_config_dict(layers: int = 3, image_size: int = IMAGE_SIZE, patch_size: int = PATCH_SIZE) -> dict:
    return dict(
        hidden_size=32, intermediate_size=48, num_hidden_layers=layers, num_attention_heads=4,
        image_size=image_size, patch_size=patch_size, projection_dim=16, hidden_act="quick_gelu",
    )


def make_clip_dir(path: Path, seed: int = 0, layers: int = 3, image_size: int = IMAGE_SIZE,
                  patch_size: int = PATCH_SIZE) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = CLIPConfig(
        vision_config=clip_vision_config_dict(layers, image_size, patch_size),
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=50, max_position_embeddings=16, projection_dim=16,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        projection_dim=16,
    )
    model = CLIPModel(config)
    spread_weights(model, seed)
    # transformers 5 names CLIPModel weights as the openai checkpoints do: vision_model.*, text_model.*
    torch.save(model.state_dict(), path / "pytorch_model.bin")
    cfg = config.to_dict()
    cfg["model_type"] = "clip"
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    (path / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": {"height": image_size, "width": image_size}, "do_center_crop": True, "do_normalize": True,
        "do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_convert_rgb": True,
        "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "resample": 3, "size": {"shortest_edge": image_size},
        "image_processor_type": "CLIPImageProcessor",
    }, indent=2))
    return path


def spread_weights(model: torch.nn.Module, seed: int, scale: float = 1.5, skip: str = "embedding") -> None:
    """Larger random weights than the default init, so attention is peaked and rankings are unambiguous: every
    matrix whose name lacks `skip` is redrawn with std scale / sqrt(fan-in), in parameter order, from one generator
    on the model's device (scripts/gpu_check.py skips "embed", the token embeddings too)."""
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and skip not in name:
                fan_in = p[0].numel()
                noise = torch.randn(p.shape, generator=gen, device=p.device, dtype=torch.float32)
                p.copy_(noise * (scale / fan_in**0.5))


def llava_config_dict(version: str, tower_dir: Path, vocab_size: int, image_size: int = IMAGE_SIZE) -> dict:
    cfg = dict(
        architectures=["LlavaLlamaForCausalLM"], model_type="llava", hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, vocab_size=vocab_size,
        max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=False, hidden_act="silu", torch_dtype="float32",
        mm_vision_tower=str(tower_dir), mm_hidden_size=32, mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_use_im_start_end=False,
        mm_use_im_patch_token=False, image_aspect_ratio="pad", mm_patch_merge_type="flat",
        tokenizer_model_max_length=512, freeze_mm_mlp_adapter=False, tune_mm_mlp_adapter=False,
    )
    if version == "v1.6":
        cfg.update(image_aspect_ratio="anyres", image_grid_pinpoints=[[a * image_size, b * image_size] for a, b in GRID], mm_patch_merge_type="spatial_unpad",
                   unfreeze_mm_vision_tower=True, mm_vision_tower_lr=2e-6)
    return cfg


def llava_state_dict(version: str, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Random LLM + projector (+ image_newline) weights with the checkpoint's names."""
    raw = llava_config_dict(version, Path("unused"), vocab_size)
    raw = {k: v for k, v in raw.items() if k not in ("model_type", "architectures")}
    torch.manual_seed(seed)
    model = LlavaLlamaForCausalLM(LlavaConfig(**raw))
    spread_weights(model, seed + 1)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if "rotary" not in k}
    if version == "v1.6":
        state["model.image_newline"] = torch.randn(64, generator=torch.Generator().manual_seed(seed + 2))
    return state


def make_llava_dir(path: Path, version: str, tower_dir: Path, tokenizer_dir: Path | None = None, seed: int = 1,
                   own_tower_seed: int | None = None) -> Path:
    """A LLaVA checkpoint directory. v1.5: two .bin shards + index. v1.6: safetensors shards + index, and the
    tower weights of a CLIP with seed `own_tower_seed` (default: the tower's own weights perturbed)."""
    path.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is None:
        tokenizer_dir = make_llama_tokenizer_dir(path.parent / f"{path.name}_tok")
    for f in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(Path(tokenizer_dir) / f, path / f)
    vocab = spm.SentencePieceProcessor(model_file=str(path / "tokenizer.model")).get_piece_size()
    state = llava_state_dict(version, vocab, seed)
    if version == "v1.6":
        tower_state = torch.load(Path(tower_dir) / "pytorch_model.bin", weights_only=True)
        gen = torch.Generator().manual_seed(own_tower_seed or 123)
        for k, v in tower_state.items():
            if k.startswith("vision_model.") and not k.endswith("position_ids"):
                fine_tuned = v + 0.5 * torch.randn(v.shape, generator=gen) * v.float().std().clamp(min=1e-3)
                state["model.vision_tower.vision_tower." + k] = fine_tuned.to(v.dtype).contiguous()
    keys = sorted(state)
    shards = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, shard_keys in enumerate(shards, 1):
        if version == "v1.6":
            name = f"model-{i:05d}-of-00002.safetensors"
            save_file({k: state[k] for k in shard_keys}, str(path / name), metadata={"format": "pt"})
        else:
            name = f"pytorch_model-{i:05d}-of-00002.bin"
            torch.save({k: state[k] for k in shard_keys}, path / name)
        weight_map.update({k: name for k in shard_keys})
    index = "model.safetensors.index.json" if version == "v1.6" else "pytorch_model.bin.index.json"
    (path / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    image_size = json.loads((Path(tower_dir) / "config.json").read_text())["vision_config"]["image_size"]
    (path / "config.json").write_text(json.dumps(llava_config_dict(version, tower_dir, vocab, image_size), indent=2))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2,
                                                             "pad_token_id": 0}))
    return path
