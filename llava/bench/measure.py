"""Measuring one pruning case: timestamps (CUDA events or perf_counter), peak memory, KV-cache bytes, one end-to-end
run (prepare -> prefill -> greedy decode) and the vision tower with and without its [CLS] row, `ImageSubject` (LLaVA on
one image; Video-LLaVA on one video: `llava.bench.video.VideoSubject`), and `benchmark`, which runs every case of a
subject interleaved. The rows, table and plot made of these: `llava.bench.report`; the CLI:
`llava.bench.efficiency`.
"""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from dataclasses import dataclass, field

import torch

BASELINE = "unpruned"
TOWER_PAIRS = 3  # (with [CLS], plain) tower timings per pass


# ---------------------------------------------------------------------------------------------------------------
# timing and memory
# ---------------------------------------------------------------------------------------------------------------
class Clock:
    """Timestamps: CUDA events on GPU (read after one synchronize), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def ms(self, start, end) -> float:
        if self.cuda:
            end.synchronize()
            return start.elapsed_time(end)
        return (end - start) * 1000.0


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


class PeakMemory:
    """Peak memory above the level at entry, in bytes: the CUDA allocator's peak, or sampled process RSS."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.peak: float = float("nan")

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            return self
        self.start = _rss_bytes()
        self._max = self.start or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self._max = max(self._max, _rss_bytes() or 0)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = float(torch.cuda.max_memory_allocated() - self.start)
            return False
        self._stop.set()
        self._thread.join()
        self._max = max(self._max, _rss_bytes() or 0)
        if self.start is not None:
            self.peak = float(self._max - self.start)
        return False


def cache_bytes(cache) -> int:
    """Keys + values held by a transformers Cache (each layer may have its own length)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


# ---------------------------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    method: str
    budget: int  # visual tokens per crop

    @property
    def label(self) -> str:
        return f"{self.method}@{self.budget}"


@dataclass
class Sample:
    prepare_ms: float
    prefill_ms: float
    decode_ms: float
    kept: int  # visual tokens the LLM keeps (after FastV's layer K for FastV)
    prompt_len: int  # tokens of the prompt the LLM receives (before any in-LLM pruning)
    text_len: int  # its text tokens
    kv_bytes: int


@dataclass
class Inputs:
    ids: torch.Tensor  # (1, L) with IMAGE_TOKEN_INDEX
    pixels: torch.Tensor
    image_sizes: list | None


@torch.inference_mode()
def run_once(model, inputs: Inputs, new_tokens: int, clock: Clock) -> Sample:
    """encode -> select -> project -> splice, prefill, then `new_tokens - 1` greedy decode steps with the cache."""
    t0 = clock.mark()
    mm = model.prepare_multimodal_inputs(inputs.ids, None, inputs.pixels, inputs.image_sizes)
    kept = model.start_llm_pruning(mm) or mm.v_token_num
    t1 = clock.mark()
    out = model(inputs_embeds=mm.inputs_embeds, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
    t2 = clock.mark()
    cache = greedy_decode(model, out, token, new_tokens - 1)
    t3 = clock.mark()
    prompt_len = mm.inputs_embeds.shape[1]
    return Sample(clock.ms(t0, t1), clock.ms(t1, t2), clock.ms(t2, t3), int(kept[0]), prompt_len,
                  prompt_len - int(mm.v_token_num[0]), cache_bytes(cache))


@torch.inference_mode()
def greedy_decode(model, out, token: torch.Tensor, steps: int):
    """`steps` greedy decode steps after a prefill's output `out` and its next token (B, 1); returns the cache."""
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    for _ in range(steps):
        out = model(input_ids=token, cache=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(dim=-1, keepdim=True)
    return cache


def time_tower(tower, pixels: torch.Tensor, clock: Clock, plain_first: bool = False) -> tuple[float, float]:
    """(with [CLS] attention, plain) ms: our tower (a `ClsAttentionTower`) vs the same layers without the [CLS] row
    (features only). pixels: (N, 3, S, S), (videos, T, 3, S, S) or a list of crop tensors."""
    crops = [pixels] if isinstance(pixels, torch.Tensor) else list(pixels)
    pixels = torch.cat([c.flatten(0, -4) for c in crops]).to(device=tower.device, dtype=tower.dtype)  # (N, 3, S, S)

    def plain():
        hidden = tower.embed(pixels)
        for layer in tower.layers()[: tower.attn_layer + 1]:
            hidden = tower.run_layer(layer, hidden)
        return hidden[:, 1:]

    runs = [("plain", plain), ("cls", lambda: tower(pixels))]
    times = {}
    for name, fn in runs if plain_first else runs[::-1]:
        start = clock.mark()
        fn()
        times[name] = clock.ms(start, clock.mark())
    return times["cls"], times["plain"]


class ImageSubject:
    """LLaVA (`LlavaLlamaForCausalLM`) on one image, as `benchmark` runs it: `set_case` sets the case's pruning
    (the unpruned case is FasterVLM at the full budget: every token), `run` is one end-to-end run, `time_tower` the
    tower with and without its [CLS] row. The video counterpart: `llava.bench.video.VideoSubject`."""

    default_budgets = "576,144,58,29"
    crop_name = "crop"

    def __init__(self, model, inputs: Inputs) -> None:
        self.model, self.inputs = model, inputs
        self.llm_config = model.config
        self.per_crop = model.get_vision_tower().num_patches
        self.device = model.device

    def set_case(self, case: Case, fastv_layer: int) -> None:
        set_case(self.model, case, fastv_layer)

    def reset(self) -> None:
        set_case(self.model, Case(BASELINE, 0), fastv_layer=2)

    def run(self, new_tokens: int, clock: Clock) -> Sample:
        return run_once(self.model, self.inputs, new_tokens, clock)

    def time_tower(self, clock: Clock, plain_first: bool) -> tuple[float, float]:
        return time_tower(self.model.get_vision_tower(), self.inputs.pixels, clock, plain_first)


def set_case(model, case: Case, fastv_layer: int) -> None:
    per_crop = model.get_vision_tower().num_patches
    if case.method == BASELINE:
        pruning = model.pruning.replace(method="fastervlm", visual_token_num=per_crop)
    else:
        pruning = model.pruning.replace(method=case.method, visual_token_num=case.budget, llm_layer=fastv_layer)
    model.set_pruning(pruning)


# ---------------------------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Result:
    case: Case
    samples: list[Sample] = field(default_factory=list)
    peak_bytes: float = float("nan")


def median(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def benchmark(subject, cases: list[Case], new_tokens: int, repeats: int, warmup: int, fastv_layer: int = 2,
              log=print) -> tuple[list[Result], dict]:
    """Run every case on `subject` (an `ImageSubject` or `llava.bench.video.VideoSubject`) `warmup + repeats`
    times, interleaved (each pass starts one case later, and the two tower variants swap order, so slow drifts and
    order effects spread over all cases); then one run per case for peak memory."""
    clock = Clock(subject.device)
    results = {c.label: Result(c) for c in cases}
    tower = {"vision_ms": [], "vision_plain_ms": []}
    for rep in range(warmup + repeats):
        timed = rep >= warmup
        for pair in range(TOWER_PAIRS):  # the tower alone is cheap next to a case: time it more often
            with_cls, plain = subject.time_tower(clock, plain_first=(rep + pair) % 2 == 1)
            if timed:
                tower["vision_ms"].append(with_cls)
                tower["vision_plain_ms"].append(plain)
        shift = rep % len(cases)
        for case in cases[shift:] + cases[:shift]:
            subject.set_case(case, fastv_layer)
            sample = subject.run(new_tokens, clock)
            if timed:
                results[case.label].samples.append(sample)
        log(f"  pass {rep + 1}/{warmup + repeats} ({'timed' if timed else 'warm-up'}) done")
    for case in cases:
        subject.set_case(case, fastv_layer)
        with PeakMemory(subject.device) as peak:
            subject.run(new_tokens, clock)
        results[case.label].peak_bytes = peak.peak
    subject.reset()
    return list(results.values()), {k: median(v) for k, v in tower.items()}
