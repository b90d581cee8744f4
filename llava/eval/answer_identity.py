"""The identity of a run: what must agree between the lines of one answers file (:class:`RunIdentity`, built by
:func:`run_identity` from the pruning config and the generation flags), and how a line's identity fields are read
and compared. The answers file itself (format, resume, locking, merge) lives in :mod:`llava.eval.answers`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields as dataclass_fields
from typing import Any, Iterable

MISSING = "<missing>"  # what a line without an identity field reports for it


@dataclass(frozen=True)
class RunIdentity:
    """What must agree between the lines of one answers file. Every field is written on every line and compared on
    every line (resume and merge): to widen the identity, add one field here.

    model_id:          ``get_model_name_from_path(--model-path)``, as LLaVA records it.
    visual_token_num:  visual tokens kept per crop (the resolved budget; 576 = no pruning for CLIP-336).
    pruning_method:    registered selection method (``fastervlm``, ``random``, ...).
    anyres_mode:       "paper" / "upstream" for anyres checkpoints, None otherwise.
    method_params:     the pruning method's other parameters (``seed``, FastV's ``llm_layer``).
    conv_mode:         conversation template.
    temperature, top_p, num_beams, max_new_tokens: decoding (``top_p`` None when greedy, where it is unused).
    prompt_options:    the entry point's prompt flags (``single_pred_prompt``, ``all_rounds``, ``lang``).
    checkpoint:        fingerprint of the checkpoint's files (config.json, weight file names and sizes).
    """

    model_id: str
    visual_token_num: int | None
    pruning_method: str
    anyres_mode: str | None = None
    method_params: dict = field(default_factory=dict)
    conv_mode: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    num_beams: int | None = None
    max_new_tokens: int | None = None
    prompt_options: dict = field(default_factory=dict)
    checkpoint: str | None = None

    def as_fields(self) -> dict[str, Any]:
        return asdict(self)


def run_identity(args, pruning, *, model_id: str, anyres: bool, checkpoint: str | None,
                 prompt_options: dict | None = None) -> RunIdentity:
    """The one builder of a run's identity, so no setting can be missed.

    pruning:  the run's `PruningConfig` (budget, method, anyres mode, `method_parameters()`); before the model
              loads, its `PruningRequest` (``visual_token_num`` None while "all tokens" is unresolved);
    args:     the entry point's generation flags: ``conv_mode``, ``temperature``, ``top_p`` (recorded only when
              sampling: greedy decoding ignores it), ``num_beams``, ``max_new_tokens``;
    model_id: ``get_model_name_from_path(--model-path)``; anyres: whether the checkpoint tiles (LLaVA-1.6), the only
              case where ``anyres_mode`` changes an answer; checkpoint: the checkpoint's fingerprint;
    prompt_options: the entry point's prompt flags."""
    temperature = float(args.temperature)
    params = {name: int(value) for name, value in pruning.method_parameters().items()}
    return RunIdentity(model_id, pruning.visual_token_num, pruning.method, pruning.anyres_mode if anyres else None,
                       method_params=params, conv_mode=args.conv_mode, temperature=temperature,
                       top_p=args.top_p if temperature > 0 else None, num_beams=args.num_beams,
                       max_new_tokens=args.max_new_tokens, prompt_options=dict(prompt_options or {}),
                       checkpoint=checkpoint)


# The fields of a line that say which run wrote it: all of RunIdentity's, in its order.
IDENTITY_FIELDS = tuple(f.name for f in dataclass_fields(RunIdentity))


def record_identity(record: dict, fields: Iterable[str] = IDENTITY_FIELDS) -> dict[str, Any]:
    """The identity fields of an answer line (``"<missing>"`` where the line lacks one)."""
    return {name: record.get(name, MISSING) for name in fields}


def differences(theirs: dict, ours: dict, their_name: str, our_name: str) -> list[str]:
    return [f"{name}: {theirs[name]!r} in {their_name}, {ours[name]!r} in {our_name}"
            for name in ours if theirs[name] != ours[name]]


def identity_conflicts(record: dict, identity: RunIdentity, fields: Iterable[str] = IDENTITY_FIELDS) -> list[str]:
    """``field: file has X, this run has Y`` for each of ``fields`` where ``record`` disagrees."""
    fields = tuple(fields)
    ours = {name: identity.as_fields()[name] for name in fields}
    return differences(record_identity(record, fields), ours, "the file", "this run")
