"""Video question answering scored by a chat-model judge (MSVD-QA, MSRVTT-QA, TGIF-QA, ActivityNet-QA).

The judge (:mod:`llava.eval.judge`) gives each answer a yes/no and a 0-5 score; as in the seed
(``videollava/eval/video/eval_video_qa.py``) the benchmark reports

- ``accuracy`` = 100 * yes / judged, and
- ``score`` = the mean 0-5 score over the judged questions,

and here also the coverage: ``report.n_expected`` questions (the annotation file's, first ``--limit``, or else the
answers file's lines), ``report.n_answered`` = those judged (an answer and a valid judgment), and the rest by
cause: no answer, unparseable judge replies, failed requests. A headline over fewer questions than expected is
``partial`` with its reasons (:mod:`llava.eval.scoring.report`): never a clean number over missing judgments.

Answers lines (one per question): ``question_id`` (or the seed's ``id``), ``question`` (or ``prompt``), ``answer``
(the correct answer; or from ``--annotation-file``) and the prediction ``text`` (our answers files) or ``pred``
(the seed's). Judgments are cached in ``<output-dir>/judgments.jsonl``; ``judge_summary.json`` there lists every
question's outcome. Rerunning asks only for what is not cached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from llava.cli import EXPECTED_ERRORS, run_cli
from llava.eval.answers import hold_lock
from llava.eval.judge import PROMPT_VERSION, ChatClient, Endpoint, Judge, JudgeError, JudgmentCache, Retries
from llava.eval.scoring.common import iter_jsonl, percent, qid_key, read_json, write_json
from llava.eval.scoring.report import emit, exit_code

CACHE_NAME = "judgments.jsonl"
SUMMARY_NAME = "judge_summary.json"
MAX_LISTED = 20


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Judge video-QA answers with a chat model on an OpenAI-compatible API")
    p.add_argument("--result-file", "--pred-file", dest="result_file", required=True, help="answers jsonl")
    p.add_argument("--output-json", default=None, help="also write the metrics to this JSON file")
    p.add_argument("--output-dir", default=None, help="judgment cache and per-question outcomes "
                   "(default: <answers file without .jsonl>.judge/<judge model>)")
    p.add_argument("--annotation-file", default=None, help="JSON list or JSONL of {question_id, answer}: the "
                   "expected questions and their correct answers (e.g. the seed's test_a.json)")
    p.add_argument("--question-file", default=None, help="JSON list of {question_id, ...} (the seed's test_q.json): "
                   "the expected questions in this file's order, so --limit takes the first N asked")
    p.add_argument("--limit", type=int, default=None, help="expect only the first N questions (of --question-file, "
                   "else of --annotation-file, else of the answers)")
    p.add_argument("--api-base", default=os.environ.get("JUDGE_API_BASE"),
                   help="e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 (default: $JUDGE_API_BASE)")
    p.add_argument("--judge-model", default=os.environ.get("JUDGE_MODEL"),
                   help="model name at the endpoint, e.g. gpt-3.5-turbo (default: $JUDGE_MODEL)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key; unset or empty: no Authorization header")
    p.add_argument("--num-workers", type=int, default=8, help="concurrent requests")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--max-retries", type=int, default=5, help="repeats after 429/5xx/timeouts, per request")
    p.add_argument("--parse-retries", type=int, default=2, help="new requests after an unparseable reply")
    p.add_argument("--retry-delay", type=float, default=1.0, help="first backoff in seconds (doubles each time)")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    for flag, value in (("--api-base", args.api_base), ("--judge-model", args.judge_model)):
        if not value:
            p.error(f"{flag} is required (or set ${'JUDGE_API_BASE' if flag == '--api-base' else 'JUDGE_MODEL'})")
    return args


def _field(record: dict, names: tuple[str, ...], where: str, required: bool = True):
    for name in names:
        if name in record:
            value = record[name]
            if isinstance(value, str) or (name in ("question_id", "id") and isinstance(value, int)):
                return value
            raise ValueError(f"{where}: field {name!r} must be a string, got {json.dumps(value)[:80]}")
    if required:
        raise ValueError(f"{where}: record lacks field {' / '.join(names)}")
    return None


def load_predictions(path: str) -> tuple[dict[str, dict], list[str]]:
    """``({question id: {question, answer (None if absent), prediction}}, duplicate ids)`` of an answers file."""
    rows, duplicates = {}, []
    for line_no, record in iter_jsonl(path, role="result file"):
        where = f"{path}:{line_no}"
        qid = qid_key(_field(record, ("question_id", "id"), where))
        if qid in rows:
            duplicates.append(qid)
        rows[qid] = {"question": _field(record, ("question", "prompt"), where),
                     "answer": _field(record, ("answer",), where, required=False),
                     "prediction": _field(record, ("text", "pred"), where)}
    return rows, duplicates


def load_annotations(path: str, limit: int | None) -> dict[str, str]:
    """``{question id: correct answer}`` in file order, the first ``limit`` only when given."""
    if path.endswith(".jsonl"):
        records = [record for _, record in iter_jsonl(path, role="annotation file")]
    else:
        records = read_json(path, role="annotation file")
        if not isinstance(records, list):
            raise ValueError(f"{path}: annotation file must hold a JSON list of {{question_id, answer}}")
    answers = {}
    for n, record in enumerate(records[:limit] if limit is not None else records, start=1):
        where = f"{path}: record {n}"
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected an object with question_id and answer")
        answers[qid_key(_field(record, ("question_id", "id"), where))] = _field(record, ("answer",), where)
    return answers


def expected_questions(rows: dict, annotations: dict | None, path: str) -> tuple[list[str], list[str]]:
    """(expected ids in order, answered ids that no annotation expects); fills each row's missing answer."""
    if annotations is None:
        expected = list(rows)
    else:
        expected = list(annotations)
        for qid in expected:
            if qid in rows and rows[qid]["answer"] is None:
                rows[qid]["answer"] = annotations[qid]
    lacking = [qid for qid in expected if qid in rows and rows[qid]["answer"] is None]
    if lacking:
        raise ValueError(f"{path}: {len(lacking)} answer line(s) without a correct answer ('answer' field), e.g. "
                         f"question {lacking[0]}; pass --annotation-file")
    unknown = [qid for qid in rows if annotations is not None and qid not in annotations]
    return expected, unknown


def question_order(path: str, limit: int | None) -> list[str]:
    """The question ids of a question file (JSON list or JSONL with ``question_id``), in file order, first ``limit``."""
    records = ([record for _, record in iter_jsonl(path, role="question file")] if path.endswith(".jsonl")
               else read_json(path, role="question file"))
    if not isinstance(records, list):
        raise ValueError(f"{path}: question file must hold a JSON list of {{question_id, ...}}")
    records = records[:limit] if limit is not None else records
    ids = []
    for n, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {n}: expected an object with question_id")
        ids.append(qid_key(_field(record, ("question_id", "id"), f"{path}: record {n}")))
    return ids


def expected_order(args, rows: dict) -> tuple[list[str], list[str]]:
    """(expected question ids in order, answered ids outside them): the question file's first --limit when given,
    else the annotation file's, else the answers file's; fills each row's missing correct answer."""
    by_questions = args.question_file is not None
    annotations = (load_annotations(args.annotation_file, None if by_questions else args.limit)
                   if args.annotation_file else None)
    expected, unknown = expected_questions(rows, annotations, args.result_file)
    if by_questions:
        expected = question_order(args.question_file, args.limit)
        asked = set(expected)
        unknown = [qid for qid in rows if qid not in asked]
        lacking = [qid for qid in expected if qid in rows and rows[qid]["answer"] is None]
        if lacking:
            raise ValueError(f"{args.result_file}: question {lacking[0]} has no correct answer ('answer' field or "
                             f"--annotation-file)")
    elif annotations is None and args.limit is not None:
        expected = expected[:args.limit]
    return expected, unknown


def make_judge(args, cache: JudgmentCache) -> Judge:
    key = os.environ.get(args.api_key_env) or None
    endpoint = Endpoint(args.api_base, args.judge_model, key, args.timeout, args.temperature)
    retries = Retries(args.max_retries, args.parse_retries, args.retry_delay)
    return Judge(ChatClient(endpoint), cache, args.judge_model, retries)


def output_dir(args) -> str:
    if args.output_dir:
        return args.output_dir
    stem = args.result_file[:-len(".jsonl")] if args.result_file.endswith(".jsonl") else args.result_file
    return os.path.join(f"{stem}.judge", args.judge_model.replace("/", "_"))


def _progress(total: int):
    counter = {"n": 0}

    def show(item, outcome) -> None:
        counter["n"] += 1
        if outcome.status != "judged" or counter["n"] % 100 == 0 or counter["n"] == total:
            note = f" question {item.question_id}: {outcome.status} {outcome.error}" if outcome.error else ""
            print(f"judge: {counter['n']}/{total} new{note}", flush=True)
    return show


def summarize(expected: list[str], rows: dict, items: dict, outcomes: dict) -> dict:
    """Metrics from each expected question's outcome (``items``: question id -> Item of the answered ones)."""
    status = {qid: outcomes[items[qid].key].status if qid in items else "missing" for qid in expected}
    judged = [outcomes[items[qid].key].record for qid in expected if status[qid] == "judged"]
    n_yes = sum(record["pred"] == "yes" for record in judged)
    ids = {name: [qid for qid in expected if status[qid] == name] for name in ("missing", "unparseable", "failed")}
    metrics = {"accuracy": percent(n_yes, len(judged)),
               "score": sum(record["score"] for record in judged) / len(judged) if judged else 0.0,
               "n_yes": n_yes, "n_no": len(judged) - n_yes, "n_judged": len(judged),
               "n_missing": len(ids["missing"]), "n_unparseable": len(ids["unparseable"]),
               "n_failed": len(ids["failed"]),
               "n_cached": sum(outcomes[items[qid].key].cached for qid in expected if status[qid] == "judged"),
               "n_bad_replies": sum(outcome.bad_replies for outcome in outcomes.values())}
    reasons = [f"{len(ids[name])} {what}: {', '.join(ids[name][:MAX_LISTED])}" for name, what in
               (("missing", "questions without an answer"), ("unparseable", "questions with unparseable judge "
                "replies (rerun to ask again)"), ("failed", "questions whose judge requests failed (rerun)"))
               if ids[name]]
    metrics["report"] = {"n_expected": len(expected), "n_answered": len(judged),
                         "coverage": percent(len(judged), len(expected)) if expected else None,
                         "n_results": len(rows), "n_missing": 0, "n_unknown": 0, "n_duplicate": 0}
    metrics["partial"] = bool(reasons) or not expected
    metrics["partial_reasons"] = reasons
    return metrics


def main(argv) -> dict:
    """The command line's work: judge, print and return the metrics (also written to --output-json)."""
    args = parse_args(argv)
    metrics = evaluate(args)
    emit(metrics, args.output_json)
    return metrics


def evaluate(args: argparse.Namespace) -> dict:
    """Judge every expected, answered question not in the cache; the metrics (accuracy, score, coverage)."""
    rows, duplicates = load_predictions(args.result_file)
    expected, unknown = expected_order(args, rows)
    out_dir = output_dir(args)
    cache_path = os.path.join(out_dir, CACHE_NAME)
    with hold_lock(cache_path):
        judge = make_judge(args, JudgmentCache(cache_path))
        items = {qid: judge.item(qid, rows[qid]["question"], rows[qid]["answer"], rows[qid]["prediction"])
                 for qid in expected if qid in rows}
        outcomes = judge.run(items.values(), args.num_workers, _progress(len(items)))
    metrics = summarize(expected, rows, items, outcomes)
    metrics["judge"] = {"model": args.judge_model, "api_base": args.api_base, "prompt_version": PROMPT_VERSION,
                        "cache": cache_path}
    warnings = [f"{len(duplicates)} questions answered more than once (last answer kept): "
                f"{', '.join(duplicates[:MAX_LISTED])}"] if duplicates else []
    if unknown:
        warnings.append(f"{len(unknown)} answers to questions outside the expected ones (ignored): "
                        f"{', '.join(unknown[:MAX_LISTED])}")
    metrics["warnings"] = warnings
    write_json(os.path.join(out_dir, SUMMARY_NAME), {qid: _outcome_row(items.get(qid), outcomes) for qid in expected})
    return metrics


def _outcome_row(item, outcomes: dict) -> dict:
    if item is None:
        return {"status": "missing"}
    outcome = outcomes[item.key]
    row = {"status": outcome.status, "cached": outcome.cached, "error": outcome.error}
    if outcome.record is not None:
        row.update(pred=outcome.record["pred"], score=outcome.record["score"])
    return row


def cli(argv=None) -> int:
    """The command line: exit 1 on an expected error (one line on stderr) or when nothing was judged."""
    result = {}
    code = run_cli(lambda a: result.update(metrics=main(a)), argv, EXPECTED_ERRORS + (JudgeError,))
    return code or exit_code(result["metrics"])


if __name__ == "__main__":
    sys.exit(cli())
