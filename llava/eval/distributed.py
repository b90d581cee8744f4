"""The benchmark runner started by a launcher on several processes and nodes (``torchrun``, ``accelerate launch``,
or Slurm ``srun`` with the torchrun-style environment): which device a rank answers on (:func:`device_args`) and
how the ranks meet once their chunks are answered (:class:`RankGroup`). Who a process is (rank, world size, local
rank, host) is read in :func:`llava.eval.benchmark_plan.launch_from_env`, which needs no torch.

How the ranks meet: through the TCP key-value store every torch launcher already sets up for its rendezvous
(``MASTER_ADDR:MASTER_PORT``; the agent's store under ``torchrun``, one hosted by rank 0 otherwise), opened with
:func:`torch.distributed.rendezvous`. No process group and no collective is created, so it works the same with
gloo on CPU, NCCL nodes and mixed clusters. Each rank posts its outcome (``ok`` or the error, with its host name)
under its rank number, and a heartbeat counter it bumps every few seconds from a thread. Rank 0 waits for every
outcome; a rank whose heartbeat stops for ``--rank-timeout`` seconds (killed, out of memory, node lost) is named
as lost. The other ranks wait for rank 0's release the same way, so nobody waits forever on a dead peer.

Why not the alternatives: a plain barrier (gloo, with a timeout) says that *someone* did not arrive, not who or
on which host, and a rank that failed cleanly would have to sit out the whole timeout; completion-marker files on
the shared filesystem survive from earlier launches (there is no launch id every launcher provides to tell a
stale marker from a fresh one) and are seen late through NFS attribute caching. The answers themselves still go
through the shared filesystem: each rank writes its chunk file ``<N>_<K>.jsonl`` (fsynced lines, closed before
it reports), which rank 0 opens only after that rank's report, so NFS close-to-open consistency shows it whole.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from llava.eval.benchmark_plan import DEFAULT_RANK_TIMEOUT, Launch

CONNECT_TIMEOUT = timedelta(minutes=30)  # ranks of a Slurm job may start minutes apart
RELEASED = "released"  # key rank 0 sets once it has every outcome (and has merged or failed)


class RankFailedError(RuntimeError):
    """One or more ranks failed or were lost, so the chunks were not merged."""


def device_args(launch: Launch, device: str | None) -> list[str]:
    """Entry-point flags that put this rank on its node's GPU ``LOCAL_RANK`` (``--device cuda:<LOCAL_RANK>``).

    ``device`` is the ``--device`` the user gave (None: not given). An explicit ``cpu`` or ``cuda:<i>`` stands;
    no flag or plain ``cuda`` (which would spread one model over every GPU) becomes this rank's GPU when CUDA is
    there: ``cuda:<LOCAL_RANK>`` among the node's visible GPUs, or ``cuda:0`` when the process sees only one."""
    if device not in (None, "cuda") or not torch.cuda.is_available():
        return []  # without CUDA the entry point's default is the CPU, and its own check refuses "cuda"
    count = torch.cuda.device_count()
    if count == 1:  # one GPU visible to this process: Slurm's per-task binding (--gpus-per-task 1) already chose it
        return ["--device", "cuda:0"]
    if launch.local_rank >= count:
        raise ValueError(f"LOCAL_RANK={launch.local_rank} on {launch.host}, but only {count} CUDA device(s) are "
                         "visible: start at most one process per GPU (llava/eval/distributed.py)")
    torch.cuda.set_device(launch.local_rank)
    return ["--device", f"cuda:{launch.local_rank}"]


def _store_prefix() -> str:
    """Keys of this launch: under torchrun the agent's store outlives a restart, so the attempt is part of it."""
    return f"fastervlm/run_benchmark/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"


class RankGroup:
    """The ranks of one launch meeting through the launcher's store (see the module docstring).

    ``store``: any :class:`torch.distributed.Store` (tests may pass a :class:`torch.distributed.HashStore`);
    by default the ``env://`` rendezvous store. Use as a context manager: the heartbeat runs inside it.
    """

    def __init__(self, launch: Launch, rank_timeout: float = DEFAULT_RANK_TIMEOUT, store=None):
        if rank_timeout <= 0:
            raise ValueError(f"--rank-timeout {rank_timeout}: must be a positive number of seconds")
        self.launch = launch
        self.rank_timeout = float(rank_timeout)
        self.beat_every = min(5.0, self.rank_timeout / 4)
        if store is None:
            store, _, _ = next(dist.rendezvous("env://", timeout=CONNECT_TIMEOUT))
        self.store = dist.PrefixStore(_store_prefix(), store)
        self._stop = threading.Event()
        self._thread = None

    # ------------------------------------------------------------------ heartbeat

    def _beat(self) -> None:
        key = f"beat/{self.launch.rank}"
        while not self._stop.wait(self.beat_every):
            try:
                self.store.add(key, 1)
            except Exception:  # the store's host is gone: the waits below notice it and say so
                return

    def __enter__(self) -> "RankGroup":
        # the host first, so that a rank lost later is still named with it
        self.store.set(f"host/{self.launch.rank}", self.launch.host)
        self.store.add(f"beat/{self.launch.rank}", 1)
        self._thread = threading.Thread(target=self._beat, name="rank-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ outcomes

    def report(self, error: BaseException | None) -> None:
        """Post this rank's outcome: ``error`` None when its chunk file is complete."""
        launch = self.launch
        if isinstance(error, SystemExit):  # argparse: its usage line is already on this rank's stderr
            text = f"exited with status {error.code}"
        else:
            text = None if error is None else (" ".join(str(error).split()) or type(error).__name__)
        outcome = {"rank": launch.rank, "host": launch.host, "pid": os.getpid(), "error": text}
        self.store.set(f"outcome/{launch.rank}", json.dumps(outcome))

    def _silent_for(self, rank: int, seen: dict[int, tuple[int, float]]) -> float:
        """Seconds since `rank`'s heartbeat last moved (``seen``: rank -> (count, when first seen))."""
        count, now = self.store.add(f"beat/{rank}", 0), time.monotonic()
        if rank not in seen or seen[rank][0] != count:
            seen[rank] = (count, now)
        return now - seen[rank][1]

    def collect(self, poll: float = 0.5) -> list[dict]:
        """Rank 0: every rank's outcome, in rank order; a rank silent for ``rank_timeout`` seconds gets an outcome
        ``{"rank", "host": None, "error": "lost: ..."}``. Returns once each rank has one."""
        outcomes, seen = {}, {}
        while len(outcomes) < self.launch.world_size:
            for rank in range(self.launch.world_size):
                if rank in outcomes:
                    continue
                if self.store.check([f"outcome/{rank}"]):
                    outcomes[rank] = json.loads(self.store.get(f"outcome/{rank}"))
                elif self._silent_for(rank, seen) > self.rank_timeout:
                    outcomes[rank] = {"rank": rank, "host": self._host_of(rank), "error":
                                      f"lost: no heartbeat for {self.rank_timeout:.0f} s (killed, out of memory, or "
                                      "its node went down?)"}
            if len(outcomes) < self.launch.world_size:
                time.sleep(poll)
        return [outcomes[rank] for rank in range(self.launch.world_size)]

    def _host_of(self, rank: int) -> str | None:
        key = f"host/{rank}"
        return self.store.get(key).decode() if self.store.check([key]) else None

    def release(self, poll: float = 0.2) -> None:
        """Rank 0: every outcome is in (and the merge done or refused); the other ranks may exit. Waits (at most
        ``min(rank_timeout, 30)`` s) until they saw it: without torchrun the store lives in this process."""
        self.store.set(RELEASED, "1")
        deadline = time.monotonic() + min(self.rank_timeout, 30.0)
        while self.store.add("acknowledged", 0) < self.launch.world_size - 1 and time.monotonic() < deadline:
            time.sleep(poll)

    def wait_released(self, poll: float = 0.5) -> bool:
        """Ranks > 0: wait for rank 0's release; False when rank 0 went silent for ``rank_timeout`` seconds or its
        store is gone (then the merge will not happen)."""
        seen = {}
        try:
            while not self.store.check([RELEASED]):
                if self._silent_for(0, seen) > self.rank_timeout:
                    return False
                time.sleep(poll)
            self.store.add("acknowledged", 1)
        except (RuntimeError, OSError):  # the store lived in rank 0's process (srun without torchrun)
            return False
        return True


def failure_message(outcomes: list[dict]) -> str | None:
    """One line naming every failed or lost rank with its host, or None when all succeeded."""
    failed = [o for o in outcomes if o.get("error") is not None]
    if not failed:
        return None
    listed = "; ".join(f"rank {o['rank']} (host {o.get('host') or 'unknown'}): {o['error']}" for o in failed)
    return f"{listed}. The chunks were not merged; the finished answers are kept, rerun the same command to resume"
