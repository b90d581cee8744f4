"""Run one benchmark end to end: answer (one process per GPU, or per rank of a launch), merge, score.

    python -m llava.eval.run_benchmark --benchmark textvqa --visual-token-num 144
    CUDA_VISIBLE_DEVICES=0,1,2,3 python -m llava.eval.run_benchmark --benchmark vqav2 --visual-token-num 58
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        -m llava.eval.run_benchmark --benchmark vqav2 --visual-token-num 58

What runs (entry point and its flags, scorer, headline metric) comes from the benchmark's declaration in
:mod:`llava.eval.tasks`; which model, where the data is and which pruning method from flags (the scripts under
``scripts/<family>/eval/`` turn the environment variables beside them into these flags, ``scripts/eval_common.sh``):

    --ckpt            CKPT        name in output paths (llava-v1.5-7b; --family v1_6: llava-v1.6-vicuna-7b)
    --model-path      MODEL_PATH  checkpoint directory or hub name (liuhaotian/<ckpt>, from the local HF cache)
    --data-root       DATA_ROOT   ./playground/data/eval
    --pruning-method  METHOD      fastervlm (alias --method): given to the entry point as is; the output folder

Answers: ``<data root>/<bench folder>/answers/<ckpt>/<method>/n_<tokens>.jsonl``, where ``<method>``
also names non-default method parameters (``fastv_k3`` for ``--fastv-layer 3``; see
:func:`llava.eval.tasks.method_folder`). With N > 1
GPUs in CUDA_VISIBLE_DEVICES (or ``--num-chunks N``), chunk K is answered by its own process
(``CUDA_VISIBLE_DEVICES=<K-th GPU>``) into ``.../n_<tokens>/<N>_<K>.jsonl``; the chunks are
merged in order once all succeed; the runner holds ``<answers>.lock`` meanwhile and each chunk
process the lock of its chunk file, so a second run is refused with the holder's PID. Chunk
processes run in their own process group with a parent-death signal (and poll their parent as a
fallback): if the runner dies, even by ``kill -9``, they stop too. Reruns resume (see
:mod:`llava.eval.answers`). Any other
flag (``--batch-size 8``, ``--device cpu``, ``--overwrite``, ``--all-rounds``, ...) goes to the
entry point, except the scorer flags a declaration names (the video judge's ``--api-base``, ``--judge-model``).

Several nodes: started by torchrun, ``accelerate launch`` or ``srun`` with ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT`` set, each rank answers chunk RANK of WORLD_SIZE in its own
process (on GPU LOCAL_RANK when CUDA is there, else the CPU) into the same chunk files, under the same locks and
resume rules; rank 0 then waits for every rank's outcome, merges in chunk order and scores. A rank that fails, or
goes silent for ``--rank-timeout`` seconds, is named with its host and stops the merge; rerun to resume
(:mod:`llava.eval.distributed`). The answers data root must be on a filesystem every node shares.

Video (``--family video``: Video-LLaVA-7B-hf, LanguageBind/): ``--visual-token-num`` is per frame (256 = no
pruning); ``--limit N`` answers and scores the first N questions only (``n_<tokens>_first<N>``); the answering
and the judging are separate runs: ``--no-score``, then ``--score-only`` (scripts/video/eval/).
Paths, flags and checks are resolved in :mod:`llava.eval.benchmark_plan`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import os
import shlex
import signal
import subprocess
import sys

from llava.cli import EXPECTED_ERRORS, WATCH_PARENT_ENV, run_cli
from llava.eval import benchmark_plan
from llava.eval.answers import hold_lock, merge_answers, skipped_path
from llava.eval.benchmark_plan import Plan, check_inputs, passed_value
from llava.eval.scoring.common import write_json
from llava.eval.scoring.report import NothingScoredError, coverage_line, headline_status, nothing_scored

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def module_command(module: str, argv: list[str]) -> str:
    return shlex.join(["python", "-m", module, *argv])


def _with_package_root(pythonpath: str | None) -> str:
    """PYTHONPATH for a child process that must import this very ``llava`` (installed or not)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.pathsep.join([root, pythonpath] if pythonpath else [root])


def make_plan(argv=None) -> Plan:
    """The run's :class:`~llava.eval.benchmark_plan.Plan` from the runner's flags (``--help``: this module's doc)."""
    return benchmark_plan.make_plan(argv, description=__doc__)


def _die_with_parent() -> None:
    """preexec_fn of a chunk process (runs in the child before exec): its own process group, so a terminal's
    Ctrl-C reaches the runner alone, which then stops the group; and, on Linux, SIGKILL when the runner dies
    (prctl PR_SET_PDEATHSIG), so a ``kill -9`` of the runner leaves no orphan answering on. Elsewhere the child
    polls its parent instead (``FASTERVLM_WATCH_PARENT``, :func:`llava.eval.answering.watch_parent`)."""
    os.setpgid(0, 0)
    libc_name = ctypes.util.find_library("c")
    if libc_name and sys.platform.startswith("linux"):
        ctypes.CDLL(libc_name, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def start_chunk_process(command: list[str], env: dict) -> subprocess.Popen:
    """Start one chunk worker that dies with this process (see :func:`_die_with_parent`)."""
    env = dict(env, **{WATCH_PARENT_ENV: str(os.getpid())})
    return subprocess.Popen(command, env=env, preexec_fn=_die_with_parent)


def _stop(children: list[subprocess.Popen]) -> None:
    """SIGTERM the process group of every chunk worker still running (the runner is failing or interrupted)."""
    for child in children:
        if child.poll() is None:
            try:
                os.killpg(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def answer(plan: Plan) -> str:
    """Run the entry point (in this process, or one child per chunk) and return the answers file."""
    module = f"llava.eval.{plan.bench.entry}"
    if plan.launch is not None:
        _answer_as_rank(plan, module)
        return plan.answers
    if plan.chunks == 1:
        argv = plan.entry_argv(plan.answers)
        print(f"[{plan.bench.name}] {module_command(module, argv)}", flush=True)
        if not plan.dry_run:
            importlib.import_module(module).main(argv)  # takes the answers file's lock itself
            _report_skipped(plan)
        return plan.answers
    if plan.dry_run:
        _answer_chunks(plan, module)
        return plan.answers
    with hold_lock(plan.answers):  # a second runner on the same answers is refused, naming this PID
        _answer_chunks(plan, module)
    _report_skipped(plan)
    return plan.answers


def _answer_chunks(plan: Plan, module: str) -> None:
    children = []
    try:
        for k in range(plan.chunks):
            argv = plan.chunk_argv(k)
            env = dict(os.environ, PYTHONPATH=_with_package_root(os.environ.get("PYTHONPATH")))
            gpu = plan.gpus[k % len(plan.gpus)] if plan.gpus else None
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
            prefix = f"CUDA_VISIBLE_DEVICES={gpu} " if gpu is not None else ""
            print(f"[{plan.bench.name}] chunk {k}: {prefix}{module_command(module, argv)}", flush=True)
            if not plan.dry_run:
                children.append(start_chunk_process([sys.executable, "-m", module, *argv], env))
        failed = [(k, child.wait()) for k, child in enumerate(children)]
    except BaseException:  # Ctrl-C or an error while waiting: no worker may outlive the runner
        _stop(children)
        raise
    failed = [(k, rc) for k, rc in failed if rc != 0]
    if failed:
        listed = ", ".join(f"chunk {k} (exit code {rc})" for k, rc in failed)
        raise RuntimeError(f"{plan.bench.name}: {listed} failed; the finished answers are kept, rerun the same "
                           "command to resume")
    _merge_chunks(plan)


def _merge_chunks(plan: Plan) -> None:
    chunk_files = [plan.chunk_answers(k) for k in range(plan.chunks)]
    print(f"[{plan.bench.name}] merge {' '.join(chunk_files)} -> {plan.answers}", flush=True)
    if not plan.dry_run:
        n = merge_answers(chunk_files, plan.answers)
        print(f"[{plan.bench.name}] {n} answers in {plan.answers}", flush=True)


def _answer_as_rank(plan: Plan, module: str) -> None:
    """Under a launcher: answer chunk RANK in this process, report the outcome, and on rank 0 merge once every rank
    succeeded (else raise RankFailedError naming the failed ranks and hosts). Other ranks re-raise their own error."""
    # imported by name like the entry points: it needs torch, which plain and dry runs never load
    distributed = importlib.import_module("llava.eval.distributed")
    launch, name = plan.launch, plan.bench.name
    error = None
    try:  # e.g. a LOCAL_RANK beyond the GPUs this process sees: reported to rank 0 like a failed answer
        device = distributed.device_args(launch, passed_value(plan.passthrough, "--device"))
    except Exception as err:
        device, error = [], err
    argv = plan.chunk_argv(launch.rank) + device
    print(f"[{name}] rank {launch.rank}/{launch.world_size} on {launch.host}: {module_command(module, argv)}",
          flush=True)
    if plan.dry_run:
        if error is not None:
            raise error
        if launch.rank == 0:
            _merge_chunks(plan)
        return
    with distributed.RankGroup(launch, plan.rank_timeout) as group:
        if error is None:
            try:
                importlib.import_module(module).main(argv)  # takes its chunk file's lock itself
            except SystemExit as err:  # argparse exits; status 0 (or None) is a success
                error = err if err.code not in (0, None) else None
            except Exception as err:  # posted to rank 0 first, raised below
                error = err
        group.report(error)
        if launch.rank != 0:
            if not group.wait_released():
                print(f"[{name}] rank {launch.rank}: rank 0 went silent or away before merging; rerun the same "
                      "command to resume", file=sys.stderr, flush=True)
            if error is not None:
                raise error
            return
        _collect_and_merge(plan, group, distributed)


def _collect_and_merge(plan: Plan, group, distributed) -> None:
    """Rank 0: wait for every outcome, then merge (holding the answers file's lock) or name the failed ranks; the
    release comes last, so under torchrun no rank exits (and gets this process stopped) before that is said."""
    try:
        message = distributed.failure_message(group.collect())
        if message is not None:
            print(f"[{plan.bench.name}] {message}", file=sys.stderr, flush=True)
            raise distributed.RankFailedError(f"{plan.bench.name}: {message}")
        with hold_lock(plan.answers):  # a second runner on the same answers is refused, naming this PID
            _merge_chunks(plan)
    finally:
        group.release()


def _report_skipped(plan: Plan) -> None:
    """Say how many questions --skip-bad-images left unanswered, and where they are listed."""
    side = skipped_path(plan.answers)
    if os.path.exists(side):
        with open(side, "rb") as f:
            n = sum(1 for line in f if line.strip())
        if n:
            print(f"[{plan.bench.name}] {n} question(s) skipped for unreadable images (unanswered, counted as "
                  f"missing by the scorer): {side}", flush=True)


def score(plan: Plan) -> dict | None:
    """Run the declared scorer on the answers file (in this process) and print its headline metric."""
    bench = plan.bench
    module = f"llava.eval.scoring.{bench.scorer}"
    argv = plan.scorer_argv()
    print(f"[{bench.name}] {module_command(module, argv)}", flush=True)
    if plan.dry_run:
        return None
    metrics = importlib.import_module(module).main(argv)
    _report_headline(plan, metrics)
    for relative, purpose in bench.outputs:
        print(f"[{bench.name}] wrote {plan.path(relative)}: {purpose}", flush=True)
    return metrics


def _report_headline(plan: Plan, metrics: dict) -> None:
    """Print the headline with its coverage (``accuracy: 100.00 (partial: 10/60 answered)``), record both in
    ``metrics.json`` under ``headline``, and raise NothingScoredError when nothing was scored."""
    bench, name = plan.bench, plan.bench.name
    status = headline_status(metrics, bench.missing_as_wrong)
    value = bench.headline_value(metrics)
    headline = None if value is None else (bench.headline, value)
    run = f"({plan.ckpt}, {plan.method}, {plan.tokens} tokens per crop)"
    if headline is not None:
        note = f" ({status['note']})" if status["partial"] else ""
        print(f"[{name}] {headline[0]}: {headline[1]:.2f}{note}  {run}", flush=True)
    elif status["partial"]:
        print(f"[{name}] upload is partial: {'; '.join(status['reasons'])}  {run}", flush=True)
    print(f"[{name}] {coverage_line(status)}", flush=True)
    reason = nothing_scored(metrics)
    metrics["headline"] = {"metric": headline[0] if headline else None, "value": headline[1] if headline else None,
                           **status, "nothing_scored": reason}
    write_json(plan.metrics, metrics)
    if reason is not None:
        raise NothingScoredError(f"{name}: nothing was scored: {reason} (answers {plan.answers}, "
                                 f"metrics {plan.metrics})")


def main(argv=None) -> dict:
    plan = make_plan(argv)
    if not plan.dry_run:
        check_inputs(plan)
    if plan.launch is not None and plan.launch.rank != 0 and plan.score_only:
        return {"answers": plan.answers, "metrics": None}  # rank 0 scores
    answers = plan.answers if plan.score_only else answer(plan)
    lead = plan.launch is None or plan.launch.rank == 0  # the other ranks of a launch only answer
    metrics = None if plan.no_score or not lead else score(plan)
    return {"answers": answers, "metrics": metrics}


def cli(argv=None) -> int:
    """The command line: expected errors (bad paths, arguments, templates, failed chunks) as one line and exit 1;
    --debug shows the traceback."""
    return run_cli(main, argv, EXPECTED_ERRORS + (RuntimeError,))  # RuntimeError: a chunk process failed


if __name__ == "__main__":
    sys.exit(cli())
