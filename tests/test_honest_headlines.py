"""Issue 13, items 2, 3, 10, 19: honest headlines, repeated question ids, atomic outputs, bad answer values.

Every expected number is hand-computed from the case written in the test (e.g. two right answers of two
questions = 100%). Repeats: the eval runner numbers the 2nd asking of an id ``metadata.repeat = 1``
(llava/eval/questions.py ``number_repeats``); each scorer must score it as its own question.
"""

import json
import os
import re
from pathlib import Path

import pytest

from llava.atomic import atomic_path, atomic_write
from llava.cli import run_cli
from llava.eval import run_benchmark
from llava.eval.scoring import common, easyvqa, gqa, mme, mmbench, mmvet, pope, report, sqa, vizwiz, vqav2
from tests.helpers_io import write_jsonl


def answer(qid, text, repeat=0, **extra):
    record = {"question_id": qid, "prompt": extra.pop("prompt", ""), "text": text, **extra}
    if repeat:
        record["metadata"] = {"repeat": repeat}
    return record


# ------------------------------------------------------------------ item 19: bad answer values name file and line


@pytest.mark.parametrize("bad, shown", [("null", "null"), ("3", "3"), ('["a"]', '["a"]')])
def test_non_string_answer_text_names_file_and_line(tmp_path, bad, shown):
    path = tmp_path / "answers.jsonl"
    # Line 3 (a blank line 2 is skipped but still counted).
    path.write_text('{"question_id": 1, "text": "yes"}\n\n{"question_id": 2, "text": %s}\n' % bad)
    with pytest.raises(ValueError, match=r"answers\.jsonl:3: answer text must be a string, got " + re.escape(shown)):
        common.load_answers(path)


def test_null_question_id_names_file_and_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": null, "text": "yes"}\n')
    with pytest.raises(ValueError, match=r"answers\.jsonl:1: question_id must be a string or an integer"):
        common.load_answers(path)


# ------------------------------------------------------------------ item 3: repeated question ids


def test_easyvqa_repeated_id_scores_each_asking(tmp_path):
    # One id asked twice with different questions; both answers right -> 2/2 = 100%.
    questions = write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": 5, "text": "What shape?", "answer": "circle"},
        {"question_id": 5, "text": "What color?", "answer": "red"},
    ])
    answers = write_jsonl(tmp_path / "a.jsonl", [answer(5, "circle"), answer(5, "red", repeat=1)])
    metrics = easyvqa.evaluate(answers, questions)
    assert metrics["accuracy"] == 100.0
    assert metrics["report"]["n_answered"] == 2 and metrics["report"]["n_duplicate"] == 0


def test_gqa_repeated_id_counts_each_asking(tmp_path):
    # GQA's questions dict holds id 7 once; the runner asked it twice. Both right -> 100%; one wrong -> 50%.
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps({"7": {"answer": "dog", "types": {"structural": "query"}}}))
    both = write_jsonl(tmp_path / "a.jsonl", [answer(7, "dog"), answer(7, "dog", repeat=1)])
    metrics = gqa.evaluate(both, str(questions))
    assert metrics["accuracy"] == 100.0 and metrics["report"]["n_expected"] == 2
    one = write_jsonl(tmp_path / "b.jsonl", [answer(7, "dog"), answer(7, "cat", repeat=1)])
    assert gqa.evaluate(one, str(questions))["accuracy"] == 50.0


def test_vqav2_repeated_id_local_score_and_upload(tmp_path):
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"annotations": [{"question_id": 1, "answers": [{"answer": "two"}] * 10}]}))
    answers = write_jsonl(tmp_path / "a.jsonl", [answer(1, "two"), answer(1, "two", repeat=1)])
    assert vqav2.evaluate(answers, annotation_file=str(ann))["accuracy"] == 100.0
    # A split asking id 3 twice: the k-th entry gets the k-th asking's answer.
    split = write_jsonl(tmp_path / "split.jsonl", [{"question_id": 3}, {"question_id": 3}])
    answers = write_jsonl(tmp_path / "b.jsonl", [answer(3, "yes"), answer(3, "no", repeat=1)])
    upload = tmp_path / "up.json"
    metrics = vqav2.evaluate(answers, test_split=split, upload_file=str(upload))
    assert json.loads(upload.read_text()) == [{"question_id": 3, "answer": "yes"}, {"question_id": 3, "answer": "no"}]
    assert metrics["submission"]["report"]["n_answered"] == 2 and not metrics["submission"]["partial"]


def test_vizwiz_repeated_id_in_split(tmp_path):
    split = write_jsonl(tmp_path / "split.jsonl", [{"question_id": 3, "image": "a.jpg"},
                                                   {"question_id": 3, "image": "b.jpg"}])
    answers = write_jsonl(tmp_path / "a.jsonl", [answer(3, "yes"), answer(3, "no", repeat=1)])
    upload = tmp_path / "up.json"
    metrics = vizwiz.evaluate(answers, split, str(upload))
    assert json.loads(upload.read_text()) == [{"image": "a.jpg", "answer": "yes"}, {"image": "b.jpg", "answer": "no"}]
    assert metrics["n_empty"] == 0 and not metrics["partial"]


def test_sqa_repeated_id(tmp_path):
    (tmp_path / "problems.json").write_text(json.dumps({"p1": {"choices": ["x", "y"], "answer": 1, "image": "i"}}))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["p1"]}))
    answers = write_jsonl(tmp_path / "a.jsonl", [answer("p1", "B"), answer("p1", "B", repeat=1)])
    metrics = sqa.evaluate(answers, str(tmp_path))
    assert metrics["accuracy"] == 100.0 and metrics["report"]["n_answered"] == 2


def test_pope_repeated_id_in_question_file(tmp_path):
    ann = tmp_path / "coco"
    ann.mkdir()
    write_jsonl(ann / "coco_pope_random.json", [
        {"image": "a.jpg", "text": "Is there a dog?", "label": "yes"},
        {"image": "a.jpg", "text": "Is there a cat?", "label": "no"},
    ])
    questions = write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": 1, "image": "a.jpg", "text": "Is there a dog?", "category": "random"},
        {"question_id": 1, "image": "a.jpg", "text": "Is there a cat?", "category": "random"},
    ])
    answers = write_jsonl(tmp_path / "a.jsonl", [answer(1, "Yes"), answer(1, "No", repeat=1)])
    metrics = pope.evaluate(answers, str(ann), questions)
    assert metrics["random"]["accuracy"] == 100.0 and metrics["report"]["n_answered"] == 2


def test_mme_two_questions_of_one_image_share_an_id(tmp_path):
    # llava_mme.jsonl's layout: question_id is the image path, so an image's 2nd question is repeat 1.
    questions = write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": "count/1.jpg", "text": "Are there two dogs?", "answer": "Yes", "category": "count"},
        {"question_id": "count/1.jpg", "text": "Are there three dogs?", "answer": "No", "category": "count"},
    ])
    answers = write_jsonl(tmp_path / "a.jsonl", [answer("count/1.jpg", "Yes", prompt="Are there two dogs?"),
                                                 answer("count/1.jpg", "No", repeat=1,
                                                        prompt="Are there three dogs?")])
    metrics = mme.evaluate(answers, question_file=questions)
    # acc 100 + acc+ 100 = 200
    assert metrics["subtasks"]["count"]["score"] == 200.0 and metrics["report"]["n_duplicate"] == 0


def test_mmvet_repeat_is_not_a_duplicate_and_first_asking_is_uploaded(tmp_path):
    answers = write_jsonl(tmp_path / "a.jsonl", [answer(0, "first"), answer(0, "second", repeat=1)])
    upload = tmp_path / "up.json"
    metrics = mmvet.evaluate(answers, str(upload))
    assert json.loads(upload.read_text()) == {"v1_0": "first"}
    assert metrics["report"]["n_duplicate"] == 0 and "v1_0#1" in metrics["warnings"][0]


def test_mmbench_repeated_index_is_refused_with_line(tmp_path):
    tsv = tmp_path / "mmb.tsv"
    tsv.write_text("index\tquestion\tA\tB\tanswer\n1\tq1\tx\ty\tA\n1\tq2\tx\ty\tB\n")
    answers = write_jsonl(tmp_path / "a.jsonl", [answer(1, "A"), answer(1, "B", repeat=1)])
    with pytest.raises(ValueError, match=r"mmb\.tsv:3: index 1 repeats line 2"):
        mmbench.evaluate(answers, str(tsv))


# ------------------------------------------------------------------ item 2: honest headlines in the runner


def make_plan(tmp_path, bench):
    return run_benchmark.make_plan(["--benchmark", bench, "--visual-token-num", "16", "--data-root", str(tmp_path)])


def test_runner_empty_question_file_exits_1_with_coverage(tmp_path, capsys):
    plan = make_plan(tmp_path, "easyvqa")
    os.makedirs(os.path.dirname(plan.answers))
    open(plan.path(plan.bench.question_file), "w").close()
    open(plan.answers, "w").close()
    rc = run_cli(lambda argv: run_benchmark.score(plan), [])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "nothing was scored" in err
    assert "coverage: 0/0" in out
    assert "accuracy = 0.00" not in out
    saved = json.loads(open(plan.metrics).read())
    assert saved["headline"]["nothing_scored"]


def test_runner_marks_a_partial_textvqa_headline(tmp_path, capsys):
    # 60 annotated questions, 10 answered right: TextVQA's mean leaves the 50 out -> 100.00, marked partial.
    plan = make_plan(tmp_path, "textvqa")
    os.makedirs(os.path.dirname(plan.answers))
    data = [{"question_id": i, "question": f"q{i}", "image_id": f"img{i}", "answers": ["yes"] * 10} for i in range(60)]
    with open(plan.path("TextVQA_0.5.1_val.json"), "w") as f:
        json.dump({"data": data}, f)
    write_jsonl(Path(plan.answers), [answer(i, "yes") for i in range(10)])
    assert run_cli(lambda argv: run_benchmark.score(plan), []) == 0
    out = capsys.readouterr().out
    assert "accuracy: 100.00 (partial: 10/60 answered)" in out
    assert "coverage: 10/60 (16.7%)" in out
    headline = json.loads(open(plan.metrics).read())["headline"]
    assert headline["partial"] is True and (headline["n_answered"], headline["n_expected"]) == (10, 60)


def test_runner_complete_run_is_not_partial(tmp_path, capsys):
    plan = make_plan(tmp_path, "easyvqa")
    os.makedirs(os.path.dirname(plan.answers))
    write_jsonl(Path(plan.path(plan.bench.question_file)),
                [{"question_id": 1, "text": "What shape?", "answer": "circle"},
                 {"question_id": 2, "text": "What color?", "answer": "red"}])
    write_jsonl(Path(plan.answers), [answer(1, "circle"), answer(2, "blue")])
    assert run_cli(lambda argv: run_benchmark.score(plan), []) == 0
    out = capsys.readouterr().out
    assert "accuracy: 50.00  (" in out and "partial" not in out.split("accuracy: 50.00")[1].split("\n")[0]


def test_pope_average_names_a_category_without_answers(tmp_path):
    ann = tmp_path / "coco"
    ann.mkdir()
    for category in ("adversarial", "popular", "random"):
        write_jsonl(ann / f"coco_pope_{category}.json", [{"image": "a.jpg", "text": f"{category}?", "label": "yes"}])
    # The question file asks only two of the three categories.
    questions = write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": 1, "image": "a.jpg", "text": "popular?", "category": "popular"},
        {"question_id": 2, "image": "a.jpg", "text": "random?", "category": "random"},
    ])
    answers = write_jsonl(tmp_path / "a.jsonl", [answer(1, "Yes"), answer(2, "No")])
    metrics = pope.evaluate(answers, str(ann), questions)
    # popular: 1 TP -> F1 100; random: 1 FN -> F1 0; mean of the two present = 50.
    assert metrics["average"]["f1"] == 50.0
    assert metrics["average"]["missing_categories"] == ["adversarial"]
    assert metrics["partial"] is True
    status = report.headline_status(metrics, missing_as_wrong=False)
    assert status["partial"] and "adversarial" in status["note"]


# ------------------------------------------------------------------ item 10: atomic outputs


class Boom(RuntimeError):
    pass


def test_write_json_failure_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    common.write_json(path, {"accuracy": 1.0})
    before = path.read_text()

    def half_dump(obj, f, **kwargs):
        f.write('{"accuracy": ')
        raise Boom("disk full")

    monkeypatch.setattr(common.json, "dump", half_dump)
    with pytest.raises(Boom):
        common.write_json(path, {"accuracy": 2.0})
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_vqav2_upload_survives_a_failed_rewrite(tmp_path, monkeypatch):
    split = write_jsonl(tmp_path / "split.jsonl", [{"question_id": 1}])
    answers = write_jsonl(tmp_path / "a.jsonl", [answer(1, "yes")])
    upload = tmp_path / "up.json"
    vqav2.evaluate(answers, test_split=split, upload_file=str(upload))
    before = upload.read_text()
    real_dump = json.dump

    def failing_dump(obj, f, **kwargs):
        real_dump(obj, f, **kwargs)  # the whole content, then the disk fills before the newline
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(common.json, "dump", failing_dump)
    with pytest.raises(OSError):
        vqav2.evaluate(answers, test_split=split, upload_file=str(upload))
    assert upload.read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["a.jsonl", "split.jsonl", "up.json"]


def test_mme_eval_tool_files_survive_a_failed_rewrite(tmp_path, monkeypatch):
    item = mme.MMEItem("count", "1.txt", "Two dogs?", "Yes", "Yes")
    out = tmp_path / "eval_tool"
    mme.write_eval_tool([item], str(out))
    before = (out / "count.txt").read_text()
    monkeypatch.setattr(mme, "_clean_field", lambda text: (_ for _ in ()).throw(Boom("mid-line")))
    with pytest.raises(Boom):
        mme.write_eval_tool([mme.MMEItem("count", "1.txt", "Two dogs?", "Yes", "No")], str(out))
    assert (out / "count.txt").read_text() == before == "1.txt\tTwo dogs?\tYes\tYes\n"
    assert os.listdir(out) == ["count.txt"]


def test_atomic_path_keeps_the_extension_and_cleans_up(tmp_path):
    target = tmp_path / "fig.png"
    target.write_bytes(b"old")
    seen = []
    with pytest.raises(Boom):
        with atomic_path(target) as tmp:
            seen.append(tmp)
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise Boom("savefig failed")
    assert seen[0].endswith(".png") and os.path.dirname(seen[0]) == str(tmp_path)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["fig.png"]
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["fig.png"]


def test_atomic_write_csv_failure(tmp_path):
    target = tmp_path / "rows.csv"
    with atomic_write(target, newline="") as f:
        f.write("a,b\n")
    with pytest.raises(Boom):
        with atomic_write(target, newline="") as f:
            f.write("c,")
            raise Boom("row failed")
    assert target.read_text() == "a,b\n" and os.listdir(tmp_path) == ["rows.csv"]


def test_efficiency_plot_and_csv_are_atomic(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from llava.bench import report

    target = tmp_path / "rows.csv"
    target.write_text("old\n")

    class HalfWriter:
        def __init__(self, f, fieldnames):
            self.f = f

        def writeheader(self):
            self.f.write("method,")
            raise Boom("interrupted")

    monkeypatch.setattr(report.csv, "DictWriter", HalfWriter)
    with pytest.raises(Boom):
        report.write_csv([{"method": "x"}], target)
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["rows.csv"]
