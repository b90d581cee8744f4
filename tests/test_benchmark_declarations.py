"""The one declaration per benchmark (llava/eval/tasks.py) and how METHOD reaches the runner.

Expected values are written by hand: entry points and their flags from haotian-liu/LLaVA's
scripts/v1_5/eval/*.sh, folders and headline metrics from EVAL.md ("Data" sections and "Headlines never hide
missing answers"); the scripts' command lines from scripts/eval_common.sh's documented mapping, captured by a fake
interpreter that prints its arguments.
"""

import contextlib
import importlib
import io
import os
import subprocess
from pathlib import Path

import pytest

from llava.eval import run_benchmark
from llava.eval.tasks import BENCHMARKS, method_folder
from llava.model.pruning import METHODS, PruningConfig, method_parameters

REPO = Path(__file__).resolve().parents[1]

# name: (folder, entry point, its fixed flags, scorer module, headline metric, missing answer counted wrong)
EXPECTED = {
    "vqav2": ("vqav2", "model_vqa_loader", (), "vqav2", None, True),  # EvalAI test-dev upload
    "gqa": ("gqa", "model_vqa_loader", (), "gqa", "accuracy", True),
    "vizwiz": ("vizwiz", "model_vqa_loader", (), "vizwiz", None, True),  # EvalAI upload
    "sqa": ("scienceqa", "model_vqa_science", ("--single-pred-prompt",), "sqa", "img_accuracy", True),
    "textvqa": ("textvqa", "model_vqa_loader", (), "textvqa", "accuracy", False),
    "pope": ("pope", "model_vqa_loader", (), "pope", "average/f1", False),
    "mme": ("MME", "model_vqa_loader", (), "mme", "perception/total", True),
    "mmbench": ("mmbench", "model_vqa_mmbench", ("--single-pred-prompt",), "mmbench", "accuracy", True),
    "mmbench_cn": ("mmbench_cn", "model_vqa_mmbench", ("--lang", "cn", "--single-pred-prompt"), "mmbench",
                   "accuracy", True),
    "mmvet": ("mm-vet", "model_vqa", (), "mmvet", None, True),  # MM-Vet's GPT-4 grader
    "easyvqa": ("easyvqa", "model_vqa_loader", ("--max_new_tokens", "8"), "easyvqa", "accuracy", True),
    "easyvqa_500": ("easyvqa_500", "model_vqa_loader", ("--max_new_tokens", "8"), "easyvqa", "accuracy", True),
    # Video-LLaVA's scripts/v1_5/eval/run_qa_*.sh (see tests/test_video_benchmarks.py for the whole table)
    **{name: (f"GPT_Zero_Shot_QA/{folder}", "model_video_qa", args, "video_qa", "accuracy", True)
       for name, folder, args in (("msvd", "MSVD_Zero_Shot_QA", ()), ("msrvtt", "MSRVTT_Zero_Shot_QA", ()),
                                  ("tgif", "TGIF_Zero_Shot_QA", ()),
                                  ("activitynet", "Activitynet_Zero_Shot_QA", ("--video-prefix", "v_")))},
}


def test_each_benchmark_is_declared_as_eval_md_says():
    assert set(BENCHMARKS) == set(EXPECTED)
    for name, (folder, entry, entry_args, scorer, headline, missing_as_wrong) in EXPECTED.items():
        bench = BENCHMARKS[name]
        got = (bench.folder, bench.entry, bench.entry_args, bench.scorer, bench.headline, bench.missing_as_wrong)
        assert got == (folder, entry, entry_args, scorer, headline, missing_as_wrong), name


def test_declared_modules_and_scorer_flags_exist():
    """Every entry point and scorer module imports, and each flag the declaration gives a scorer is in that
    scorer's own --help (a renamed flag would otherwise fail only at the end of a long run)."""
    for name, bench in BENCHMARKS.items():
        assert callable(importlib.import_module(f"llava.eval.{bench.entry}").main), name
        scorer = importlib.import_module(f"llava.eval.scoring.{bench.scorer}")
        assert callable(scorer.evaluate), name
        help_text = io.StringIO()
        with contextlib.redirect_stdout(help_text), pytest.raises(SystemExit):
            scorer.main(["--help"])
        for flag, _ in bench.scorer_args + bench.optional_args:
            assert flag in help_text.getvalue().split(), (name, flag)


@pytest.mark.parametrize("name, metrics, value", [
    ("pope", {"average": {"f1": 85.0}, "accuracy": 1.0}, 85.0),
    ("mme", {"perception": {"total": 1500.5}, "cognition": {"total": 300.0}}, 1500.5),
    ("sqa", {"accuracy": 70.0, "img_accuracy": 68.5}, 68.5),
    ("mmbench", {"note": "test split: upload only"}, None),  # no score in the metrics
    ("pope", {"average": {"f1": "n/a"}}, None),  # a path ending in a non-number
    ("vqav2", {"accuracy": 80.0}, None),  # server-scored: never a local headline
])
def test_headline_value_follows_the_declared_path(name, metrics, value):
    assert BENCHMARKS[name].headline_value(metrics) == value


# ------------------------------------------------------------------ METHOD and the other variables


def script_argv(tmp_path, script, args=(), **env_vars):
    """The interpreter arguments `bash <script> <args>` ends with, through a fake $PYTHON printing one per line."""
    fake = tmp_path / "fake_python"
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CKPT", "MODEL_PATH", "DATA_ROOT", "METHOD")}
    env.update(env_vars, PYTHON=str(fake))
    out = subprocess.run(["bash", str(REPO / script), *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


RUNNER = ["-W", "ignore", "-m", "llava.eval.run_benchmark"]


def test_eval_scripts_turn_the_environment_into_flags(tmp_path):
    base = RUNNER + ["--family", "v1_5", "--benchmark", "textvqa", "--visual-token-num", "58"]
    assert script_argv(tmp_path, "scripts/v1_5/eval/textvqa.sh", ["58"]) == base
    assert script_argv(tmp_path, "scripts/v1_5/eval/textvqa.sh", ["58"], METHOD="fastv") == \
        base + ["--pruning-method", "fastv"]
    assert script_argv(tmp_path, "scripts/v1_5/eval/textvqa.sh", ["58"], METHOD="") == base  # empty: the default
    assert script_argv(tmp_path, "scripts/v1_6/eval/mme.sh", ["29", "--batch-size", "8"], METHOD="visionzip",
                       CKPT="c", MODEL_PATH="/m", DATA_ROOT="/d") == \
        RUNNER + ["--family", "v1_6", "--benchmark", "mme", "--visual-token-num", "29", "--ckpt", "c",
                  "--model-path", "/m", "--data-root", "/d", "--pruning-method", "visionzip", "--batch-size", "8"]


def test_easyvqa_script_passes_method_as_the_flag(tmp_path):
    (tmp_path / "easyvqa").mkdir()
    (tmp_path / "easyvqa" / "llava_easyvqa_test.jsonl").write_text("")  # present: nothing is exported
    argv = script_argv(tmp_path, "scripts/tiny/eval_easyvqa.sh", ["16"], METHOD="fastv", MODEL_PATH="/m",
                       DATA_ROOT=str(tmp_path))
    assert argv == RUNNER + ["--benchmark", "easyvqa", "--visual-token-num", "16", "--ckpt",
                             "tiny-llava-dinov2-smollm2", "--model-path", "/m", "--data-root", str(tmp_path),
                             "--pruning-method", "fastv"]


@pytest.mark.parametrize("method_env, extra, method, folder", [
    (None, [], "fastervlm", "fastervlm"),
    ("fastv", [], "fastv", "fastv"),
    ("fastv", ["--fastv-layer", "3"], "fastv", "fastv_k3"),
    ("fastv", ["--pruning-method", "random"], "random", "random"),  # a flag after TOKEN wins over METHOD
    ("fastv", ["--method", "uniform"], "uniform", "uniform"),  # the runner's older name of the flag
])
def test_method_reaches_the_entry_point_once_and_names_the_folder(tmp_path, method_env, extra, method, folder):
    env = {"METHOD": method_env} if method_env else {}
    argv = script_argv(tmp_path, "scripts/v1_5/eval/textvqa.sh", ["58", *extra], CKPT="c", DATA_ROOT="/d", **env)
    plan = run_benchmark.make_plan(argv[len(RUNNER):])
    assert plan.answers == f"/d/textvqa/answers/c/{folder}/n_58.jsonl"
    entry = plan.entry_argv(plan.answers)
    assert entry.count("--pruning-method") == 1 and entry[entry.index("--pruning-method") + 1] == method
    assert "--method" not in entry


def test_runner_reads_no_environment_variables(tmp_path, monkeypatch):
    for key, value in {"METHOD": "random", "CKPT": "env-ckpt", "MODEL_PATH": "/env", "DATA_ROOT": "/env"}.items():
        monkeypatch.setenv(key, value)
    plan = run_benchmark.make_plan(["--benchmark", "gqa", "--visual-token-num", "144"])
    assert (plan.method, plan.ckpt, plan.model_path) == ("fastervlm", "llava-v1.5-7b", "liuhaotian/llava-v1.5-7b")
    assert plan.answers == os.path.normpath("./playground/data/eval/gqa/answers/llava-v1.5-7b/fastervlm/n_144.jsonl")


def test_method_folder_names_exactly_the_parameters_the_method_reads():
    """FastV's K (`--fastv-layer`, tag k) is in the folder exactly when `method_parameters` lists `llm_layer`
    for the method and K is not the default 2; no other method's folder changes with it."""
    assert method_folder("fastv", {"--fastv-layer": "3"}) == "fastv_k3"
    assert method_folder("fastv", {"--fastv-layer": "2"}) == "fastv"
    for name in METHODS:
        reads_k = "llm_layer" in method_parameters(PruningConfig(method=name, llm_layer=3))
        assert method_folder(name, {"--fastv-layer": "3"}) == (f"{name}_k3" if reads_k else name), name
