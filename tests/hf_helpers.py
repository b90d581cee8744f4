"""Our tiny liuhaotian checkpoints in transformers' own llava layout: the same weights as a
`LlavaForConditionalGeneration` / `LlavaNextForConditionalGeneration` instance, or written as a llava-hf directory
(config.json, weights, tokenizer with `<image>`, processor), the way `llava-hf/*` ships them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.utils import load_state_dict
from tests.tiny_checkpoints import PINPOINTS, clip_vision_config_dict

OUR_TOWER_PREFIX = "model.vision_tower.vision_tower.vision_model."


def llava_to_hf_state(state: dict[str, torch.Tensor], tower: dict[str, torch.Tensor],
                      image_token_rows: int = 0) -> dict[str, torch.Tensor]:
    """The inverse of the loader's llava-hf renaming, written here from transformers 5.x's llava names: our checkpoint's tensors (+ its tower in CLIPVisionModel names) under transformers 5.x's llava names, with
    `image_token_rows` zero rows appended to the embeddings and lm_head (transformers' `<image>` token)."""
    out = {"model.vision_tower." + k: v for k, v in tower.items() if not k.endswith("position_ids")}
    for k, v in state.items():
        if k.startswith("model.mm_projector."):
            index, name = k.split(".")[2:]
            out[f"model.multi_modal_projector.linear_{1 if index == '0' else 2}.{name}"] = v
        elif k == "model.image_newline" or k == "lm_head.weight":
            out[k] = v
        elif k.startswith("model.") and not k.startswith("model.vision_tower."):
            out["model.language_model." + k.removeprefix("model.")] = v
    if image_token_rows:
        for k in ("model.language_model.embed_tokens.weight", "lm_head.weight"):
            out[k] = torch.cat([out[k], out[k].new_zeros(image_token_rows, out[k].shape[1])])
    return out


def tower_state(ckpt_dir, clip_dir) -> dict[str, torch.Tensor]:
    """The tower our loader uses for a checkpoint: its own fine-tuned one (v1.6), else the mm_vision_tower's."""
    own = load_state_dict(ckpt_dir, prefix=OUR_TOWER_PREFIX)
    return own or load_state_dict(clip_dir, prefix="vision_model.")


def to_hf_state(ckpt_dir, clip_dir, vocab=None) -> dict[str, torch.Tensor]:
    """Our checkpoint (+ the tower it uses) in transformers' llava names, with one extra vocab row for transformers'
    image token. (`vocab` is accepted for older callers and unused.)"""
    ours = {k: v for k, v in load_state_dict(ckpt_dir).items() if not k.startswith("model.vision_tower.")}
    return llava_to_hf_state(ours, tower_state(ckpt_dir, clip_dir), image_token_rows=1)


def hf_config(kind: str, ckpt_dir, attn_implementation: str = "eager"):
    """transformers' LlavaConfig / LlavaNextConfig matching a tiny checkpoint; the image token is id `vocab`."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaNextConfig

    cfg = json.loads((Path(ckpt_dir) / "config.json").read_text())
    vocab = cfg["vocab_size"]
    text = LlamaConfig(hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
                       num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
                       num_key_value_heads=cfg["num_key_value_heads"], vocab_size=vocab + 1,
                       max_position_embeddings=cfg["max_position_embeddings"], rms_norm_eps=cfg["rms_norm_eps"],
                       tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    common = dict(vision_config=CLIPVisionConfig(**clip_vision_config_dict()), text_config=text,
                  image_token_index=vocab, projector_hidden_act="gelu", vision_feature_layer=-2,
                  vision_feature_select_strategy="default", tie_word_embeddings=False)
    if kind == "llava":
        return LlavaConfig(**common)
    return LlavaNextConfig(**common, image_grid_pinpoints=PINPOINTS)


def hf_model(kind, ckpt_dir, clip_dir, attn_implementation: str = "eager"):
    """(transformers model with our checkpoint's weights, image token id)."""
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    cls = LlavaForConditionalGeneration if kind == "llava" else LlavaNextForConditionalGeneration
    config = hf_config(kind, ckpt_dir)
    model = cls._from_config(config, attn_implementation=attn_implementation).eval()
    missing, unexpected = model.load_state_dict(to_hf_state(ckpt_dir, clip_dir), strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return model, config.image_token_index


@torch.no_grad()
def expand_image_tokens(ids, n_tokens, image_token_id):
    """(1, L) ids with one IMAGE_TOKEN_INDEX -> that position repeated `n_tokens` times as `image_token_id`, as
    transformers' processors expand `<image>`."""
    spot = (ids[0] == IMAGE_TOKEN_INDEX).nonzero().item()
    return torch.cat([ids[0, :spot], torch.full((n_tokens,), image_token_id), ids[0, spot + 1:]]).unsqueeze(0)


def hf_processor(kind: str, tok_dir, clip_dir):
    """A LlavaProcessor / LlavaNextProcessor for the tiny models: the tiny tokenizer with `<image>` added (id =
    vocab, as llava-hf adds it as id 32000) and the tower's image-processor settings (PIL backend)."""
    from transformers import AutoTokenizer, LlavaProcessor, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    from llava.mm_utils import load_image_processor

    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    tokenizer.add_tokens(["<image>"], special_tokens=True)
    tokenizer.pad_token = tokenizer.unk_token
    tokenizer.padding_side = "left"
    clip = load_image_processor(Path(clip_dir))
    vision = clip_vision_config_dict()
    if kind == "llava":
        return LlavaProcessor(image_processor=clip, tokenizer=tokenizer, patch_size=vision["patch_size"],
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)
    settings = {k: getattr(clip, k) for k in ("size", "crop_size", "image_mean", "image_std", "resample")}
    image_processor = LlavaNextImageProcessorPil(**settings, image_grid_pinpoints=PINPOINTS)
    return LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=vision["patch_size"],
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)


def make_llava_hf_dir(path, kind: str, ckpt_dir, clip_dir, tok_dir, legacy: bool = False) -> Path:
    """A llava-hf directory holding a tiny checkpoint's weights: config.json, weights, tokenizer and processor files
    as transformers 5.x saves them (one model.safetensors, the image processor inside processor_config.json).
    `legacy` writes what most llava-hf hub revisions hold instead: the weight names of transformers 4.x saves
    (`language_model.model.*`, `vision_tower.vision_model.*`, ...) in two shards with an index, and a separate
    preprocessor_config.json."""
    from safetensors.torch import save_file

    path = Path(path)
    model, _ = hf_model(kind, ckpt_dir, clip_dir)
    model.save_pretrained(path)
    hf_processor(kind, tok_dir, clip_dir).save_pretrained(path)
    # llava-hf hub repositories ship Llama's SentencePiece model next to tokenizer.json (transformers 5 saves only the
    # latter): with it the loader gives SentencePiece's own ids, as for liuhaotian directories
    shutil.copy(Path(tok_dir) / "tokenizer.model", path / "tokenizer.model")
    if legacy:
        state = {_legacy_name(k): v.contiguous() for k, v in to_hf_state(ckpt_dir, clip_dir).items()}
        for f in path.glob("model*.safetensors*"):
            f.unlink()
        keys = sorted(state)
        shards = {f"model-0000{i + 1}-of-00002.safetensors": part for i, part in
                  enumerate([keys[: len(keys) // 2], keys[len(keys) // 2:]])}
        for name, part in shards.items():
            save_file({k: state[k] for k in part}, str(path / name), metadata={"format": "pt"})
        weight_map = {k: name for name, part in shards.items() for k in part}
        (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        processor_config = json.loads((path / "processor_config.json").read_text())
        (path / "preprocessor_config.json").write_text(json.dumps(processor_config.pop("image_processor"), indent=2))
        (path / "processor_config.json").write_text(json.dumps(processor_config, indent=2))
    return path


def _legacy_name(key: str) -> str:
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    if key.startswith("model.language_model."):
        return "language_model.model." + key.removeprefix("model.language_model.")
    if key.startswith("model.vision_tower."):
        return "vision_tower.vision_model." + key.removeprefix("model.vision_tower.")
    return key.removeprefix("model.")
