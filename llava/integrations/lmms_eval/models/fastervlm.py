"""`--model fastervlm` for lmms-eval 0.7.x: any checkpoint our loader reads, with visual-token pruning, answering
lmms-eval's `generate_until` requests exactly as our own eval runner answers a question.

    lmms-eval --model fastervlm --model_args pretrained=DIR,pruning_method=fastervlm,visual_token_num=58,\\
        anyres_mode=paper,conv_template=vicuna_v1 --tasks ... --batch_size 8

- Loading: `llava.model.builder.load_pretrained_model` (liuhaotian and llava-hf directories into our model; the
  transformers-native families, `llava.model.native`, with their processor).
- Pruning settings: the command-line flags of every entry point (`PruningConfig.add_cli_args` / `from_args`), fed
  from the model_args: pruning_method, visual_token_num (absent = every token), anyres_mode, fastv_layer.
- Prompts and batches: the eval runner's way of asking (`llava.inference.asking_for`): `build_prompt` with
  `conv_template` (default: the checkpoint's own, else vicuna_v1), the image first, and `generate_batch`; native
  models: their processor's chat template and `generate_native_batch`. Up to --batch_size requests with the same
  generation settings share one left-padded `generate`, so answers equal batch size 1 under greedy decoding (our
  model with several images per request: one request at a time).
- Kept visual tokens: each answer is returned as lmms-eval's `GenerationResult` whose token counts carry
  `v_token_num`; the evaluator writes them into each logged sample's ``token_counts`` (lmms_eval/evaluator.py,
  `_process_document_results`). Their mean over every rank goes through lmms-eval's `log_metrics`, which the
  evaluator summarises under ``results["throughput"]["avg_v_token_num"]``.

Structure follows lmms-eval's simple models (lmms_eval/models/simple/llava_hf.py: `Accelerator` for data parallel
ranks, requests' args ``(context, gen_kwargs, doc_to_visual, doc_id, task, split)``); the code is ours.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from accelerate import Accelerator
from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.models.model_utils.gen_metrics import log_metrics
from PIL import Image

from llava.eval.answering import DEFAULT_MAX_NEW_TOKENS
from llava.image_io import to_rgb
from llava.inference import (
    answer,
    asking_for,
    build_prompt,
    check_device,
    default_device,
    generation_kwargs,
    native_handle,
    resolve_conv_mode,
)
from llava.mm_utils import get_model_name_from_path
from llava.model.builder import load_pretrained_model
from llava.model.pruning import PruningConfig, PruningRequest

WHERE = "lmms-eval model fastervlm (llava/integrations/lmms_eval/models/fastervlm.py)"
# model_args key -> the flag of PruningConfig.add_cli_args it stands for.
PRUNING_FLAGS = {"pruning_method": "--pruning-method", "visual_token_num": "--visual-token-num",
                 "anyres_mode": "--anyres-mode", "fastv_layer": "--fastv-layer"}
PADDING_KEY = "__padding_only__"  # lmms-eval's mark on the requests that only even out the ranks (evaluator.py)


@dataclass
class VisualTokenCounts(TokenCounts):
    """lmms-eval's per-request token counts plus the visual tokens the language model saw."""

    v_token_num: int | None = None

    def to_dict(self) -> dict:
        counts = super().to_dict()
        if self.v_token_num is not None:
            counts["v_token_num"] = self.v_token_num
        return counts


def parse_pruning(options: dict) -> PruningRequest:
    """model_args' pruning keys through the CLI flags' own parser and `PruningConfig.from_args` (so a bad value gets
    the message our command lines give). options: {key in PRUNING_FLAGS: value}."""
    parser = argparse.ArgumentParser(prog="--model_args", add_help=False, exit_on_error=False)
    PruningConfig.add_cli_args(parser)
    argv = [part for key, value in options.items() for part in (PRUNING_FLAGS[key], str(value))]
    try:
        return PruningConfig.from_args(parser.parse_args(argv))
    except argparse.ArgumentError as err:
        raise ValueError(f"{WHERE}: bad pruning model_args ({err})") from None


def settings_key(gen_kwargs: dict) -> str:
    """Requests with equal keys share a `generate` call."""
    return repr(sorted((k, repr(v)) for k, v in gen_kwargs.items()))


def decoding(gen_kwargs: dict) -> tuple[dict, list[str]]:
    """lmms-eval's generation_kwargs -> (`generate` keywords as `llava.inference.generation_kwargs` builds them,
    stop strings). As LLaVA's `--temperature`: sampling exactly when the temperature is above 0, unless do_sample is
    False (then greedy); do_sample=True without a temperature stays greedy (lmms-eval's own models may read these
    two keys differently). max_new_tokens defaults to our runner's."""
    temperature = float(gen_kwargs.get("temperature") or 0) if gen_kwargs.get("do_sample", True) else 0.0
    flags = argparse.Namespace(temperature=temperature, top_p=gen_kwargs.get("top_p"),
                               num_beams=int(gen_kwargs.get("num_beams") or 1),
                               max_new_tokens=int(gen_kwargs.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS))
    until = gen_kwargs.get("until") or []
    return generation_kwargs(flags), [until] if isinstance(until, str) else list(until)


def cut_at(text: str, stops: list[str]) -> str:
    """The text before the first of lmms-eval's stop strings."""
    for stop in stops:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def batches(requests: list[Instance], size: int) -> list[list[int]]:
    """Indices of `requests` in order, cut into runs of at most `size` with equal generation settings."""
    out: list[list[int]] = []
    for i, req in enumerate(requests):
        if out and len(out[-1]) < size and settings_key(requests[out[-1][0]].args[1]) == settings_key(req.args[1]):
            out[-1].append(i)
        else:
            out.append([i])
    return out


class FasterVLM(lmms):
    """A pruned LLaVA (or supported transformers-native model) as an lmms-eval simple model."""

    is_simple = True

    def __init__(self, pretrained: str, conv_template: str | None = None, model_base: str | None = None,
                 vision_tower_path: str | None = None, device: str | None = None, batch_size=1,
                 max_batch_size=None, **options) -> None:
        super().__init__()
        unknown = sorted(set(options) - set(PRUNING_FLAGS))
        if unknown:
            raise ValueError(f"{WHERE}: unknown model_args {unknown}; accepted: pretrained, conv_template, "
                             f"model_base, vision_tower_path, {', '.join(PRUNING_FLAGS)}")
        self.batch_size_per_rank = int(batch_size) if str(batch_size).isdigit() and int(batch_size) > 0 else 1
        self.accelerator = Accelerator()
        self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
        self._device = self._pick_device(device)
        self.tokenizer, self.model, self.processor, _ = load_pretrained_model(
            str(pretrained), model_base, get_model_name_from_path(str(pretrained)), device=self._device,
            vision_tower_path=vision_tower_path, pruning=parse_pruning(options))
        self.native = native_handle(self.model) is not None
        self.conv_mode = conv_template if self.native else resolve_conv_mode(conv_template, self.model.config)
        self.asking = asking_for(self.model, self.tokenizer, self.processor, self.conv_mode)

    @property
    def device(self) -> str:
        """Where the model runs (the evaluator gathers the ranks' request counts there)."""
        return self._device

    def _pick_device(self, device: str | None) -> str:
        """--device, else this rank's GPU (LOCAL_RANK) when CUDA is there, else the CPU."""
        if device:
            check_device(device)
            return device
        if default_device() == "cuda":
            return f"cuda:{self.accelerator.local_process_index}"
        return "cpu"

    # ----------------------------------------------------------------------- requests

    def _inputs(self, req: Instance) -> tuple[str, list[Image.Image]]:
        """(the question text, its images as RGB PIL) of one request."""
        context, _, doc_to_visual, doc_id, task, split = req.args
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        visuals = [v for v in (visuals or []) if v is not None]
        if not all(isinstance(v, Image.Image) for v in visuals):
            kinds = sorted({type(v).__name__ for v in visuals})
            raise ValueError(f"{WHERE}: task {task!r} gives {kinds} visuals; only images are supported")
        return context, [to_rgb(v) for v in visuals]

    def _one_by_one(self, inputs: list[tuple[str, list]], gen: dict) -> list[tuple[str, int]]:
        """Our model with a multi-image prompt: one `generate` per request (`generate_batch` takes one image each)."""
        out = []
        for query, images in inputs:
            prompt = build_prompt(query, len(images), self.conv_mode)
            with torch.inference_mode():
                text, kept, _ = answer(self.model, self.tokenizer, self.processor, prompt, images, **gen)
            out.append((text, int(kept[0]) if isinstance(kept, list) else int(kept)))
        return out

    def _answer(self, reqs: list[Instance]) -> list[tuple[str, int, int]]:
        """(text cut at the stop strings, visual tokens kept, answer tokens) of requests sharing generation
        settings: one batch through the model's way of asking (`llava.inference.asking_for`), as the eval runner's
        loop. Answer tokens: the generated text (before the stop-string cut) tokenized again without special tokens,
        i.e. the generated ids less EOS up to tokenizer round-trip differences."""
        gen, stops = decoding(reqs[0].args[1])
        inputs = [self._inputs(req) for req in reqs]
        if not self.native and any(len(images) > 1 for _, images in inputs):
            out = self._one_by_one(inputs, gen)
        else:
            samples = [self.asking.sample(i, query, images) for i, (query, images) in enumerate(inputs)]
            out = self.asking.generate(self.model, samples, gen)
        return [(cut_at(text, stops), kept, len(self.tokenizer(text, add_special_tokens=False).input_ids))
                for text, kept in out]

    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        """Answers in request order, in batches of --batch_size; logs the mean visual tokens kept and the answer
        tokens generated (all ranks) into lmms-eval's throughput summary."""
        start, answered = time.perf_counter(), [None] * len(requests)
        for idx in batches(requests, self.batch_size_per_rank):
            for i, (text, kept, n_out) in zip(idx, self._answer([requests[i] for i in idx])):
                answered[i] = GenerationResult(text, VisualTokenCounts(output_tokens=n_out, v_token_num=kept))
        real = [r.token_counts for r, q in zip(answered, requests) if not q.metadata.get(PADDING_KEY)]
        self._log_throughput(real, time.perf_counter() - start)
        return answered

    def _log_throughput(self, counts: list[VisualTokenCounts], seconds: float) -> None:
        """Over every rank's real (not padding) requests: the mean visual tokens kept and the answer tokens
        generated, into lmms-eval's metrics log (its summary divides those tokens by the elapsed time)."""
        totals = torch.tensor([float(sum(c.v_token_num for c in counts)), float(len(counts)),
                               float(sum(c.output_tokens for c in counts))], dtype=torch.float64)
        if self._world_size > 1 and dist.is_available() and dist.is_initialized():
            totals = totals.to(self._device)
            dist.all_reduce(totals)  # every rank calls generate_until once per request type, so this matches up
        kept, count, generated = totals.tolist()
        if count:
            log_metrics(total_elapsed_time=seconds, total_gen_tokens=int(generated), avg_speed=generated / seconds,
                        additional_metrics={"v_token_num": kept / count})

    # ----------------------------------------------------------------------- not supported

    def loglikelihood(self, requests):
        raise NotImplementedError(f"{WHERE}: loglikelihood tasks are not supported (generation tasks only)")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{WHERE}: multi-round generation tasks are not supported")
