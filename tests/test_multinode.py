"""The benchmark runner under a launcher (issue 17, item 2): torchrun ranks answer their chunks, rank 0 merges.

Sources of truth: the single-process run of the same runner on the same questions (a path with no chunking, no
ranks and no store), LLaVA's chunk split computed by hand (ceil(n / 2) questions in the first chunk), the
process the test itself kills, and ``socket.gethostname()`` for the host a failed rank must be named with.
Every launch runs on CPU, offline, with the tiny LLaVA-1.5 checkpoint and 2-token answers.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch.distributed import HashStore

from llava.eval import run_benchmark
from llava.eval.benchmark_plan import Launch, launch_from_env
from llava.eval.distributed import RankGroup, device_args, failure_message
from tests.conftest import pil_image

REPO = Path(__file__).resolve().parents[1]
TOKENS = 6
N_QUESTIONS = 24  # 12 per rank: enough for a rank to be killed between its first and its last answer


def make_textvqa(root: Path, n: int = N_QUESTIONS) -> Path:
    """<root>/textvqa in LLaVA's layout: n questions on distinct small images, and annotations for the scorer."""
    folder = root / "textvqa"
    (folder / "train_images").mkdir(parents=True)
    questions, data = [], []
    for i in range(n):
        pil_image(24 + 2 * (i % 5), 24 + 2 * (i % 3), seed=i).save(folder / "train_images" / f"img{i}.png")
        text = f"what is written on sign {i}?\nAnswer the question using a single word or phrase."
        questions.append({"question_id": f"img{i}", "image": f"img{i}.png", "text": text})
        data.append({"question_id": 100 + i, "question": text.split("\n")[0], "image_id": f"img{i}",
                     "answers": ["sign"] * 10})
    (folder / "llava_textvqa_val_v051_ocr.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    (folder / "TextVQA_0.5.1_val.json").write_text(json.dumps({"data": data}))
    return folder


def answers_path(root: Path, ckpt: str) -> Path:
    return root / "textvqa" / "answers" / ckpt / "fastervlm" / f"n_{TOKENS}.jsonl"


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_answer_id(records: list[dict]) -> list[dict]:
    """Answer lines less ``answer_id`` (a fresh shortuuid per answer, in LLaVA's layout)."""
    return [{k: v for k, v in r.items() if k != "answer_id"} for r in records]


def runner_argv(root: Path, model, ckpt: str, *extra: str) -> list[str]:
    return ["--benchmark", "textvqa", "--visual-token-num", str(TOKENS), "--ckpt", ckpt, "--data-root", str(root),
            "--model-path", str(model), "--max_new_tokens", "2", *extra]


def child_env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env.update(extra)
    return env


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
# accelerate's multi-process launch goes through torch's elastic agent too (on CPU as well, with --multi_gpu)
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def torchrun(root: Path, model, ckpt: str, *extra: str, launcher=TORCHRUN) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node 2 -m llava.eval.run_benchmark ...` (CPU: no --device given)."""
    command = [*launcher, "-m", "llava.eval.run_benchmark", *runner_argv(root, model, ckpt, *extra)]
    return subprocess.Popen(command, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    make_textvqa(root)
    return root


@pytest.fixture(scope="module")
def single(root, v15_dir):
    """The single-process run (no launcher, no chunks): answers and metrics."""
    result = run_benchmark.main(runner_argv(root, v15_dir, "single", "--device", "cpu"))
    return load(answers_path(root, "single")), result["metrics"]


# ------------------------------------------------------------------ torchrun: same answers as one process


def test_torchrun_ranks_merge_to_the_single_process_answers(root, v15_dir, single):
    code, out, err = finish(torchrun(root, v15_dir, "ranks"))
    assert code == 0, err[-3000:]
    merged = load(answers_path(root, "ranks"))
    assert without_answer_id(merged) == without_answer_id(single[0])  # same order, ids, texts, identity
    chunk_dir = answers_path(root, "ranks").with_suffix("")
    assert [[r["question_id"] for r in load(chunk_dir / f"2_{k}.jsonl")] for k in range(2)] == \
        [[f"img{i}" for i in range(12)], [f"img{i}" for i in range(12, 24)]]  # LLaVA's split: ceil(24 / 2) = 12
    assert [r["answer_id"] for r in merged] == [r["answer_id"] for k in range(2)
                                                for r in load(chunk_dir / f"2_{k}.jsonl")]
    # rank 0 alone scores, once, the same accuracy as the single process
    assert out.count("[textvqa] accuracy: ") == 1
    metrics = json.loads((answers_path(root, "ranks").parent / f"n_{TOKENS}.metrics.json").read_text())
    assert metrics["accuracy"] == single[1]["accuracy"]


def test_killed_rank_resumes_with_nothing_lost_or_duplicated(root, v15_dir, single):
    chunk = answers_path(root, "killed").with_suffix("") / "2_1.jsonl"
    proc = torchrun(root, v15_dir, "killed", "--no-score")
    try:
        wait_for(lambda: line_count(chunk) >= 1, 180, "rank 1's first answer")
        pid = int(Path(f"{chunk}.lock").read_text().split()[0])  # the rank holding chunk 1's lock
        os.kill(pid, signal.SIGKILL)
        written = line_count(chunk)
        code, _, err = finish(proc)
    finally:
        proc.kill()
    assert code != 0 and 1 <= written < 12, (code, written)
    assert not answers_path(root, "killed").exists()  # nothing merged from a failed launch
    before = {r["question_id"]: r["answer_id"] for r in load(chunk)}
    code, _, err = finish(torchrun(root, v15_dir, "killed", "--no-score"))
    assert code == 0, err[-3000:]
    assert "already answered" in err  # resumed, not redone
    merged = load(answers_path(root, "killed"))
    assert without_answer_id(merged) == without_answer_id(single[0])
    assert {r["question_id"]: r["answer_id"] for r in merged if r["question_id"] in before} == before


def test_failed_rank_is_named_with_its_host_and_nothing_is_merged(tmp_path, v15_dir):
    """Launched by `accelerate launch --num_processes 2` (the torchrun tests cover torchrun itself)."""
    pytest.importorskip("accelerate")
    folder = make_textvqa(tmp_path, n=4)
    (folder / "train_images" / "img3.png").write_bytes(b"not a png")  # question 3: chunk 1 (ceil(4 / 2) = 2)
    code, _, err = finish(torchrun(tmp_path, v15_dir, "broken", "--no-score", launcher=ACCELERATE))
    assert code != 0
    assert f"rank 1 (host {socket.gethostname()}): " in err and "img3.png" in err
    assert "rank 0 (host" not in err  # rank 0's chunk was fine
    assert not answers_path(tmp_path, "broken").exists()
    assert len(load(answers_path(tmp_path, "broken").with_suffix("") / "2_0.jsonl")) == 2  # rank 0's work is kept


# ------------------------------------------------------------------ srun-style launch: a lost rank does not hang


def start_rank(root: Path, model, ckpt: str, rank: int, port: int, *extra: str) -> subprocess.Popen:
    """One process as srun starts it with the torchrun-style environment (no torchrun agent: rank 0 hosts the
    store)."""
    env = child_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(port))
    command = [sys.executable, "-m", "llava.eval.run_benchmark", *runner_argv(root, model, ckpt, *extra)]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_rank_killed_outside_torchrun_is_named_as_lost_within_the_timeout(tmp_path, v15_dir):
    make_textvqa(tmp_path, n=4)
    port = free_port()
    procs = [start_rank(tmp_path, v15_dir, "lost", rank, port, "--no-score", "--rank-timeout", "3")
             for rank in range(2)]
    try:
        lock = answers_path(tmp_path, "lost").with_suffix("") / "2_1.jsonl.lock"
        wait_for(lock.exists, 180, "rank 1 to start answering")  # it has joined the store by then
        procs[1].send_signal(signal.SIGKILL)
        # without the heartbeat rule rank 0 would wait forever: communicate's timeout raises then
        code, _, err = finish(procs[0], timeout=120)
    finally:
        for proc in procs:
            proc.kill()
    assert code != 0
    assert f"rank 1 (host {socket.gethostname()}): lost: no heartbeat for 3 s" in err  # the 3 s rule named it
    assert not answers_path(tmp_path, "lost").exists()


# ------------------------------------------------------------------ the launch environment and the meeting


def test_launch_environment_sets_one_chunk_per_rank():
    assert launch_from_env({}) is None
    assert launch_from_env({"RANK": "3", "WORLD_SIZE": "4", "SLURM_LOCALID": "1"}) == \
        Launch(3, 4, 1, socket.gethostname())
    for environ, message in (({"RANK": "0"}, "WORLD_SIZE is not set"), ({"RANK": "4", "WORLD_SIZE": "4",
                             "LOCAL_RANK": "0"}, r"need 0 <= RANK < WORLD_SIZE"),
                             ({"RANK": "0", "WORLD_SIZE": "2"}, "LOCAL_RANK is not set")):
        with pytest.raises(ValueError, match=message):
            launch_from_env(environ)


def test_plan_under_a_launcher_has_world_size_chunks(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # ignored under a launcher: one GPU per rank
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    plan = run_benchmark.make_plan(["--benchmark", "textvqa", "--visual-token-num", "6", "--data-root",
                                    str(tmp_path)])
    assert plan.chunks == 3 and plan.chunk_argv(1)[-4:] == ["--num-chunks", "3", "--chunk-idx", "1"]
    assert plan.chunk_answers(1).endswith("answers/llava-v1.5-7b/fastervlm/n_6/3_1.jsonl")
    with pytest.raises(ValueError, match="--num-chunks 2 under a launcher with WORLD_SIZE=3"):
        run_benchmark.make_plan(["--benchmark", "textvqa", "--visual-token-num", "6", "--num-chunks", "2"])


def collect_within(group: RankGroup, seconds: float) -> list[dict]:
    """group.collect() in a thread, so that a collect that never returns fails the test instead of hanging it."""
    result = []
    thread = threading.Thread(target=lambda: result.append(group.collect(poll=0.05)), daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"collect() did not return within {seconds} s"
    return result[0]


def test_collect_names_failed_and_silent_ranks_and_waits_for_slow_ones():
    """Four ranks on one in-memory store: rank 1 reports an error, rank 2 joins and then never beats again, rank 3
    is alive (beating) and reports ok only after three times the timeout."""
    store = HashStore()
    groups = [RankGroup(Launch(r, 4, r, f"node{r}"), rank_timeout=0.4, store=store) for r in range(4)]
    groups[2].__enter__()
    groups[2].__exit__(None, None, None)  # stops beating: as if killed
    groups[1].report(ValueError("bad image\n img3.png"))
    groups[0].report(None)
    with groups[3]:
        threading.Timer(1.2, groups[3].report, args=(None,)).start()
        outcomes = collect_within(groups[0], 20)
    assert [o["error"] is None for o in outcomes] == [True, False, False, True]
    message = failure_message(outcomes)
    assert message.startswith("rank 1 (host node1): bad image img3.png; rank 2 (host node2): lost: no heartbeat")
    assert "rank 3" not in message and "rank 0" not in message
    assert failure_message(outcomes[:1]) is None


def test_each_rank_gets_its_local_gpu(monkeypatch):
    """Under a launcher on a node with 2 GPUs: LOCAL_RANK picks cuda:<LOCAL_RANK>; an explicit device stands."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    launch = Launch(5, 8, 1, "node2")
    assert device_args(launch, None) == ["--device", "cuda:1"] and chosen == [1]
    assert device_args(launch, "cuda") == ["--device", "cuda:1"]
    assert device_args(launch, "cpu") == [] and device_args(launch, "cuda:0") == []
    with pytest.raises(ValueError, match="LOCAL_RANK=2 on node2, but only 2 CUDA device"):
        device_args(Launch(2, 8, 2, "node2"), None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # srun --gpus-per-task 1: the task's own GPU
    assert device_args(launch, None) == ["--device", "cuda:0"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_args(launch, None) == []  # CPU: the entry point's own default


def test_eval_script_starts_the_runner_through_launcher(tmp_path):
    """scripts/v1_5/eval/textvqa.sh with LAUNCHER=torchrun (dry run): one rank per chunk, rank 0 alone merges."""
    env = child_env(DATA_ROOT=str(tmp_path), LAUNCHER=" ".join(TORCHRUN))
    proc = subprocess.run(["bash", str(REPO / "scripts/v1_5/eval/textvqa.sh"), "144", "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = tmp_path / "textvqa" / "answers" / "llava-v1.5-7b" / "fastervlm"
    for k in range(2):
        assert f"--answers-file {answers}/n_144/2_{k}.jsonl" in proc.stdout
        assert f"--num-chunks 2 --chunk-idx {k}" in proc.stdout
    assert proc.stdout.count(f"-> {answers}/n_144.jsonl") == 1
