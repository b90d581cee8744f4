"""The transformers-native llava-hf layout (`llava-hf/llava-1.5-7b-hf`, `llava-hf/llava-v1.6-vicuna-7b-hf`) next to
the liuhaotian layout our `LlavaLlamaForCausalLM` reads.

Both hold the same weights under other names:

    ours (liuhaotian)                 llava-hf, transformers 5.x names     older llava-hf saves (transformers 4.x)
    model.{embed_tokens,layers,norm}  model.language_model.*                language_model.model.*
    lm_head                           lm_head                               language_model.lm_head
    model.mm_projector.{0,2}          model.multi_modal_projector.linear_{1,2}   multi_modal_projector.*
    model.image_newline (1.6)         model.image_newline                   image_newline
    the CLIP tower (CLIPVisionModel)  model.vision_tower.*                  vision_tower.vision_model.*

and config.json has `text_config` / `vision_config` with `model_type` "llava" or "llava_next" instead of Llama
fields plus `mm_*` fields. `llava.model.checkpoint.plan_load` reads such a directory into the same load plan as a
liuhaotian one, with `HF_TO_LLAVA_KEYS` as the plan's weight-name conversion (names only, through transformers'
`key_mapping`, so device maps and 8/4-bit loading work as for the liuhaotian layout); afterwards the model is our own
and every pruning method, both anyres modes, batching and every eval entry point work unchanged. The checkpoint's
tower weights are used (llava-hf checkpoints carry the tower; no `mm_vision_tower` lookup).

Settings the converted config takes from LLaVA rather than from the llava-hf processor:
- LLaVA-1.5 pads images to a square (`image_aspect_ratio="pad"`, as the liuhaotian checkpoints say); llava-hf's
  default processor center-crops instead.
- `image_grid_pinpoints` are kept as written. The llava-hf lists were copied from the liuhaotian configs, where a
  pair is (width, height); transformers reads a pair as (height, width). The lists are symmetric, so only ties differ:
  a small square image gets a 1x2 grid (one crop across, two down) here and in original LLaVA, 2x1 in transformers.
- The embedding matrix keeps its extra rows (transformers' `<image>` token and the padding to 32064); prompts use
  IMAGE_TOKEN_INDEX as for every other checkpoint, so those rows are never read.
"""

from __future__ import annotations

from pathlib import Path

from transformers import LlavaConfig as HFLlavaConfig
from transformers import LlavaNextConfig

from llava.mm_utils import _PROCESSOR_SETTINGS
from llava.model.language_model.llava_llama import LlavaConfig
from llava.json_file import read_json_file

LIUHAOTIAN, LLAVA_HF = "liuhaotian", "llava-hf"
# transformers model_type -> LLaVA's image_aspect_ratio
HF_MODEL_TYPES = {"llava": "pad", "llava_next": "anyres"}

# Checkpoint name -> our name, as regexes applied in order by transformers' `from_pretrained(key_mapping=...)`.
# Every matching rule fires on the result of the previous ones, so older names are first brought to the 5.x names.
HF_TO_LLAVA_KEYS = {
    r"^language_model\.lm_head\.": "lm_head.",
    r"^language_model\.model\.": "model.language_model.",
    r"^multi_modal_projector\.": "model.multi_modal_projector.",
    r"^vision_tower\.": "model.vision_tower.",  # not loaded by from_pretrained: the tower is built on its own
    r"^image_newline$": "model.image_newline",
    r"^model\.language_model\.": "model.",
    r"^model\.multi_modal_projector\.linear_1\.": "model.mm_projector.0.",
    r"^model\.multi_modal_projector\.linear_2\.": "model.mm_projector.2.",
}


def checkpoint_layout(raw: dict) -> str:
    """"llava-hf" for a transformers-native config.json (`text_config` + `vision_config`, model_type "llava" or
    "llava_next"), "liuhaotian" for one with `mm_vision_tower`. Raises ValueError for anything else."""
    if "mm_vision_tower" in raw:
        return LIUHAOTIAN
    if "vision_config" in raw and "text_config" in raw:
        kind = raw.get("model_type")
        if kind not in HF_MODEL_TYPES:
            raise NotImplementedError(
                f"transformers-native checkpoint of model_type {kind!r}: only {sorted(HF_MODEL_TYPES)} "
                f"(LlavaForConditionalGeneration / LlavaNextForConditionalGeneration) can be loaded here"
            )
        return LLAVA_HF
    raise ValueError(
        "config.json has no mm_vision_tower: not a LLaVA checkpoint (the liuhaotian layout names its tower in "
        "mm_vision_tower, even a projector-only checkpoint; the llava-hf layout has text_config + vision_config)"
    )


def hf_config(raw: dict):
    """transformers' own LlavaConfig / LlavaNextConfig of a llava-hf config.json (defaults filled in)."""
    cls = LlavaNextConfig if raw["model_type"] == "llava_next" else HFLlavaConfig
    return cls.from_dict({k: v for k, v in raw.items() if k != "transformers_version"})


def check_supported(config, what: str) -> None:
    """The llava-hf settings FasterVLM can rank and prune: one feature layer, patch tokens only, a CLIP tower with a
    [CLS] token. `config` is transformers' LlavaConfig / LlavaNextConfig; `what` names the model in messages."""
    if not isinstance(config.vision_feature_layer, int):
        raise NotImplementedError(
            f"{what}: vision_feature_layer={config.vision_feature_layer!r} concatenates several layers; FasterVLM "
            f"ranks the tokens of one layer by its [CLS] attention"
        )
    if config.vision_feature_select_strategy != "default":
        raise NotImplementedError(
            f"{what}: vision_feature_select_strategy={config.vision_feature_select_strategy!r} feeds the [CLS] token "
            f"to the LLM; FasterVLM ranks and keeps patch tokens only (strategy 'default')"
        )
    if config.vision_config.model_type not in ("clip_vision_model", "clip"):
        raise NotImplementedError(
            f"{what}: vision tower {config.vision_config.model_type!r}; FasterVLM needs a CLIP tower (its [CLS] "
            f"attention ranks the patches)"
        )


def llava_config_from_hf(raw: dict, name: str = "llava-hf checkpoint"):
    """Our `LlavaConfig` (Llama fields + LLaVA's `mm_*` fields) for a llava-hf config.json."""
    hf = hf_config(raw)
    check_supported(hf, name)
    text, vision = hf.text_config, hf.vision_config
    if text.model_type != "llama":
        raise NotImplementedError(
            f"{name}: the language model is {text.model_type!r}; this loader builds LLaVA on Llama. Load it with "
            f"transformers and use llava.hf.apply_pruning(model, ...) instead"
        )
    if hf.projector_hidden_act != "gelu" or not getattr(hf, "multimodal_projector_bias", True):
        raise NotImplementedError(f"{name}: projector act {hf.projector_hidden_act!r} without bias is not LLaVA's "
                                  f"mlp2x_gelu")
    fields = {k: v for k, v in text.to_dict().items() if k not in ("model_type", "architectures",
                                                                   "transformers_version", "_name_or_path")}
    fields.update(
        tie_word_embeddings=getattr(hf, "tie_word_embeddings", False) or text.tie_word_embeddings,
        mm_vision_tower=vision._name_or_path or "openai/clip-vit-large-patch14-336",  # informational: weights are ours
        mm_hidden_size=vision.hidden_size, mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=hf.vision_feature_layer, mm_vision_select_feature="patch",
        mm_use_im_start_end=False, mm_use_im_patch_token=False,
        image_aspect_ratio=HF_MODEL_TYPES[raw["model_type"]], mm_patch_merge_type="flat",
    )
    if raw["model_type"] == "llava_next":
        fields.update(image_grid_pinpoints=[list(p) for p in hf.image_grid_pinpoints],
                      mm_patch_merge_type="spatial_unpad")
    return LlavaConfig(**fields)


def hf_processor_settings(model_dir: Path) -> dict:
    """The llava-hf directory's image-processor settings, for `llava.mm_utils.load_image_processor` (a PIL-backend
    CLIP processor: the pixels LLaVA was trained on); `process_images` then pads or tiles as the converted config
    says. Read from preprocessor_config.json, or from the `image_processor` entry of processor_config.json (newer
    saves)."""
    settings = None
    if (model_dir / "preprocessor_config.json").is_file():
        settings = read_json_file(model_dir / "preprocessor_config.json", "the image processor's settings")
    elif (model_dir / "processor_config.json").is_file():
        settings = read_json_file(model_dir / "processor_config.json", "the processor's settings").get(
            "image_processor")
    if not settings:
        raise FileNotFoundError(f"{model_dir}: no image processor settings (preprocessor_config.json)")
    return {k: settings[k] for k in _PROCESSOR_SETTINGS if k in settings}
