"""The chat-model judge of video QA: prompt, strict reply parsing, HTTP client, retries, cache.

The judging is the seed's (FasterVLM ``videollava/eval/video/eval_video_qa.py`` = Video-LLaVA's ``eval_video_qa.py``,
from Video-ChatGPT's ``quantitative_evaluation/evaluate_activitynet_qa.py``): one chat request per question; the
system message asks for a meaningful, not literal, match of the prediction with the correct answer (synonyms and
paraphrases match); the user message gives question, correct answer and prediction and asks for nothing but a dict
``{"pred": "yes"|"no", "score": 0..5}`` (integer, 5 the best match). The wording is ours (:data:`PROMPT_VERSION`);
we ask for JSON and also accept the seed's Python-dict form (it used ``ast.literal_eval``). Departures, for reasons:

- Strict parsing (:func:`parse_reply`): the reply must be exactly that dict (one enclosing markdown code fence is
  unwrapped: local models add them). The seed took any reply *containing* "yes" as yes and truncated a float score
  with ``int()``; here such a reply is unparseable, counted, and asked again (``parse_retries``).
- Any OpenAI-compatible endpoint (``POST {api_base}/chat/completions``: the paid API, vLLM, SGLang) through the
  standard library; the key, from an environment variable, goes out as ``Authorization: Bearer`` only when set.
  Temperature 0 by default (the seed left the API default, 1), so a rerun judges alike.
- 429, 5xx, timeouts and dropped connections are retried with exponential backoff, honouring ``Retry-After``;
  401/403/404 stop the run (every request would fail alike), as do ``abort_after`` failed questions in a row. The
  seed looped over the incomplete questions until none was left.
- Each valid judgment is appended to a JSONL cache (:class:`JudgmentCache`) as it arrives, keyed by a hash of judge
  model, prompt version, question, correct answer and prediction: a rerun, or a run resumed after a kill, asks only
  for the rest. Failed and unparseable questions are not cached, so a rerun asks for them again.
"""

from __future__ import annotations

import ast
import email.utils
import hashlib
import http.client
import json
import os
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Iterable

PROMPT_VERSION = "video-qa-judge-v1"

SYSTEM_PROMPT = (
    "You judge answers to questions about videos. Compare a predicted answer with the correct answer and decide "
    "whether the two agree in meaning.\n"
    "- What counts is whether they mean the same thing, not whether the words are identical.\n"
    "- Synonyms and paraphrases of the correct answer are matches.\n"
    "- Decide whether the predicted answer is correct given the correct answer."
)

USER_TEMPLATE = (
    "Judge this question-answer pair about a video.\n\n"
    "Question: {question}\n"
    "Correct answer: {answer}\n"
    "Predicted answer: {prediction}\n\n"
    "Give a verdict, yes or no, and a score: an integer from 0 to 5, where 5 means the predicted answer matches "
    "the correct answer best in meaning. Reply with one JSON object and nothing else: the key \"pred\" holds the "
    "string \"yes\" or \"no\", the key \"score\" holds the integer (a number, not a string). No explanation. "
    "Example of a complete reply: {{\"pred\": \"no\", \"score\": 1}}"
)

VERDICTS = ("yes", "no")
FATAL_STATUSES = (401, 403, 404)  # a bad key, model or URL: every request would fail alike
MAX_RETRY_AFTER_S = 300.0


class JudgeError(RuntimeError):
    """The whole judging run must stop (bad key / URL / model, or the endpoint keeps failing)."""


class UnparseableReply(ValueError):
    """The judge's reply is not the dict asked for."""


class TransientError(Exception):
    """A request worth repeating (429, 5xx, timeout, dropped connection); ``retry_after`` if the server said."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class RequestFailed(Exception):
    """A request that failed for good (retries used up, or a 4xx that repeating would not fix)."""


def build_messages(question: str, answer: str, prediction: str) -> list[dict]:
    """The chat messages of one judgment: ``[system, user]``."""
    user = USER_TEMPLATE.format(question=question, answer=answer, prediction=prediction)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _unfence(text: str) -> str:
    """The body of a reply that is exactly one markdown code block (```json ... ```), else the text itself."""
    if text.startswith("```") and text.endswith("```") and len(text) >= 6:
        body = text[3:-3]
        first_line, _, rest = body.partition("\n")
        return (rest if first_line.strip().isalpha() or not first_line.strip() else body).strip()
    return text


def parse_reply(text) -> tuple[str, int]:
    """``(pred, score)`` of a reply that is exactly ``{"pred": "yes"|"no", "score": 0..5}`` (JSON or a Python dict
    literal, surrounding whitespace and one enclosing code fence allowed); anything else: UnparseableReply."""
    if not isinstance(text, str):
        raise UnparseableReply(f"reply content is {type(text).__name__}, not text")
    body = _unfence(text.strip())
    try:
        value = json.loads(body)
    except ValueError:
        try:
            value = ast.literal_eval(body)  # the seed's Python-dict form; literals only, nothing is executed
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise UnparseableReply(f"not a JSON object or Python dict: {text[:200]!r}") from None
    if not isinstance(value, dict) or set(value) != {"pred", "score"}:
        raise UnparseableReply(f"expected exactly the keys 'pred' and 'score': {text[:200]!r}")
    pred, score = value["pred"], value["score"]
    if not isinstance(pred, str) or pred.strip().lower() not in VERDICTS:
        raise UnparseableReply(f"'pred' must be 'yes' or 'no', got {pred!r}")
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 5:
        raise UnparseableReply(f"'score' must be an integer from 0 to 5, got {score!r}")
    return pred.strip().lower(), score


def cache_key(model: str, question: str, answer: str, prediction: str) -> str:
    """sha256 of (judge model, prompt version, question, correct answer, prediction): what fixes a judgment."""
    fields = [model, PROMPT_VERSION, question, answer, prediction]
    return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode("utf-8")).hexdigest()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date), capped at MAX_RETRY_AFTER_S; None if
    absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible chat-completions endpoint. ``api_base`` ends before ``/chat/completions``."""

    api_base: str
    model: str
    api_key: str | None = None
    timeout: float = 60.0
    temperature: float = 0.0
    max_tokens: int = 64


class ChatClient:
    """One ``POST {api_base}/chat/completions`` per call; thread-safe (no shared state)."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.url = endpoint.api_base.rstrip("/") + "/chat/completions"

    def _request(self, messages: list[dict]) -> urllib.request.Request:
        ep = self.endpoint
        body = {"model": ep.model, "messages": messages, "temperature": ep.temperature, "max_tokens": ep.max_tokens}
        headers = {"Content-Type": "application/json"}
        if ep.api_key:
            headers["Authorization"] = f"Bearer {ep.api_key}"
        return urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers)  # POST

    def complete(self, messages: list[dict]):
        """The reply's ``choices[0].message.content`` (None when the body has none: an unparseable reply).
        Raises TransientError, RequestFailed, or JudgeError for 401/403/404."""
        try:
            with urllib.request.urlopen(self._request(messages), timeout=self.endpoint.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            raise self._http_error(err) from None
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as err:
            raise TransientError(f"{self.url}: {err}") from None
        try:
            return json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    def _http_error(self, err: urllib.error.HTTPError) -> Exception:
        detail = err.read()[:300].decode("utf-8", errors="replace")
        message = f"{self.url}: HTTP {err.code} {detail}"
        if err.code == 429 or err.code >= 500:
            return TransientError(message, parse_retry_after(err.headers.get("Retry-After")))
        if err.code in FATAL_STATUSES:
            return JudgeError(f"{message} (check --api-base, --judge-model and the API key variable)")
        return RequestFailed(message)


class JudgmentCache:
    """Valid judgments, one JSON line each, keyed by ``key`` (:func:`cache_key`).

    Each line goes out in one ``write`` on an ``O_APPEND`` descriptor and is fsynced, so a killed run leaves at
    most one truncated last line, which loading drops (it is judged again). A malformed line elsewhere is an error
    naming the file and line: that is not what a kill leaves behind.
    """

    def __init__(self, path: str):
        self.path = path
        self.entries: dict[str, dict] = {}
        self._lock = threading.Lock()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.exists(path):
            self._load()

    def _load(self) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        whole = data[:data.rfind(b"\n") + 1]
        if len(whole) < len(data):  # a last line without its newline: the write a kill cut short
            print(f"judge cache {self.path}: dropped a truncated last line (an interrupted write)", flush=True)
            with open(self.path, "r+b") as f:
                f.truncate(len(whole))
        for line_no, raw in enumerate(whole.split(b"\n")[:-1], start=1):
            try:
                record = json.loads(raw)
                self.entries[record["key"]] = record
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{self.path}:{line_no}: malformed judgment cache line; fix or delete it") from None

    def append(self, record: dict) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            with open(self.path, "ab", buffering=0) as f:  # unbuffered O_APPEND: the line is one write call
                f.write(data)
                os.fsync(f.fileno())
            self.entries[record["key"]] = record


@dataclass(frozen=True)
class Retries:
    """``max_retries``: repeats of a request after a transient error; ``parse_retries``: new requests after an
    unparseable reply; backoff ``base_delay * 2**attempt`` seconds capped at ``max_delay``, or Retry-After."""

    max_retries: int = 5
    parse_retries: int = 2
    base_delay: float = 1.0
    max_delay: float = 60.0
    abort_after: int = 20


@dataclass(frozen=True)
class Item:
    """One question to judge. ``key`` is its :func:`cache_key`."""

    question_id: str
    question: str
    answer: str
    prediction: str
    key: str


@dataclass
class Outcome:
    status: str  # "judged", "unparseable" or "failed"
    record: dict | None = None  # the cache line, when judged
    error: str = ""
    cached: bool = False
    bad_replies: int = 0  # unparseable replies received on the way


@dataclass
class Judge:
    """Judges items concurrently through ``client`` (anything with ``complete(messages) -> str``)."""

    client: object
    cache: JudgmentCache
    model: str
    retries: Retries = field(default_factory=Retries)
    sleep: Callable[[float], None] = time.sleep

    def item(self, question_id, question: str, answer: str, prediction: str) -> Item:
        return Item(str(question_id), question, answer, prediction,
                    cache_key(self.model, question, answer, prediction))

    def _complete(self, messages: list[dict]):
        for attempt in range(self.retries.max_retries + 1):
            try:
                return self.client.complete(messages)
            except TransientError as err:
                if attempt == self.retries.max_retries:
                    raise RequestFailed(f"{err} (gave up after {attempt + 1} tries)") from None
                backoff = min(self.retries.max_delay, self.retries.base_delay * 2 ** attempt)
                self.sleep(backoff if err.retry_after is None else err.retry_after)

    def judge_one(self, item: Item) -> Outcome:
        """Ask until a reply parses (1 + parse_retries asks); the valid judgment is cached at once."""
        messages = build_messages(item.question, item.answer, item.prediction)
        errors = []
        for _ in range(self.retries.parse_retries + 1):
            try:
                reply = self._complete(messages)
            except RequestFailed as err:
                return Outcome("failed", error=str(err), bad_replies=len(errors))
            try:
                pred, score = parse_reply(reply)
            except UnparseableReply as err:
                errors.append(str(err))
                continue
            record = {"key": item.key, "question_id": item.question_id, "pred": pred, "score": score, "reply": reply,
                      "judge_model": self.model, "prompt_version": PROMPT_VERSION, "question": item.question,
                      "answer": item.answer, "prediction": item.prediction}
            self.cache.append(record)
            return Outcome("judged", record, bad_replies=len(errors))
        return Outcome("unparseable", error=errors[-1], bad_replies=len(errors))

    def run(self, items: Iterable[Item], workers: int = 8,
            progress: Callable[[Item, Outcome], None] | None = None) -> dict[str, Outcome]:
        """``{item.key: Outcome}``: cached items without a request, the rest on ``workers`` threads. Raises
        JudgeError (pending requests cancelled, finished judgments kept in the cache) on 401/403/404 or after
        ``abort_after`` failed items in a row."""
        outcomes, todo = {}, []
        for item in items:
            hit = self.cache.entries.get(item.key)
            if hit is not None:
                outcomes[item.key] = Outcome("judged", hit, cached=True)
            elif item.key not in outcomes:
                outcomes[item.key] = None
                todo.append(item)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            try:
                self._collect(pool, todo, outcomes, progress)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return outcomes

    def _collect(self, pool, todo: list[Item], outcomes: dict, progress) -> None:
        futures = {pool.submit(self.judge_one, item): item for item in todo}
        failed_in_row, pending = 0, set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                item, outcome = futures[future], future.result()  # re-raises JudgeError from a worker
                outcomes[item.key] = outcome
                failed_in_row = failed_in_row + 1 if outcome.status == "failed" else 0
                if progress is not None:
                    progress(item, outcome)
                if failed_in_row >= self.retries.abort_after:
                    raise JudgeError(f"{failed_in_row} questions in a row failed (last: {outcome.error}); "
                                     "is the endpoint up? Judgments so far are cached: rerun to resume")
