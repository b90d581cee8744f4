"""What one benchmark run does, resolved from the runner's flags and the benchmark's declaration before anything
runs: :class:`Plan` (paths of answers, chunks and metrics; the entry point's and the scorer's command lines),
:func:`make_plan` (the runner's flags) and :func:`check_inputs`. The runner itself is :mod:`llava.eval.run_benchmark`.

Video benchmarks (``video_folder`` / ``answer_file`` in the declaration) get ``--video-folder`` and
``--gt-file-answers`` from here; ``--limit N`` (answer only the first N questions of the file, as the seed's
video runs did with 1,000) goes to the entry point and the scorer and names the run ``n_<tokens>_first<N>``, so a
subset never shares answers or metrics with the full set. The declaration's ``scorer_flags`` (the judge's endpoint)
go to the scorer instead of the entry point.

Started by a launcher (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` set: torchrun, accelerate launch, srun), the plan
has one chunk per rank (``Plan.launch``, :func:`llava.eval.distributed.launch_from_env`) whatever
CUDA_VISIBLE_DEVICES lists; ``--num-chunks`` may only repeat ``WORLD_SIZE``.
"""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field

from llava.cli import check_conv_mode
from llava.eval.tasks import (BENCHMARKS, DEFAULT_DATA_ROOT, DEFAULT_METHOD, FAMILY_CKPT, FAMILY_HUB,
                              METHOD_PARAMETERS, Benchmark, method_folder)

DEFAULT_RANK_TIMEOUT = 600.0  # seconds without a heartbeat before a rank of a launch counts as lost

# Entry-point flags the runner sets itself (from its own flags and the paths of the declaration).
RUNNER_FLAGS = ("--question-file", "--image-folder", "--answers-file", "--num-chunks", "--chunk-idx",
                "--video-folder", "--gt-file-answers")


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch: chunk ``rank`` of ``world_size``, GPU ``local_rank`` of its node."""

    rank: int
    world_size: int
    local_rank: int
    host: str


def _int_env(environ, name: str) -> int:
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected an integer (set by torchrun / accelerate launch / srun; "
                         "llava/eval/benchmark_plan.py)") from None


def launch_from_env(environ=None) -> Launch | None:
    """The launch this process belongs to, or None when neither ``RANK`` nor ``WORLD_SIZE`` is set (a plain run).

    ``LOCAL_RANK`` falls back to Slurm's ``SLURM_LOCALID``; a partial or inconsistent environment is a ValueError.
    """
    environ = os.environ if environ is None else environ
    if "RANK" not in environ and "WORLD_SIZE" not in environ:
        return None
    for name in ("RANK", "WORLD_SIZE"):
        if name not in environ:
            raise ValueError(f"{name} is not set but {'WORLD_SIZE' if name == 'RANK' else 'RANK'} is: start the "
                             "runner with torchrun / accelerate launch, or export RANK, WORLD_SIZE, LOCAL_RANK, "
                             "MASTER_ADDR and MASTER_PORT for every process (llava/eval/benchmark_plan.py)")
    local_name = "LOCAL_RANK" if "LOCAL_RANK" in environ else "SLURM_LOCALID"
    if local_name not in environ:
        raise ValueError("LOCAL_RANK is not set (nor SLURM_LOCALID): it picks this process's GPU "
                         "(llava/eval/benchmark_plan.py)")
    rank, world_size = _int_env(environ, "RANK"), _int_env(environ, "WORLD_SIZE")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world_size}: need 0 <= RANK < WORLD_SIZE "
                         "(llava/eval/benchmark_plan.py)")
    return Launch(rank, world_size, _int_env(environ, local_name), socket.gethostname())


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
    score_only: bool = False
    limit: int | None = None  # the first N questions only
    scorer_passthrough: list[str] = field(default_factory=list)
    launch: Launch | None = None  # started by torchrun / accelerate launch / srun: this rank answers chunk RANK
    rank_timeout: float = DEFAULT_RANK_TIMEOUT  # seconds a rank may go without a heartbeat before it counts as lost

    @property
    def run(self) -> str:
        subset = f"_first{self.limit}" if self.limit is not None else ""
        return f"{self.ckpt}/{self.method_dir}/n_{self.tokens}{subset}"

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

    def _limit_args(self) -> list[str]:
        return ["--limit", str(self.limit)] if self.limit is not None else []

    def entry_argv(self, answers_file: str) -> list[str]:
        bench = self.bench
        argv = ["--model-path", self.model_path, "--question-file", self.path(bench.question_file)]
        for flag, relative in (("--image-folder", bench.image_folder), ("--video-folder", bench.video_folder),
                               ("--gt-file-answers", bench.answer_file)):
            if relative is not None:
                argv += [flag, self.path(relative)]
        argv += ["--answers-file", answers_file, "--visual-token-num", str(self.tokens),
                 "--pruning-method", self.method, "--conv-mode", bench.conv_mode, "--temperature", "0",
                 *bench.entry_args, *self._limit_args()]
        return argv + self.passthrough

    def chunk_argv(self, k: int) -> list[str]:
        """The entry point's arguments for chunk `k` of `chunks` (into :meth:`chunk_answers`)."""
        return self.entry_argv(self.chunk_answers(k)) + ["--num-chunks", str(self.chunks), "--chunk-idx", str(k)]

    def scorer_argv(self) -> list[str]:
        argv = ["--result-file", self.answers]
        for flag, relative in self.bench.scorer_args:
            argv += [flag, self.path(relative)]
        for flag, relative in self.bench.optional_args:
            if os.path.exists(self.path(relative)):
                argv += [flag, self.path(relative)]
        return argv + self._limit_args() + self.scorer_passthrough + ["--output-json", self.metrics]


def visible_gpus() -> list[str]:
    return [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    parser.add_argument("--visual-token-num", type=int, required=True,
                        help="visual tokens kept per crop (per frame for video)")
    parser.add_argument("--family", default="v1_5", choices=sorted(FAMILY_CKPT), help="picks the default --ckpt")
    parser.add_argument("--ckpt", default=None, help="checkpoint name in output paths (default: by --family)")
    parser.add_argument("--model-path", default=None,
                        help="checkpoint dir or hub name (default: liuhaotian/<ckpt>; --family video: LanguageBind/)")
    parser.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help=f"benchmarks root ({DEFAULT_DATA_ROOT})")
    parser.add_argument("--pruning-method", "--method", dest="method", default=DEFAULT_METHOD,
                        help=f"pruning method, given to the entry point as is ({DEFAULT_METHOD})")
    parser.add_argument("--num-chunks", type=int, default=None,
                        help="processes to split the questions over (default: one per GPU in CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N questions of the question file (video: the seed used 1000)")
    parser.add_argument("--rank-timeout", type=float, default=DEFAULT_RANK_TIMEOUT,
                        help="under torchrun / srun: seconds a rank may go without a heartbeat before the others stop "
                             f"waiting and name it as lost ({DEFAULT_RANK_TIMEOUT:.0f})")
    parser.add_argument("--no-score", action="store_true", help="stop after the answers file")
    parser.add_argument("--score-only", action="store_true", help="score the existing answers file, answer nothing")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def passed_value(passthrough: list[str], flag: str) -> str | None:
    """The last value given to `flag` among the entry point's arguments (`--flag V` or `--flag=V`), else None."""
    value = None
    for i, arg in enumerate(passthrough):
        if arg == flag and i + 1 < len(passthrough):
            value = passthrough[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


def split_scorer_flags(passthrough: list[str], flags: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(entry point's arguments, scorer's arguments): each of `flags` (``--flag V`` or ``--flag=V``) goes to the
    scorer, everything else stays with the entry point."""
    entry, scorer, i = [], [], 0
    while i < len(passthrough):
        arg = passthrough[i]
        name = arg.split("=", 1)[0]
        if name in flags:
            take = 1 if "=" in arg else 2
            scorer += passthrough[i:i + take]
            i += take
        else:
            entry.append(arg)
            i += 1
    return entry, scorer


def _check_args(args, passthrough: list[str]) -> None:
    """Bad values are ValueErrors (one line and exit 1 from `cli`), checked before anything runs or loads."""
    owned = [a for a in passthrough if a.split("=")[0] in RUNNER_FLAGS]
    if owned:
        raise ValueError(f"{owned[0].split('=')[0]} is set by the runner from the benchmark's declaration")
    if args.visual_token_num < 1:
        raise ValueError(f"--visual-token-num {args.visual_token_num}: must be a positive number of tokens per crop")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit {args.limit}: must be at least 1 question")
    if args.rank_timeout <= 0:
        raise ValueError(f"--rank-timeout {args.rank_timeout}: must be a positive number of seconds")
    if args.no_score and args.score_only:
        raise ValueError("--no-score and --score-only together leave nothing to do")
    conv_mode = passed_value(passthrough, "--conv-mode")
    if conv_mode is not None:
        check_conv_mode(conv_mode)


def make_plan(argv=None, description: str | None = None) -> Plan:
    args, passthrough = build_parser(description).parse_known_args(argv)
    _check_args(args, passthrough)
    bench = BENCHMARKS[args.benchmark]
    passthrough, scorer_passthrough = split_scorer_flags(passthrough, bench.scorer_flags)
    method_dir = method_folder(args.method, {flag: passed_value(passthrough, flag) for flag, *_ in METHOD_PARAMETERS})
    ckpt = args.ckpt or FAMILY_CKPT[args.family]
    gpus = visible_gpus()
    launch = launch_from_env()
    chunks = _chunk_count(args.num_chunks, gpus, launch)
    return Plan(
        bench=bench, tokens=args.visual_token_num, ckpt=ckpt,
        model_path=args.model_path or f"{FAMILY_HUB[args.family]}/{ckpt}",
        method=args.method, method_dir=method_dir, folder=os.path.join(args.data_root, bench.folder),
        chunks=chunks, gpus=gpus, passthrough=passthrough, dry_run=args.dry_run, no_score=args.no_score,
        score_only=args.score_only, limit=args.limit, scorer_passthrough=scorer_passthrough, launch=launch,
        rank_timeout=args.rank_timeout,
    )


def _chunk_count(num_chunks: int | None, gpus: list[str], launch: Launch | None) -> int:
    """One chunk per rank of a launch, else --num-chunks, else one per GPU in CUDA_VISIBLE_DEVICES (at least 1)."""
    if launch is not None:
        if num_chunks not in (None, launch.world_size):
            raise ValueError(f"--num-chunks {num_chunks} under a launcher with WORLD_SIZE={launch.world_size}: each "
                             "rank answers one chunk, so leave --num-chunks out (or give WORLD_SIZE)")
        return launch.world_size
    chunks = num_chunks or max(len(gpus), 1)
    if chunks < 1:
        raise ValueError(f"--num-chunks {chunks}: must be at least 1")
    return chunks


def check_inputs(plan: Plan) -> None:
    """The benchmark's question file and image / video folder (or, with --score-only, the answers file), before
    any process starts."""
    bench = plan.bench
    if plan.score_only:
        if not os.path.isfile(plan.answers):
            raise FileNotFoundError(f"{bench.name}: --score-only: no answers file {plan.answers} (run the "
                                    "benchmark with the same budget, method and --limit first)")
        return
    if not os.path.isfile(plan.path(bench.question_file)):
        raise FileNotFoundError(f"{bench.name}: question file not found: {plan.path(bench.question_file)} "
                                f"(see EVAL.md, section {bench.name})")
    for kind, relative, exists in (("image folder", bench.image_folder, os.path.isdir),
                                   ("video folder", bench.video_folder, os.path.isdir),
                                   ("ground-truth answers file", bench.answer_file, os.path.isfile)):
        if relative is not None and not exists(plan.path(relative)):
            raise FileNotFoundError(f"{bench.name}: {kind} not found: {plan.path(relative)} "
                                    f"(see EVAL.md, section {bench.name})")
