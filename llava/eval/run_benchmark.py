"""Run one benchmark end to end: answer (one process per GPU), merge, score.

    python -m llava.eval.run_benchmark --benchmark textvqa --visual-token-num 144
    CUDA_VISIBLE_DEVICES=0,1,2,3 python -m llava.eval.run_benchmark --benchmark vqav2 --visual-token-num 58

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
entry point.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import importlib
import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass

from llava.cli import EXPECTED_ERRORS, WATCH_PARENT_ENV, check_conv_mode, run_cli
from llava.eval.answers import hold_lock, merge_answers, skipped_path
from llava.eval.scoring.common import write_json
from llava.eval.scoring.report import NothingScoredError, coverage_line, headline_status, nothing_scored
from llava.eval.tasks import (BENCHMARKS, DEFAULT_DATA_ROOT, DEFAULT_METHOD, FAMILY_CKPT, METHOD_PARAMETERS,
                              Benchmark, method_folder)

PR_SET_PDEATHSIG = 1  # linux/prctl.h

# Entry-point flags the runner sets itself (from its own flags and the paths of the declaration).
RUNNER_FLAGS = ("--question-file", "--image-folder", "--answers-file", "--num-chunks", "--chunk-idx")


@dataclass
class Plan:
    """Resolved paths and settings of one run."""

    bench: Benchmark
    tokens: int
    ckpt: str
    model_path: str
    method: str
    folder: str  # <data root>/<bench folder>
    chunks: int
    gpus: list[str]
    passthrough: list[str]
    method_dir: str  # the method's folder in paths (tasks.method_folder)
    dry_run: bool = False
    no_score: bool = False

    @property
    def run(self) -> str:
        return f"{self.ckpt}/{self.method_dir}/n_{self.tokens}"

    def path(self, relative: str) -> str:
        return os.path.normpath(os.path.join(self.folder, relative.format(run=self.run)))

    @property
    def answers(self) -> str:
        return self.path("answers/{run}.jsonl")

    def chunk_answers(self, k: int) -> str:
        return self.path(f"answers/{{run}}/{self.chunks}_{k}.jsonl")

    @property
    def metrics(self) -> str:
        return self.path("answers/{run}.metrics.json")

    def entry_argv(self, answers_file: str) -> list[str]:
        bench = self.bench
        argv = ["--model-path", self.model_path, "--question-file", self.path(bench.question_file)]
        if bench.image_folder is not None:
            argv += ["--image-folder", self.path(bench.image_folder)]
        argv += ["--answers-file", answers_file, "--visual-token-num", str(self.tokens),
                 "--pruning-method", self.method, "--conv-mode", bench.conv_mode, "--temperature", "0",
                 *bench.entry_args]
        return argv + self.passthrough

    def scorer_argv(self) -> list[str]:
        argv = ["--result-file", self.answers]
        for flag, relative in self.bench.scorer_args:
            argv += [flag, self.path(relative)]
        for flag, relative in self.bench.optional_args:
            if os.path.exists(self.path(relative)):
                argv += [flag, self.path(relative)]
        return argv + ["--output-json", self.metrics]


def module_command(module: str, argv: list[str]) -> str:
    return shlex.join(["python", "-m", module, *argv])


def _with_package_root(pythonpath: str | None) -> str:
    """PYTHONPATH for a child process that must import this very ``llava`` (installed or not)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.pathsep.join([root, pythonpath] if pythonpath else [root])


def visible_gpus() -> list[str]:
    return [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument("--visual-token-num", type=int, required=True, help="visual tokens kept per crop")
    parser.add_argument("--family", default="v1_5", choices=sorted(FAMILY_CKPT), help="picks the default --ckpt")
    parser.add_argument("--ckpt", default=None, help="checkpoint name in output paths (default: by --family)")
    parser.add_argument("--model-path", default=None, help="checkpoint dir or hub name (default: liuhaotian/<ckpt>)")
    parser.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help=f"benchmarks root ({DEFAULT_DATA_ROOT})")
    parser.add_argument("--pruning-method", "--method", dest="method", default=DEFAULT_METHOD,
                        help=f"pruning method, given to the entry point as is ({DEFAULT_METHOD})")
    parser.add_argument("--num-chunks", type=int, default=None,
                        help="processes to split the questions over (default: one per GPU in CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--no-score", action="store_true", help="stop after the answers file")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def _passed_value(passthrough: list[str], flag: str) -> str | None:
    """The last value given to `flag` among the entry point's arguments (`--flag V` or `--flag=V`), else None."""
    value = None
    for i, arg in enumerate(passthrough):
        if arg == flag and i + 1 < len(passthrough):
            value = passthrough[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def make_plan(argv=None) -> Plan:
    parser = build_parser()
    args, passthrough = parser.parse_known_args(argv)
    # Bad values are ValueErrors (one line and exit 1 from `cli`), checked before anything runs or loads.
    owned = [a for a in passthrough if a.split("=")[0] in RUNNER_FLAGS]
    if owned:
        raise ValueError(f"{owned[0].split('=')[0]} is set by the runner from the benchmark's declaration")
    if args.visual_token_num < 1:
        raise ValueError(f"--visual-token-num {args.visual_token_num}: must be a positive number of tokens per crop")
    conv_mode = _passed_value(passthrough, "--conv-mode")
    if conv_mode is not None:
        check_conv_mode(conv_mode)
    bench = BENCHMARKS[args.benchmark]
    method_dir = method_folder(args.method, {flag: _passed_value(passthrough, flag) for flag, *_ in METHOD_PARAMETERS})
    ckpt = args.ckpt or FAMILY_CKPT[args.family]
    gpus = visible_gpus()
    chunks = args.num_chunks or max(len(gpus), 1)
    if chunks < 1:
        raise ValueError(f"--num-chunks {chunks}: must be at least 1")
    return Plan(
        bench=bench, tokens=args.visual_token_num, ckpt=ckpt, model_path=args.model_path or f"liuhaotian/{ckpt}",
        method=args.method, method_dir=method_dir, folder=os.path.join(args.data_root, bench.folder),
        chunks=chunks, gpus=gpus, passthrough=passthrough, dry_run=args.dry_run, no_score=args.no_score,
    )


def check_inputs(plan: Plan) -> None:
    """The benchmark's question file and image folder, before any process starts."""
    bench = plan.bench
    if not os.path.isfile(plan.path(bench.question_file)):
        raise FileNotFoundError(f"{bench.name}: question file not found: {plan.path(bench.question_file)} "
                                f"(see EVAL.md, section {bench.name})")
    if bench.image_folder is not None and not os.path.isdir(plan.path(bench.image_folder)):
        raise FileNotFoundError(f"{bench.name}: image folder not found: {plan.path(bench.image_folder)} "
                                f"(see EVAL.md, section {bench.name})")


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
            argv = plan.entry_argv(plan.chunk_answers(k)) + ["--num-chunks", str(plan.chunks), "--chunk-idx", str(k)]
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
    chunk_files = [plan.chunk_answers(k) for k in range(plan.chunks)]
    print(f"[{plan.bench.name}] merge {' '.join(chunk_files)} -> {plan.answers}", flush=True)
    if not plan.dry_run:
        n = merge_answers(chunk_files, plan.answers)
        print(f"[{plan.bench.name}] {n} answers in {plan.answers}", flush=True)


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
    answers = answer(plan)
    metrics = None if plan.no_score else score(plan)
    return {"answers": answers, "metrics": metrics}


def cli(argv=None) -> int:
    """The command line: expected errors (bad paths, arguments, templates, failed chunks) as one line and exit 1;
    --debug shows the traceback."""
    return run_cli(main, argv, EXPECTED_ERRORS + (RuntimeError,))  # RuntimeError: a chunk process failed


if __name__ == "__main__":
    sys.exit(cli())
