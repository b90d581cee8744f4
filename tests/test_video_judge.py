"""The video-QA judge (llava.eval.judge, llava.eval.scoring.video_qa) against a chat-completions server on 127.0.0.1.

The server (:class:`FakeJudgeServer`, started in a thread per test) answers each question with the replies a test
scripts for it (by the "Question: ..." line of the user message) and counts the requests per question, so the tests
can say how often each judgment was paid for. Expected metrics are computed by hand from the scripted judgments
and the seed's definitions (FasterVLM/Video-LLaVA ``eval_video_qa.py``: accuracy = yes / judged, score = mean).
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llava.eval import judge as J
from llava.eval.scoring import video_qa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ok(pred, score):
    """A 200 reply whose content is the JSON judgment."""
    return (200, json.dumps({"pred": pred, "score": score}), {})


class FakeJudgeServer:
    """``script``: question -> list of (status, content, headers); the last entry repeats; a question not in it
    gets ``default``. Content of a 200 goes into ``choices[0].message.content``; a threading.Event as content
    blocks until the event is set, then drops the connection. ``counts``: requests per question."""

    def __init__(self, script, default=None):
        self.script, self.default, self.counts, self.auth = script, default, Counter(), []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                question = re.search(r"Question: (.*)\n", body["messages"][1]["content"]).group(1)
                with server.lock:
                    n = server.counts[question]
                    server.counts[question] += 1
                    server.auth.append(self.headers.get("Authorization"))
                    server.bodies.append(body)
                replies = server.script.get(question, server.default)
                status, content, headers = replies[min(n, len(replies) - 1)]
                if isinstance(content, threading.Event):
                    content.wait(30)
                    return
                payload = {"choices": [{"message": {"role": "assistant", "content": content}}]} \
                    if status == 200 else {"error": {"message": "scripted error"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.bodies = []
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def write_answers(path, rows):
    """rows: (question_id, question, answer, prediction) -> our answers-file layout (prediction in ``text``)."""
    with open(path, "w") as f:
        for qid, question, answer, prediction in rows:
            f.write(json.dumps({"question_id": qid, "question": question, "answer": answer, "text": prediction}) + "\n")
    return str(path)


def score(tmp_path, server, answers, *extra, model="judge-x"):
    argv = ["--result-file", answers, "--output-dir", str(tmp_path / "judge"), "--api-base", server.url,
            "--judge-model", model, "--num-workers", "3", "--retry-delay", "0.01", *extra]
    return video_qa.main(argv)


ROWS = [(1, "what is the man doing", "dance", "dancing"), (2, "what color is the car", "red", "red"),
        (3, "who is singing", "woman", "a man"), (4, "how many dogs", "two", "three")]


# --- reply parsing -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, expected", [
    ('{"pred": "yes", "score": 4}', ("yes", 4)),
    ("{'pred': 'no', 'score': 0}", ("no", 0)),  # the seed's Python-dict form
    ('  {"pred": "Yes", "score": 5}\n', ("yes", 5)),
    ('```json\n{"pred": "no", "score": 2}\n```', ("no", 2)),
    ('```\n{"pred": "yes", "score": 3}\n```', ("yes", 3)),
])
def test_parse_reply_accepts_the_dict(reply, expected):
    assert J.parse_reply(reply) == expected


@pytest.mark.parametrize("reply", [
    "{'pred': 'yes', 'score': 4.8}",  # the seed truncated this to 4; strict: not an integer
    '{"pred": "yes", "score": "4"}', '{"pred": "yes", "score": 6}', '{"pred": "no", "score": -1}',
    '{"pred": "yes", "score": true}', '{"pred": "maybe", "score": 3}', '{"pred": "yes"}',
    '{"pred": "yes", "score": 3, "reason": "close"}', "Yes, the score is 4.", '["yes", 4]',
    'The answer: {"pred": "yes", "score": 4}', "", None, "__import__('os').getcwd()",
])
def test_parse_reply_rejects_everything_else(reply):
    with pytest.raises(J.UnparseableReply):
        J.parse_reply(reply)


def test_retry_after_seconds_and_http_date():
    assert J.parse_retry_after("7") == 7.0
    assert J.parse_retry_after(None) is None and J.parse_retry_after("soon") is None
    in_ten = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))
    assert 8.0 <= J.parse_retry_after(in_ten) <= 10.0
    assert J.parse_retry_after("100000") == J.MAX_RETRY_AFTER_S


# --- end to end against the server ---------------------------------------------------------------------------------

def test_accuracy_score_and_coverage_by_hand(tmp_path):
    # yes 5, yes 3, no 0, no 1 -> accuracy 2/4 = 50 %, mean score 9/4 = 2.25; question 5 has no answer
    script = {"what is the man doing": [ok("yes", 5)], "what color is the car": [ok("yes", 3)],
              "who is singing": [ok("no", 0)], "how many dogs": [ok("no", 1)]}
    answers = write_answers(tmp_path / "a.jsonl", ROWS)
    annotations = tmp_path / "test_a.json"
    annotations.write_text(json.dumps([{"question_id": q, "answer": "x"} for q in (1, 2, 3, 4, 5)]))
    with FakeJudgeServer(script) as server:
        full = score(tmp_path, server, answers, "--limit", "4", "--annotation-file", str(annotations))
        cut = score(tmp_path, server, answers, "--annotation-file", str(annotations))
    assert (full["accuracy"], full["score"], full["n_yes"], full["n_no"]) == (50.0, 2.25, 2, 2)
    assert full["partial"] is False and full["report"]["n_expected"] == 4 and full["report"]["n_answered"] == 4
    assert cut["partial"] is True and (cut["report"]["n_expected"], cut["report"]["n_answered"]) == (5, 4)
    assert cut["n_missing"] == 1 and cut["partial_reasons"][0].startswith("1 questions without an answer: 5")
    assert (cut["accuracy"], cut["score"]) == (50.0, 2.25)  # over the judged, flagged partial
    assert dict(server.counts) == {q: 1 for q in script}  # the second run was served from the cache


def test_prompt_reaches_the_server_with_the_pair(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", ROWS[:1])
    with FakeJudgeServer({"what is the man doing": [ok("yes", 5)]}) as server:
        score(tmp_path, server, answers)
    body = server.bodies[0]
    assert body["model"] == "judge-x" and body["temperature"] == 0.0
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    user = body["messages"][1]["content"]
    assert "Correct answer: dance\n" in user and "Predicted answer: dancing\n" in user
    assert "synonym" in body["messages"][0]["content"].lower()


def test_malformed_replies_are_retried_then_counted(tmp_path):
    script = {"what is the man doing": [(200, "I would say yes", {}), ok("yes", 4)],
              "what color is the car": [(200, "{'pred': 'yes', 'score': 4.8}", {})],
              "who is singing": [(200, None, {})], "how many dogs": [ok("no", 2)]}
    answers = write_answers(tmp_path / "a.jsonl", ROWS)
    with FakeJudgeServer(script) as server:
        metrics = score(tmp_path, server, answers, "--parse-retries", "2")
    # asked 1 + 2 times when every reply is bad; the first question's second reply parses
    assert dict(server.counts) == {"what is the man doing": 2, "what color is the car": 3, "who is singing": 3,
                                   "how many dogs": 1}
    assert (metrics["n_judged"], metrics["n_unparseable"], metrics["n_bad_replies"]) == (2, 2, 7)
    assert (metrics["accuracy"], metrics["score"]) == (50.0, 3.0)  # yes 4, no 2
    assert metrics["partial"] and metrics["report"]["n_answered"] == 2
    (reason,) = metrics["partial_reasons"]
    assert reason.startswith("2 questions with unparseable judge replies") and reason.endswith(": 2, 3")
    # rerun: only the unparseable ones are asked again
    with FakeJudgeServer({**script, "what color is the car": [ok("no", 1)], "who is singing": [ok("no", 0)]}) as s2:
        again = score(tmp_path, s2, answers)
    assert dict(s2.counts) == {"what color is the car": 1, "who is singing": 1}
    assert (again["accuracy"], again["score"], again["partial"]) == (25.0, 7 / 4, False)


def test_429_with_retry_after_then_success(tmp_path):
    script = {"q": [(429, "", {"Retry-After": "2"}), (503, "", {}), (503, "", {}), ok("yes", 5)]}
    slept = []
    with FakeJudgeServer(script) as server:
        client = J.ChatClient(J.Endpoint(server.url, "m"))
        judge = J.Judge(client, J.JudgmentCache(str(tmp_path / "c.jsonl")), "m",
                        J.Retries(max_retries=3, base_delay=0.5), sleep=slept.append)
        outcomes = judge.run([judge.item(1, "q", "a", "p")], workers=2)
    (outcome,) = outcomes.values()
    assert outcome.status == "judged" and outcome.record["score"] == 5
    assert slept == [2.0, 1.0, 2.0]  # Retry-After, then 0.5 * 2**1, 0.5 * 2**2
    assert server.counts["q"] == 4


def test_retries_run_out_then_failed_and_the_run_aborts(tmp_path):
    script = {f"q{i}": [(500, "", {})] for i in range(10)}
    with FakeJudgeServer(script) as server:
        judge = J.Judge(J.ChatClient(J.Endpoint(server.url, "m")), J.JudgmentCache(str(tmp_path / "c.jsonl")),
                        "m", J.Retries(max_retries=1, abort_after=3), sleep=lambda s: None)
        one = judge.run([judge.item(0, "q0", "a", "p")], workers=1)
        assert list(one.values())[0].status == "failed" and server.counts["q0"] == 2
        with pytest.raises(J.JudgeError, match="3 questions in a row failed"):
            judge.run([judge.item(i, f"q{i}", "a", "p") for i in range(1, 10)], workers=1)
    assert [server.counts[f"q{i}"] for i in range(1, 4)] == [2, 2, 2]
    assert len(server.counts) <= 5  # the rest cancelled (one more may have been in flight on the worker)


def test_bad_key_stops_the_run_with_exit_1(tmp_path, capsys):
    answers = write_answers(tmp_path / "a.jsonl", ROWS)
    with FakeJudgeServer({q[1]: [(401, "", {})] for q in ROWS}) as server:
        code = video_qa.cli(["--result-file", answers, "--api-base", server.url, "--judge-model", "m"])
    assert code == 1 and "HTTP 401" in capsys.readouterr().err
    assert max(server.counts.values()) == 1  # not retried


def test_key_sent_as_bearer_only_when_set(tmp_path, monkeypatch):
    answers = write_answers(tmp_path / "a.jsonl", ROWS[:1])
    script = {"what is the man doing": [ok("yes", 5)]}
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test-123")
    with FakeJudgeServer(script) as server:
        score(tmp_path, server, answers, "--api-key-env", "MY_JUDGE_KEY")
        monkeypatch.delenv("MY_JUDGE_KEY")
        score(tmp_path, server, answers, "--api-key-env", "MY_JUDGE_KEY", model="judge-y")
    assert server.auth == ["Bearer sk-test-123", None]


def test_cache_is_keyed_by_judge_model(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", ROWS[:2])
    script = {"what is the man doing": [ok("yes", 5)], "what color is the car": [ok("no", 0)]}
    with FakeJudgeServer(script) as server:
        score(tmp_path, server, answers, model="A")
        score(tmp_path, server, answers, model="B")
        again = score(tmp_path, server, answers, model="A")
    assert dict(server.counts) == {q: 2 for q in script} and again["n_cached"] == 2


def test_nothing_judged_exits_1(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", ROWS[:1])
    with FakeJudgeServer({"what is the man doing": [(200, "no idea", {})]}) as server:
        code = video_qa.cli(["--result-file", answers, "--api-base", server.url, "--judge-model", "m",
                             "--parse-retries", "0"])
    assert code == 1


def test_killed_run_resumes_without_paying_twice(tmp_path):
    hang = threading.Event()
    rows = [(i, f"question {i}", f"a{i}", f"p{i}") for i in range(6)]
    judgments = {0: ("yes", 5), 1: ("no", 1), 2: ("yes", 4), 3: ("no", 0), 4: ("yes", 2), 5: ("yes", 3)}
    script = {f"question {i}": [ok(*judgments[i])] for i in range(6)}
    script["question 2"] = [(200, hang, {}), ok("yes", 4)]  # the first ask of question 2 never returns
    answers = write_answers(tmp_path / "a.jsonl", rows)
    out = tmp_path / "judge"
    argv = [sys.executable, "-m", "llava.eval.scoring.video_qa", "--result-file", answers, "--output-dir", str(out),
            "--judge-model", "m", "--num-workers", "1"]
    with FakeJudgeServer(script) as server:
        env = {**os.environ, "PYTHONPATH": ROOT, "JUDGE_API_BASE": server.url}
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while server.counts["question 2"] == 0 and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        hang.set()
        cache = out / "judgments.jsonl"
        assert len(cache.read_text().splitlines()) == 2  # questions 0 and 1 were judged and kept
        with open(cache, "ab") as f:
            f.write(b'{"key": "0123", "question_id": "2", "pr')  # what a kill in the middle of a write leaves
        metrics = video_qa.main(argv[3:] + ["--api-base", server.url])
    # each question paid once; question 2 twice, its first answer never came back
    assert dict(server.counts) == {**{f"question {i}": 1 for i in range(6)}, "question 2": 2}
    assert (metrics["n_judged"], metrics["n_cached"], metrics["partial"]) == (6, 2, False)
    assert metrics["accuracy"] == pytest.approx(400 / 6) and metrics["score"] == pytest.approx(15 / 6)
    lines = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert sorted(int(r["question_id"]) for r in lines) == list(range(6))


def test_only_failures_in_a_row_abort(tmp_path):
    script = {"f1": [(500, "", {})], "f2": [(500, "", {})], "f3": [(500, "", {})], "good": [ok("yes", 1)]}
    with FakeJudgeServer(script) as server:
        judge = J.Judge(J.ChatClient(J.Endpoint(server.url, "m")), J.JudgmentCache(str(tmp_path / "c.jsonl")),
                        "m", J.Retries(max_retries=0, abort_after=2), sleep=lambda s: None)
        names = ["f1", "good", "f2", "good2", "f3"]
        server.script["good2"] = [ok("no", 0)]
        outcomes = judge.run([judge.item(i, q, "a", "p") for i, q in enumerate(names)], workers=1)
    assert [o.status for o in outcomes.values()] == ["failed", "judged", "failed", "judged", "failed"]


def test_seed_layout_with_answers_from_the_annotation_file(tmp_path):
    # the seed's answers lines: id / question / pred; the correct answers come from a JSONL annotation file
    answers = tmp_path / "merge.jsonl"
    answers.write_text("".join(json.dumps({"id": f"v{i}", "question": q, "pred": p}) + "\n"
                               for i, (q, p) in enumerate([("what is shown", "a cat"), ("who runs", "a dog")])))
    annotations = tmp_path / "test_a.jsonl"
    annotations.write_text("".join(json.dumps({"question_id": f"v{i}", "answer": a}) + "\n"
                                   for i, a in enumerate(["cat", "man"])))
    with FakeJudgeServer({"what is shown": [ok("yes", 5)], "who runs": [ok("no", 0)]}) as server:
        with pytest.raises(ValueError, match="without a correct answer.*--annotation-file"):
            score(tmp_path, server, str(answers))
        metrics = score(tmp_path, server, str(answers), "--annotation-file", str(annotations))
    users = sorted(body["messages"][1]["content"] for body in server.bodies)
    assert "Correct answer: cat\nPredicted answer: a cat\n" in users[0]
    assert "Correct answer: man\nPredicted answer: a dog\n" in users[1]
    assert (metrics["accuracy"], metrics["score"], metrics["partial"]) == (50.0, 2.5, False)


def test_limit_follows_the_question_file_order(tmp_path):
    """--limit 2 with --question-file takes the first two questions ASKED (test_q.json order: 3, 1), even when the
    annotation file lists them in another order (1, 2, 3, 4): only questions 3 and 1 are judged (yes 5, no 1 ->
    50%, 3.0 by hand); question 2 is answered but outside the limit."""
    answers = write_answers(tmp_path / "answers.jsonl", ROWS)
    questions = tmp_path / "test_q.json"
    questions.write_text(json.dumps([{"question_id": q, "question": "?", "video_name": "v"} for q in (3, 1, 2, 4)]))
    annotations = tmp_path / "test_a.json"
    annotations.write_text(json.dumps([{"question_id": q, "answer": a} for q, _, a, _ in ROWS]))
    script = {"who is singing": [ok("yes", 5)], "what is the man doing": [ok("no", 1)]}
    with FakeJudgeServer(script, default=[ok("yes", 4)]) as server:
        metrics = score(tmp_path, server, answers, "--question-file", str(questions),
                        "--annotation-file", str(annotations), "--limit", "2")
    users = [body["messages"][1]["content"] for body in server.bodies]
    assert sorted("who is singing" in u for u in users) == [False, True]
    assert sorted("what is the man doing" in u for u in users) == [False, True]
    assert (metrics["accuracy"], metrics["score"], metrics["report"]["n_expected"]) == (50.0, 3.0, 2)
    assert metrics["partial"] is False
