"""Benchmark scorers and submission converters, one module per benchmark.

Each module has ``evaluate(result_file, **inputs) -> dict`` and a CLI
(``python -m llava.eval.scoring.<name> --result-file ... [--output-json ...]``).
:data:`SCORERS` declares them for the eval runner: which inputs each needs, which
metric is the headline, and whether the benchmark is scored here or by an
external server (then ``evaluate`` writes the upload file).

Aggregate metrics are percentages. See :mod:`.common` for the matching rules
(unknown / missing / duplicate ids are reported, never silently dropped).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ScorerSpec:
    name: str
    module: str  # submodule with evaluate(result_file, **inputs) -> metrics and the CLI
    inputs: tuple[str, ...]  # keyword arguments evaluate() needs besides result_file
    optional: tuple[str, ...] = ()  # keyword arguments it accepts
    headline: str | None = None  # "/"-separated path into the metrics; None for upload-only
    server_scored: bool = False  # the real number comes from an evaluation server / grader
    # Whether the headline counts an unanswered question as wrong (as the official scorer does, or would, for
    # an incomplete run); False where it is left out of the mean (TextVQA, POPE), so the number is over the
    # answered questions only and the runner marks it partial.
    missing_as_wrong: bool = True

    @property
    def evaluate(self) -> Callable[..., dict]:
        # Imported on use, so ``python -m llava.eval.scoring.<module>`` does not
        # find its own module already imported by this package.
        return importlib.import_module(f"{__name__}.{self.module}").evaluate

    def headline_value(self, metrics: dict) -> float | None:
        if self.headline is None:
            return None
        value = metrics
        for part in self.headline.split("/"):
            if not isinstance(value, dict) or part not in value:
                return None  # e.g. an MMBench test split: upload only, no score
            value = value[part]
        return value


SCORERS: dict[str, ScorerSpec] = {spec.name: spec for spec in (
    ScorerSpec("textvqa", "textvqa", ("annotation_file",), headline="accuracy", missing_as_wrong=False),
    ScorerSpec("pope", "pope", ("annotation_dir", "question_file"), headline="average/f1", missing_as_wrong=False),
    ScorerSpec("sqa", "sqa", ("base_dir",), ("split", "img_only"), headline="img_accuracy"),
    ScorerSpec("mme", "mme", (), ("mme_dir", "question_file", "eval_tool_dir"), headline="perception/total"),
    ScorerSpec("gqa", "gqa", ("question_file",), ("predictions_file",), headline="accuracy"),
    ScorerSpec("mmbench", "mmbench", ("annotation_file",), ("upload_file",), headline="accuracy"),
    ScorerSpec("mmbench_cn", "mmbench", ("annotation_file",), ("upload_file",), headline="accuracy"),
    ScorerSpec("vqav2", "vqav2", (), ("test_split", "upload_file", "annotation_file", "question_file"),
               server_scored=True),
    ScorerSpec("vizwiz", "vizwiz", ("test_split",), ("upload_file",), server_scored=True),
    ScorerSpec("mmvet", "mmvet", (), ("upload_file", "annotation_file"), server_scored=True),
    ScorerSpec("easyvqa", "easyvqa", ("question_file",), headline="accuracy"),
    ScorerSpec("easyvqa_500", "easyvqa", ("question_file",), headline="accuracy"),
)}

__all__ = ["SCORERS", "ScorerSpec"]
