"""The one way pruning settings enter: the shared CLI flags, the request -> config resolution, the loader's
`pruning=` and its keyword sugar, the loader options (one value per concept) and the run identity.

Expected values are written by hand from the flags' documented names and defaults (README "Pruning options",
the original FasterVLM scripts: no flag = every token, fastervlm, paper mode, FastV's K = 2)."""

import argparse
from types import SimpleNamespace

import pytest
import torch

from llava.eval.answer_identity import IDENTITY_FIELDS, run_identity
from llava.model.builder import load_options
from llava.model.pruning import PruningConfig, PruningRequest, resolve_pruning
from tests.tiny_checkpoints import PATCHES


def parse(*argv):
    parser = argparse.ArgumentParser()
    PruningConfig.add_cli_args(parser)
    return PruningConfig.from_args(parser.parse_args(list(argv)))


def test_flags_parse_to_hand_written_requests():
    assert parse() == PruningRequest("fastervlm", None, "paper", 0, 2)
    assert parse("--visual-token-num", "58", "--pruning-method", "fastv", "--anyres-mode", "upstream",
                 "--fastv-layer", "3") == PruningRequest("fastv", 58, "upstream", 0, 3)
    assert parse("--visual-token-num=144", "--pruning-method=random") == PruningRequest("random", 144, "paper", 0, 2)


@pytest.mark.parametrize("argv, error, message", [
    (("--visual-token-num", "0"), ValueError, "visual_token_num=0 is out of range.*at least 1"),
    (("--pruning-method", "topk"), ValueError, "unknown pruning method 'topk'; registered methods: .*fastervlm"),
    (("--fastv-layer", "0"), ValueError, "llm_layer=0 is out of range"),
])
def test_bad_flags_get_the_python_message(argv, error, message):
    with pytest.raises(error, match=message):
        parse(*argv)


def test_request_resolves_against_the_tower():
    assert parse().resolve(64) == PruningConfig("fastervlm", 64, 64, "paper", 0, 2)  # no flag: every token
    assert parse("--visual-token-num", "16").resolve(64) == PruningConfig("fastervlm", 16, 64, "paper", 0, 2)
    with pytest.raises(ValueError, match="visual_token_num=65 is out of range.*between 1 and 64"):
        parse("--visual-token-num", "65").resolve(64)
    # a config built for CLIP-336 is re-checked against a 64-token tower
    assert resolve_pruning(PruningConfig(visual_token_num=10), 64) == PruningConfig("fastervlm", 10, 64, "paper", 0, 2)
    with pytest.raises(ValueError, match="between 1 and 64"):
        resolve_pruning(PruningConfig(), 64)
    with pytest.raises(TypeError, match="PruningConfig or PruningRequest"):
        resolve_pruning({"method": "fastv"}, 64)
    with pytest.raises(TypeError, match="visual_token_num must be an int"):
        PruningRequest(visual_token_num=True)


def test_request_is_read_only():
    import dataclasses

    with pytest.raises(dataclasses.FrozenInstanceError, match="PruningRequest is read-only"):
        PruningRequest().visual_token_num = 3


# --------------------------------------------------------------------------- loader: pruning= and its sugar
def test_loader_sugar_and_pruning_give_the_hand_stated_config(v15_dir, load):
    want = PruningConfig("fastv", 5, PATCHES, "upstream", 0, 1)  # PATCHES: the tiny tower's tokens per crop
    _, by_sugar, _, _ = load(v15_dir, visual_token_num=5, pruning_method="fastv", anyres_mode="upstream", llm_layer=1)
    _, by_request, _, _ = load(v15_dir, pruning=PruningRequest("fastv", 5, "upstream", llm_layer=1))
    assert by_sugar.pruning == want and by_request.pruning == want
    _, plain, _, _ = load(v15_dir)
    assert plain.pruning == PruningConfig("fastervlm", PATCHES, PATCHES, "paper", 0, 2)  # default: no pruning


def test_loader_refuses_pruning_and_sugar_together(v15_dir, load):
    with pytest.raises(ValueError, match=r"either as pruning=\.\.\. or as the keywords \['visual_token_num'\]"):
        load(v15_dir, pruning=PruningRequest(), visual_token_num=5)


# --------------------------------------------------------------------------- loader options: one per concept
def test_load_options_on_cpu():
    opts = load_options(device="cpu")
    assert opts.from_pretrained == {"dtype": torch.float32, "attn_implementation": "sdpa", "device_map": {"": "cpu"}}
    assert (opts.dtype, opts.attn) == (torch.float32, "sdpa")
    assert load_options(device="cpu", torch_dtype="bfloat16").dtype == torch.bfloat16  # the older name
    assert load_options(device="cpu", dtype=torch.float16, torch_dtype="float16").dtype == torch.float16  # agree
    assert load_options(device="cpu", use_flash_attn=True).attn == "flash_attention_2"


@pytest.mark.parametrize("kwargs, message", [
    (dict(dtype="float16", torch_dtype="bfloat16"), "dtype=torch.float16 and torch_dtype=torch.bfloat16 disagree"),
    (dict(attn_implementation="eager", use_flash_attn=True), "attn_implementation='eager' and use_flash_attn"),
    (dict(device_map={"": "meta"}), "device='cpu' places the whole model"),
    (dict(dtype="float17"), "dtype 'float17' is not a torch dtype"),
])
def test_load_options_conflicts(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_options(device="cpu", **kwargs)


# --------------------------------------------------------------------------- run identity
BASE = dict(conv_mode="vicuna_v1", temperature=0.0, top_p=None, num_beams=1, max_new_tokens=128)


def identity(pruning=PruningConfig("fastervlm", 144, 576), args=None, **kw):
    kw = {"model_id": "llava-v1.5-7b", "anyres": True, "checkpoint": "sha256:0", "prompt_options": {}, **kw}
    return run_identity(SimpleNamespace(**(args or BASE)), pruning, **kw)


def test_run_identity_fields_by_hand():
    assert identity().as_fields() == {
        "model_id": "llava-v1.5-7b", "visual_token_num": 144, "pruning_method": "fastervlm", "anyres_mode": "paper",
        "method_params": {}, "conv_mode": "vicuna_v1", "temperature": 0.0, "top_p": None, "num_beams": 1,
        "max_new_tokens": 128, "prompt_options": {}, "checkpoint": "sha256:0"}
    fastv = identity(PruningRequest("fastv", None, llm_layer=3), anyres=False)
    assert (fastv.visual_token_num, fastv.anyres_mode, fastv.method_params) == (None, None, {"llm_layer": 3})


# Every setting an entry point's flags (or the checkpoint) can change, listed by hand, each with another value:
# the identity must change with each, so no setting can be left out of the answers file's identity.
CHANGES = [
    ("--model-path", dict(model_id="llava-v1.5-13b")),
    ("checkpoint files", dict(checkpoint="sha256:1")),
    ("--visual-token-num", dict(pruning=PruningConfig("fastervlm", 58, 576))),
    ("--pruning-method", dict(pruning=PruningConfig("uniform", 144, 576))),
    ("--anyres-mode", dict(pruning=PruningConfig("fastervlm", 144, 576, "upstream"))),
    ("--conv-mode", dict(args={**BASE, "conv_mode": "llava_v1"})),
    ("--temperature", dict(args={**BASE, "temperature": 0.2})),
    ("--num_beams", dict(args={**BASE, "num_beams": 3})),
    ("--max_new_tokens", dict(args={**BASE, "max_new_tokens": 16})),
    ("prompt options", dict(prompt_options={"single_pred_prompt": True})),
]


@pytest.mark.parametrize("setting, change", CHANGES, ids=[c[0] for c in CHANGES])
def test_run_identity_changes_with_each_setting(setting, change):
    assert identity(**change) != identity()


def test_run_identity_method_parameters_and_unused_settings():
    fastv = PruningConfig("fastv", 144, 576, llm_layer=2)
    assert identity(fastv.replace(llm_layer=3)) != identity(fastv)  # --fastv-layer, for FastV
    rand = PruningConfig("random", 144, 576)
    assert identity(rand.replace(seed=1)) != identity(rand)  # the seed, for random
    sampled = {**BASE, "temperature": 0.2, "top_p": 0.9}
    assert identity(args={**sampled, "top_p": 0.5}) != identity(args=sampled)  # --top_p, when sampling
    # settings a run does not read leave the identity alone (a finished file stays resumable)
    assert identity(PruningConfig("fastervlm", 144, 576, llm_layer=5)) == identity()
    assert identity(args={**BASE, "top_p": 0.5}) == identity()  # greedy ignores top_p
    assert identity(PruningConfig("fastervlm", 144, 576, "upstream"), anyres=False) == identity(anyres=False)
    assert set(IDENTITY_FIELDS) == set(identity().as_fields())
