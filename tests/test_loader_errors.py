"""Bad checkpoints, towers and settings get a message that names the problem and the file (issue #13, items 5, 6,
11 and 17). Every checkpoint here is a tiny one copied into tmp_path before it is damaged; the expected facts come
from the damage itself (which file was cut, which field was changed, what the tower's config says), never from the
loader's own output.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llava.model.multimodal_encoder.builder import VISION_TOWER_ENV, resolve_vision_tower_path
from llava.model.pruning import PruningConfig

REPO = Path(__file__).resolve().parents[1]


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(path: Path, **changes) -> dict:
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg, indent=2))
    return cfg


def _no_weights(monkeypatch):
    """Make any attempt to read the LLM weights fail loudly: errors must come before them."""
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were read before the bad input was reported")

    monkeypatch.setattr(LlavaLlamaForCausalLM, "from_pretrained", refuse)


# ---------------------------------------------------------------- item 5: PruningConfig cannot be edited by hand


def test_pruning_config_refuses_hand_edits():
    cfg = PruningConfig(visual_token_num=64)
    with pytest.raises(dataclasses.FrozenInstanceError, match=r"set_pruning\(model\.pruning\.replace\("):
        cfg.visual_token_num = 0
    with pytest.raises(dataclasses.FrozenInstanceError, match="set_pruning"):
        del cfg.method
    assert cfg.visual_token_num == 64 and cfg.method == "fastervlm"
    assert cfg.replace(visual_token_num=8).visual_token_num == 8  # the supported way still works ...
    with pytest.raises(ValueError, match="visual_token_num=0 is out of range"):
        cfg.replace(visual_token_num=0)  # ... and still validates


def test_model_pruning_hand_edit_is_refused(v15_dir, load):
    """The issue's case: `model.pruning.visual_token_num = 0` used to generate with 0 visual tokens."""
    _, model, _, _ = load(v15_dir, visual_token_num=4)
    with pytest.raises(AttributeError, match="model.set_pruning"):
        model.pruning.visual_token_num = 0
    assert model.pruning.visual_token_num == 4
    model.set_pruning(model.pruning.replace(visual_token_num=2))
    assert model.pruning.visual_token_num == 2


# ---------------------------------------------------------------- item 6: which tower, and does it fit


def test_tower_precedence(tmp_path, clip_dir, monkeypatch):
    """explicit argument > the config's path when it exists > $FASTERVLM_VISION_TOWER > HF cache."""
    env_tower = _copy(clip_dir, tmp_path / "env-tower")
    arg_tower = _copy(clip_dir, tmp_path / "arg-tower")
    monkeypatch.setenv(VISION_TOWER_ENV, str(env_tower))
    assert resolve_vision_tower_path(str(clip_dir)) == Path(clip_dir)  # a valid config path beats the environment
    assert resolve_vision_tower_path(str(clip_dir), arg_tower) == arg_tower  # the argument beats both
    assert resolve_vision_tower_path(str(tmp_path / "gone" / "clip")) == env_tower  # env beats a missing path
    monkeypatch.setenv(VISION_TOWER_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=rf"nowhere \(from \${VISION_TOWER_ENV}\) has no config.json"):
        resolve_vision_tower_path(str(tmp_path / "gone" / "clip"))
    assert resolve_vision_tower_path(str(clip_dir)) == Path(clip_dir)  # a broken env var is not even looked at


def test_env_tower_does_not_replace_valid_config_path_when_loading(tmp_path, v15_dir, clip_dir, load, monkeypatch):
    """A different tower in the environment used to be loaded instead of the checkpoint's own one."""
    from tests.tiny_checkpoints import make_clip_dir

    other = make_clip_dir(tmp_path / "other-tower", seed=7)
    monkeypatch.setenv(VISION_TOWER_ENV, str(other))
    _, model, _, _ = load(v15_dir)
    import torch

    own = torch.load(Path(clip_dir) / "pytorch_model.bin", weights_only=True)
    key = "vision_model.embeddings.patch_embedding.weight"
    loaded = model.get_vision_tower().vision_tower.state_dict()["embeddings.patch_embedding.weight"]
    assert torch.equal(loaded, own[key])


def test_tower_width_must_match_projector(tmp_path, v15_dir, clip_dir, load, monkeypatch):
    ckpt = _copy(v15_dir, tmp_path / "ckpt")
    tower = _copy(clip_dir, tmp_path / "wide-tower")
    cfg = json.loads((tower / "config.json").read_text())
    cfg["vision_config"].update(hidden_size=48, intermediate_size=96)  # the projector takes 32 (mm_hidden_size)
    (tower / "config.json").write_text(json.dumps(cfg))
    _no_weights(monkeypatch)
    with pytest.raises(ValueError) as err:
        load(ckpt, vision_tower_path=str(tower))
    msg = str(err.value)
    assert "48" in msg and "32" in msg and "mm_hidden_size" in msg
    assert str(tower / "config.json") in msg and str(ckpt / "config.json") in msg


def test_tower_image_size_must_match_v16_checkpoint(tmp_path, v16_dir, load, monkeypatch):
    """A 48 px tower (6 x 6 = 36 tokens) on a checkpoint trained at 32 px (16 tokens, pinpoints in 32 px units)."""
    from tests.tiny_checkpoints import make_clip_dir

    tower = make_clip_dir(tmp_path / "clip-48", image_size=48)
    _no_weights(monkeypatch)
    with pytest.raises(ValueError) as err:
        load(v16_dir, vision_tower_path=str(tower))
    msg = str(err.value)
    assert "48" in msg and "32" in msg and "36" in msg and "16" in msg
    assert str(tower / "config.json") in msg and str(Path(v16_dir)) in msg


def test_tower_named_in_config_gives_expected_geometry(tmp_path, v15_dir, clip_dir, load, monkeypatch):
    """The config names openai/clip-vit-large-patch14-336 (missing here); the environment's tower is 32 px / patch 8,
    which used to load silently with 16 tokens per image instead of 576."""
    ckpt = _copy(v15_dir, tmp_path / "ckpt")
    _edit_json(ckpt / "config.json", mm_vision_tower=str(tmp_path / "hub" / "openai" / "clip-vit-large-patch14-336"))
    monkeypatch.setenv(VISION_TOWER_ENV, str(clip_dir))
    _no_weights(monkeypatch)
    with pytest.raises(ValueError) as err:
        load(ckpt)
    msg = str(err.value)
    assert "336" in msg and "14" in msg and "576" in msg and "16" in msg and str(ckpt / "config.json") in msg


def test_tower_processor_size_must_match_tower(tmp_path, v15_dir, clip_dir, load, monkeypatch):
    tower = _copy(clip_dir, tmp_path / "tower")
    _edit_json(tower / "preprocessor_config.json", crop_size={"height": 48, "width": 48})
    _no_weights(monkeypatch)
    with pytest.raises(ValueError) as err:
        load(v15_dir, vision_tower_path=str(tower))
    msg = str(err.value)
    assert "48" in msg and "32" in msg and str(tower / "preprocessor_config.json") in msg


# ---------------------------------------------------------------- item 17: loader errors name the file


def test_malformed_config_json_names_file_and_line(tmp_path, v15_dir, load):
    ckpt = _copy(v15_dir, tmp_path / "ckpt")
    (ckpt / "config.json").write_text('{\n  "hidden_size": 64,\n  "mm_vision_tower": ,\n}\n')
    with pytest.raises(ValueError, match=rf"{ckpt / 'config.json'}:3: malformed JSON"):
        load(ckpt)


def test_malformed_tower_config_json_names_file(tmp_path, v15_dir, clip_dir, load):
    tower = _copy(clip_dir, tmp_path / "tower")
    (tower / "config.json").write_text('{"model_type": "clip",\n')
    with pytest.raises(ValueError, match=rf"{tower / 'config.json'}:2: malformed JSON"):
        load(v15_dir, vision_tower_path=str(tower))


def test_config_json_that_is_no_object_is_named(tmp_path, v15_dir, load, monkeypatch):
    ckpt = _copy(v15_dir, tmp_path / "ckpt")
    (ckpt / "config.json").write_text("[1, 2]\n")  # valid JSON, but a list where the config's fields belong
    _no_weights(monkeypatch)
    with pytest.raises(ValueError, match=rf"{ckpt / 'config.json'}: expected a JSON object, got list"):
        load(ckpt)


@pytest.mark.parametrize("which", ["v15", "v16"])
def test_truncated_shard_is_named(tmp_path, v15_dir, v16_dir, load, monkeypatch, which):
    """v1.5 keeps .bin shards, v1.6 safetensors; the second shard is cut in half."""
    ckpt = _copy(v15_dir if which == "v15" else v16_dir, tmp_path / "ckpt")
    shard = sorted(ckpt.glob("pytorch_model-*.bin" if which == "v15" else "model-*.safetensors"))[1]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    _no_weights(monkeypatch)
    with pytest.raises(ValueError, match=rf"{shard}.*truncated"):
        load(ckpt)


def test_truncated_projector_file_is_named(tmp_path, v15_dir, monkeypatch):
    """A projector-only checkpoint (mm_projector.bin + model_base) whose projector file was cut."""
    import torch

    from llava.model.builder import load_pretrained_model
    from llava.utils import load_state_dict

    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(v15_dir / "config.json", proj / "config.json")
    torch.save(load_state_dict(v15_dir, prefix="model.mm_projector."), proj / "mm_projector.bin")
    data = (proj / "mm_projector.bin").read_bytes()
    (proj / "mm_projector.bin").write_bytes(data[: len(data) - 40])
    _no_weights(monkeypatch)
    with pytest.raises(ValueError, match=rf"{proj / 'mm_projector.bin'}.*truncated"):
        load_pretrained_model(str(proj), str(v15_dir), None, device="cpu")


@pytest.fixture(scope="module")
def hf15_dir(tmp_path_factory, v15_dir, clip_dir, tok_dir):
    from tests.hf_helpers import make_llava_hf_dir

    return make_llava_hf_dir(tmp_path_factory.mktemp("hf") / "llava-1.5-tiny-hf", "llava", v15_dir, clip_dir, tok_dir)


def test_llava_hf_without_tokenizer_files(tmp_path, hf15_dir, load, monkeypatch):
    ckpt = _copy(hf15_dir, tmp_path / "hf")
    removed = [f for f in ckpt.iterdir() if f.name.startswith(("tokenizer", "special_tokens"))]
    assert {"tokenizer.json", "tokenizer.model"} <= {f.name for f in removed}
    for f in removed:
        f.unlink()
    _no_weights(monkeypatch)
    with pytest.raises(FileNotFoundError) as err:
        load(ckpt)
    msg = str(err.value)
    assert str(ckpt) in msg and "tokenizer.json" in msg and "tokenizer.model" in msg
    assert "sentencepiece" not in msg.lower()


@pytest.mark.parametrize("pinpoints, problem", [
    (None, "no image_grid_pinpoints"),
    ("[[32, 64], [64]]", "image_grid_pinpoints"),
    ("[[32, 64], (64, 32", "image_grid_pinpoints"),
    ([[32, 64], [0, 32]], "image_grid_pinpoints"),
    ([[32, 64], [48, 32]], "multiple of the vision tower's 32"),
])
def test_anyres_pinpoints_checked(tmp_path, v16_dir, load, monkeypatch, pinpoints, problem):
    ckpt = _copy(v16_dir, tmp_path / "ckpt")
    cfg = json.loads((ckpt / "config.json").read_text())
    assert cfg["image_aspect_ratio"] == "anyres"
    if pinpoints is None:
        cfg.pop("image_grid_pinpoints")
    else:
        cfg["image_grid_pinpoints"] = pinpoints
    (ckpt / "config.json").write_text(json.dumps(cfg))
    _no_weights(monkeypatch)
    with pytest.raises(ValueError) as err:
        load(ckpt)
    assert problem in str(err.value) and str(ckpt / "config.json") in str(err.value)


def test_llava_next_hf_malformed_pinpoints(tmp_path, hf15_dir, load, monkeypatch):
    """A llava_next (anyres) config.json whose pinpoints are not pairs."""
    ckpt = _copy(hf15_dir, tmp_path / "hf")
    _edit_json(ckpt / "config.json", model_type="llava_next", image_grid_pinpoints=[[32, 64, 96]])
    _no_weights(monkeypatch)
    with pytest.raises(ValueError, match=rf"{ckpt / 'config.json'}.*image_grid_pinpoints"):
        load(ckpt)


def _drop_weight(ckpt: Path, key: str) -> None:
    """Remove tensor `key` from the shard that holds it and from the shard index (when there is one)."""
    import torch
    from safetensors.torch import load_file, save_file

    index = next(iter(ckpt.glob("*.index.json")), None)
    if index is not None:
        meta = json.loads(index.read_text())
        shard = ckpt / meta["weight_map"].pop(key)
        index.write_text(json.dumps(meta))
    else:
        shard = ckpt / "model.safetensors"
    if shard.suffix == ".safetensors":
        state = load_file(str(shard))
        del state[key]
        save_file(state, str(shard), metadata={"format": "pt"})
    else:
        state = torch.load(shard, weights_only=True)
        del state[key]
        torch.save(state, shard)


@pytest.mark.parametrize("which, dropped, named", [
    # liuhaotian layout: the names in the files are the model's own
    ("v15", "model.mm_projector.0.weight", "model.mm_projector.0.weight"),
    ("v16", "model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"),
    # llava-hf (the names save_pretrained writes): the message gives LLaVA's name of the weight (linear_1 is
    # LLaVA's mm_projector.0 in transformers' convert_llava_weights_to_hf.py); the layer's path inside the LLM stays
    ("hf15", "multi_modal_projector.linear_1.weight", "mm_projector.0.weight"),
    ("hf15", "language_model.model.layers.1.mlp.up_proj.weight", "layers.1.mlp.up_proj.weight"),
])
def test_weight_missing_from_the_checkpoint_is_named(tmp_path, v15_dir, v16_dir, hf15_dir, load, which, dropped,
                                                     named):
    """A tensor absent from the shards would stay randomly initialised: the loader refuses, naming it and the dir."""
    ckpt = _copy({"v15": v15_dir, "v16": v16_dir, "hf15": hf15_dir}[which], tmp_path / "ckpt")
    _drop_weight(ckpt, dropped)
    with pytest.raises(ValueError) as err:
        load(ckpt)
    msg = str(err.value)
    assert named in msg and str(ckpt) in msg


# ---------------------------------------------------------------- item 11: eval_easyvqa.sh checks before writing


def test_eval_easyvqa_bad_set_writes_nothing(tmp_path):
    data_root = tmp_path / "eval"
    files = {}
    for name in ("easyvqa", "easyvqa_500"):
        path = data_root / name / f"llava_{name}_test.jsonl"
        path.parent.mkdir(parents=True)
        path.write_text('{"question_id": 0, "text": "sentinel"}\n')
        files[path] = path.stat().st_mtime_ns
    env = dict(os.environ, EASYVQA_SET="bogus", DATA_ROOT=str(data_root), PYTHON=sys.executable,
               MODEL_PATH=str(tmp_path / "no-model"))
    run = subprocess.run(["bash", str(REPO / "scripts/tiny/eval_easyvqa.sh"), "16"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0
    assert "EASYVQA_SET=bogus" in run.stderr and "easyvqa_500" in run.stderr  # names the variable and the choices
    for path, mtime in files.items():
        assert path.read_text() == '{"question_id": 0, "text": "sentinel"}\n' and path.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in data_root.iterdir()) == ["easyvqa", "easyvqa_500"]  # no images folder either


@pytest.mark.parametrize("token", ["0", "65"])
def test_eval_easyvqa_bad_token_writes_nothing(tmp_path, token):
    data_root = tmp_path / "eval"
    env = dict(os.environ, DATA_ROOT=str(data_root), PYTHON=sys.executable, MODEL_PATH=str(tmp_path / "no-model"))
    run = subprocess.run(["bash", str(REPO / "scripts/tiny/eval_easyvqa.sh"), token], env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode != 0 and "64" in run.stderr
    assert not data_root.exists()


def test_export_easyvqa_rejects_unknown_set_before_writing(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "scripts/tiny/export_easyvqa.py"), "--data-root",
                          str(tmp_path / "eval"), "--set", "bogus"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "bogus" in run.stderr and "easyvqa_500" in run.stderr
    assert not (tmp_path / "eval").exists()
