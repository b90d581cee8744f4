"""Transformers-native checkpoints that load as transformers' own class with `apply_pruning` installed (no
conversion into our model): every class registered in `llava.integrations.transformers.ADAPTERS` except the
llava-hf LLaVA-1.5 / 1.6 ones (model_type "llava" / "llava_next"), which `llava.model.checkpoint` converts.
Today: Video-LLaVA, LLaVA-OneVision, and whatever Qwen-family classes are registered there.

Here: which directories are native (`native_class`), their processor built without torchvision
(`load_native_processor`) and the loader (`load_native`). Asking them (chat-template prompts, batches) is
`llava.inference` (`NativeAsking`, `answer_native`).

Torchvision: transformers 5.x builds every video processor and the default ("torchvision" backend) image processors
on it, and it cannot be installed here beside the CPU torch. The image processor is therefore loaded with the "pil"
backend when torchvision is absent (same resize / normalisation, numpy instead of torch ops), and the video processor
is left out: the processor then handles images only, and a call with videos fails inside transformers' processor.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import AutoImageProcessor, AutoTokenizer, VideoLlavaForConditionalGeneration
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

from llava.integrations.transformers import ADAPTERS, apply_pruning
from llava.integrations.transformers.adapters import NeedsClsError
from llava.integrations.transformers.video_llava import VideoLlavaInputs
from llava.model.pruning import PruningRequest

CONVERTED_TYPES = ("llava", "llava_next")  # llava-hf LLaVA-1.5 / 1.6: converted into our own model instead
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
IMAGE_PROCESSOR_FILE = "preprocessor_config.json"
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json", "tokenizer_config.json (chat_template)")
DEFAULT_CONTEXT = 2048  # LLaVA's context length when the config names none (Video-LLaVA's model_max_length)


def native_classes() -> dict[str, type]:
    """config model_type -> transformers model class, for every native class in ADAPTERS (read at call time, so a
    family registered later is included)."""
    classes = {cls.config_class.model_type: cls for cls in ADAPTERS}
    return {name: cls for name, cls in classes.items() if name not in CONVERTED_TYPES}


def native_class(model_dir: Path, raw: dict) -> type | None:
    """transformers' class of a checkpoint whose config.json is `raw`, or None when it is converted into our model
    (liuhaotian, llava-hf). The original Video-LLaVA layout (LanguageBind towers) is refused, naming the file."""
    if raw.get("mm_video_tower") or raw.get("mm_image_tower"):
        raise ValueError(
            f"{model_dir}/config.json is an original Video-LLaVA checkpoint (mm_image_tower / mm_video_tower with "
            f"LanguageBind towers), which is not converted at load time: use the transformers layout, "
            f"LanguageBind/Video-LLaVA-7B-hf (config.json model_type 'video_llava')")
    return native_classes().get(raw.get("model_type"))


def _has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def check_processor_files(model_dir: Path) -> None:
    """The tokenizer and image-processor files a native processor is built from; each missing one named."""
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{model_dir} has no tokenizer files: expected one of {list(TOKENIZER_FILES)} next "
                                f"to config.json (copy them from the hub repository the weights came from)")
    if not (model_dir / IMAGE_PROCESSOR_FILE).is_file():
        raise FileNotFoundError(f"{model_dir}/{IMAGE_PROCESSOR_FILE} is missing: the image processor's settings "
                                f"(copy it from the hub repository the weights came from)")


def _accepting_none(processor_class: type) -> type:
    """`processor_class` whose sub-processor check lets an absent one (None) through: the video processor, which
    needs torchvision. transformers' own class is not modified."""

    def check(self, argument_name, argument):
        if argument is None:
            return None
        return processor_class.check_argument_for_proper_class(self, argument_name, argument)

    return type(processor_class.__name__, (processor_class,),
                {"check_argument_for_proper_class": check, "__module__": processor_class.__module__})


def _sub_processor(name: str, model_dir: Path):
    """One part of a processor: the tokenizer, the image processor (pil backend without torchvision), the video
    processor (None without torchvision)."""
    if "tokenizer" in name:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    torchvision = _has_torchvision()
    if name == "image_processor":
        backend = {} if torchvision else {"backend": "pil"}
        return AutoImageProcessor.from_pretrained(model_dir, local_files_only=True, **backend)
    if name == "video_processor" and torchvision:
        from transformers import AutoVideoProcessor  # needs torchvision: imported only when it is there

        return AutoVideoProcessor.from_pretrained(model_dir, local_files_only=True)
    if name == "video_processor":
        return None
    raise NotImplementedError(f"{model_dir}: the processor has a {name!r} part, which llava/model/native.py does not "
                              f"load")


def load_native_processor(model_dir: Path, model):
    """The checkpoint's processor: AutoProcessor's class for the config, built part by part (see the module
    docstring); Video-LLaVA: `VideoLlavaInputs`, its processor without torchvision (video_llava.py). Its files were
    checked by `load_native` before the weights were read (`check_processor_files`)."""
    if isinstance(model, VideoLlavaForConditionalGeneration):
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        return VideoLlavaInputs(tokenizer, _sub_processor("image_processor", model_dir),
                                model.config.vision_config.patch_size)
    processor_class = PROCESSOR_MAPPING[type(model.config)]
    processor_dict, kwargs = processor_class.get_processor_dict(str(model_dir), local_files_only=True)
    parts = [_sub_processor(name, model_dir) for name in processor_class.get_attributes()]
    if any(part is None for part in parts):  # no torchvision: no video processor
        processor_class = _accepting_none(processor_class)
    return processor_class.from_args_and_dict(parts, processor_dict, **kwargs)


def check_weights_filled(model_dir: Path, info: dict) -> None:
    """A weight the checkpoint leaves unfilled would stay randomly initialised: an error naming the directory."""
    missing = [k for k in info["missing_keys"] if "rotary" not in k]
    if missing or info["mismatched_keys"]:
        raise ValueError(f"{model_dir}: weights the checkpoint does not fill: missing {sorted(missing)[:5]}, "
                         f"mismatched {sorted(info['mismatched_keys'])[:5]}")


def context_length(config) -> int:
    """The prompt length the model takes: Video-LLaVA's model_max_length (2048, as before), else the language
    model's `max_position_embeddings`."""
    if config.model_type == "video_llava":
        return DEFAULT_CONTEXT
    return getattr(config.get_text_config(), "max_position_embeddings", None) or DEFAULT_CONTEXT


def install_pruning(model, request: PruningRequest):
    """`apply_pruning` with the request's settings. With no budget (every token kept, no score is read), a
    [CLS]-attention method refused by a tower without [CLS] (fastervlm is the flags' default) is replaced by
    `uniform`, which keeps every token on any tower; with a budget the refusal stands (never a silent fallback)."""
    settings = dict(seed=request.seed, llm_layer=request.llm_layer)
    try:
        return apply_pruning(model, request.method, request.visual_token_num, **settings)
    except NeedsClsError:  # only the no-[CLS] refusal (adapters.check_tower_supports) is replaced
        if request.visual_token_num is not None:
            raise
    return apply_pruning(model, "uniform", None, **settings)


def load_native(model_dir: Path, model_class: type, request: PruningRequest, from_pretrained: dict):
    """A native checkpoint directory -> (tokenizer, model with `apply_pruning` installed, processor, context length).

    request:         the `PruningRequest` / `PruningConfig` of load_pretrained_model (its method, budget per crop
                     or frame, seed and FastV layer; None budget = every token). The layout of anyres images is the
                     processor's ("upstream"), so `anyres_mode` does not apply here;
    from_pretrained: transformers' `from_pretrained` keywords (dtype, device_map, attn_implementation, ...)."""
    check_processor_files(model_dir)  # before any weights are read
    model, info = model_class.from_pretrained(model_dir, output_loading_info=True, local_files_only=True,
                                              **from_pretrained)
    check_weights_filled(model_dir, info)
    model.eval()
    processor = load_native_processor(model_dir, model)
    install_pruning(model, request)
    return processor.tokenizer, model, processor, context_length(model.config)
