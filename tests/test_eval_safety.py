"""Eval runs that never lie and never lose work (issue 13, items 1, 7, 8, 9, 16): run identity on resume, a safe
--overwrite, one writer per answers file, no orphan chunk workers, --skip-bad-images.

Expected values come from the scenario itself: the settings each test changes by hand, the file contents written
before the run, PIDs of processes the test starts, and the kernel's view of whether a process is alive."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llava.eval import model_vqa_loader, run_benchmark
from llava.eval.answers import AnswersLockedError, AnswersMismatchError, hold_lock, skipped_path
from tests.conftest import pil_image

REPO = Path(__file__).resolve().parents[1]
TOKENS = 6
QUESTIONS = [(0, "What color is it?"), (1, "What shape is it?"), (2, "How many are there?")]


def write_questions(folder: Path, questions=QUESTIONS) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for qid, _ in questions:
        pil_image(24 + 4 * qid, 24, seed=qid).save(folder / "images" / f"{qid}.png")
    qfile = folder / "q.jsonl"
    qfile.write_text("".join(json.dumps({"question_id": qid, "image": f"{qid}.png", "text": text}) + "\n"
                             for qid, text in questions))
    return qfile


def loader_argv(folder: Path, model, answers: Path, *extra: str) -> list[str]:
    return ["--model-path", str(model), "--question-file", str(folder / "q.jsonl"), "--image-folder",
            str(folder / "images"), "--answers-file", str(answers), "--device", "cpu", "--temperature", "0",
            "--max_new_tokens", "2", *extra]


def alive(pid: int) -> bool:
    """Whether `pid` is a running (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return not alive(pid)


def python_env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))


# ------------------------------------------------------------------ item 1: run identity


@pytest.fixture(scope="module")
def finished(tmp_path_factory, v15_dir):
    """A finished 6-token answers file of the tiny checkpoint on three questions."""
    folder = tmp_path_factory.mktemp("identity")
    write_questions(folder)
    answers = folder / "answers.jsonl"
    model_vqa_loader.main(loader_argv(folder, v15_dir, answers, "--visual-token-num", str(TOKENS)))
    return folder, answers


@pytest.mark.parametrize("extra, field", [
    (("--visual-token-num", str(TOKENS), "--conv-mode", "llava_v1"), "conv_mode"),
    (("--visual-token-num", str(TOKENS), "--max_new_tokens", "5"), "max_new_tokens"),
    (("--visual-token-num", str(TOKENS), "--num_beams", "2"), "num_beams"),
])
def test_a_finished_file_is_refused_under_other_settings(finished, v15_dir, tmp_path, extra, field):
    folder, answers = finished
    target = tmp_path / "a.jsonl"
    shutil.copy(answers, target)
    with pytest.raises(AnswersMismatchError, match=rf"answer #1: {field}:"):
        model_vqa_loader.main(loader_argv(folder, v15_dir, target, *extra))
    assert target.read_bytes() == answers.read_bytes()


def test_only_the_parameters_a_method_reads_are_compared(finished, v15_dir, tmp_path, capsys):
    """FastV's K changes a FastV run, not a FasterVLM one: a FastV file written with K = 2 is refused under K = 20,
    while the finished FasterVLM file resumes whatever --fastv-layer says."""
    folder, answers = finished
    target = tmp_path / "a.jsonl"
    shutil.copy(answers, target)
    model_vqa_loader.main(loader_argv(folder, v15_dir, target, "--visual-token-num", str(TOKENS),
                                      "--fastv-layer", "1"))
    assert "all 3 questions answered" in capsys.readouterr().err
    fastv = tmp_path / "fastv.jsonl"
    model_vqa_loader.main(loader_argv(folder, v15_dir, fastv, "--visual-token-num", str(TOKENS),
                                      "--pruning-method", "fastv", "--fastv-layer", "1"))
    assert json.loads(fastv.read_text().splitlines()[0])["method_params"] == {"llm_layer": 1}
    with pytest.raises(AnswersMismatchError, match=r"answer #1: method_params:"):
        model_vqa_loader.main(loader_argv(folder, v15_dir, fastv, "--visual-token-num", str(TOKENS),
                                          "--pruning-method", "fastv", "--fastv-layer", "2"))


def test_the_same_settings_resume_and_a_full_budget_run_is_refused(finished, v15_dir, tmp_path, capsys):
    folder, answers = finished
    target = tmp_path / "a.jsonl"
    shutil.copy(answers, target)
    model_vqa_loader.main(loader_argv(folder, v15_dir, target, "--visual-token-num", str(TOKENS)))
    assert "all 3 questions answered" in capsys.readouterr().err
    # no --visual-token-num: all of the tiny tower's 16 tokens, not the file's 6
    with pytest.raises(AnswersMismatchError, match=rf"visual_token_num: {TOKENS} in the file, 16 in this run"):
        model_vqa_loader.main(loader_argv(folder, v15_dir, target))


def test_another_checkpoint_with_the_same_directory_name_is_refused(finished, v15_dir, tmp_path):
    folder, answers = finished
    target = tmp_path / "a.jsonl"
    shutil.copy(answers, target)
    twin = tmp_path / "elsewhere" / Path(v15_dir).name  # same name: model_id agrees, the files do not
    shutil.copytree(v15_dir, twin)
    config = json.loads((twin / "config.json").read_text())
    config["mm_projector_lr"] = 1e-4  # any edit of config.json
    (twin / "config.json").write_text(json.dumps(config))
    with pytest.raises(AnswersMismatchError, match=r"answer #1: checkpoint: 'sha256:\w+' in the file"):
        model_vqa_loader.main(loader_argv(folder, twin, target, "--visual-token-num", str(TOKENS)))


def test_a_changed_question_text_is_refused(finished, v15_dir, tmp_path):
    folder, answers = finished
    edited = tmp_path / "edited"
    shutil.copytree(folder, edited)
    lines = (edited / "q.jsonl").read_text().splitlines()
    lines[1] = json.dumps({"question_id": 1, "image": "1.png", "text": "What size is it?"})
    (edited / "q.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(AnswersMismatchError, match=r"question 1: 'What shape is it\?' in the file, 'What size"):
        model_vqa_loader.main(loader_argv(edited, v15_dir, edited / "answers.jsonl", "--visual-token-num",
                                          str(TOKENS)))


def test_an_old_answers_file_names_the_missing_fields(finished, v15_dir, tmp_path):
    folder, answers = finished
    target = tmp_path / "a.jsonl"
    old_fields = {"question_id", "prompt", "text", "answer_id", "model_id", "visual_token_num", "pruning_method",
                  "anyres_mode", "v_token_num", "metadata"}  # what the code before issue 13 wrote
    target.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items() if k in old_fields}) + "\n"
                              for line in answers.read_text().splitlines()))
    with pytest.raises(AnswersMismatchError, match=r"lacks the run identity field\(s\) \['method_params', "
                                                   r"'conv_mode'.*'checkpoint'\].*--overwrite"):
        model_vqa_loader.main(loader_argv(folder, v15_dir, target, "--visual-token-num", str(TOKENS)))


def test_output_path_names_non_default_method_parameters(tmp_path):
    def answers_of(*extra):
        return run_benchmark.make_plan(["--benchmark", "textvqa", "--visual-token-num", "144", "--ckpt", "c",
                                        "--data-root", str(tmp_path), "--method", "fastv", *extra]).answers

    assert answers_of().endswith("/answers/c/fastv/n_144.jsonl")
    assert answers_of("--fastv-layer", "2").endswith("/answers/c/fastv/n_144.jsonl")  # the default
    assert answers_of("--fastv-layer", "3").endswith("/answers/c/fastv_k3/n_144.jsonl")
    assert answers_of("--fastv-layer=20").endswith("/answers/c/fastv_k20/n_144.jsonl")
    fastervlm = run_benchmark.make_plan(["--benchmark", "textvqa", "--visual-token-num", "144", "--ckpt", "c",
                                         "--data-root", str(tmp_path), "--fastv-layer", "3"]).answers
    assert fastervlm.endswith("/answers/c/fastervlm/n_144.jsonl")  # a parameter FasterVLM does not read
    with pytest.raises(ValueError, match="--fastv-layer 'x': must be an integer"):
        answers_of("--fastv-layer", "x")


def test_method_parameter_defaults_match_the_entry_points():
    import argparse

    from llava.inference import add_model_args
    from llava.eval.tasks import METHOD_PARAMETERS

    parser = argparse.ArgumentParser()
    add_model_args(parser)
    defaults = vars(parser.parse_args(["--model-path", "x"]))
    for flag, _, default, _ in METHOD_PARAMETERS:
        assert defaults[flag.lstrip("-").replace("-", "_")] == default


# ------------------------------------------------------------------ item 7: --overwrite


def test_overwrite_with_a_bad_conv_mode_or_a_failing_load_keeps_the_old_file(tmp_path):
    write_questions(tmp_path)
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"question_id": 0, "text": "old"}\n')
    before = answers.read_bytes()
    with pytest.raises(ValueError, match="bogus"):
        model_vqa_loader.main(loader_argv(tmp_path, tmp_path / "no-model", answers, "--overwrite",
                                          "--conv-mode", "bogus"))
    assert answers.read_bytes() == before
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError):
        model_vqa_loader.main(loader_argv(tmp_path, broken, answers, "--overwrite"))
    assert answers.read_bytes() == before


# ------------------------------------------------------------------ item 8: one writer per answers file


HOLDER = """
import sys, time
from llava.eval.answers import hold_lock
with hold_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_run_is_refused_with_the_holders_pid(tmp_path):
    write_questions(tmp_path)
    answers = tmp_path / "answers" / "n_6.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(answers)], stdout=subprocess.PIPE, text=True,
                              env=python_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AnswersLockedError, match=rf"n_6\.jsonl is in use by another run \(process {holder.pid},"):
            model_vqa_loader.main(loader_argv(tmp_path, tmp_path / "no-model", answers, "--num-chunks", "9",
                                              "--chunk-idx", "8"))
        assert not answers.exists()
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the dead holder's lock: the same run now goes through (an empty chunk, no model needed)
    model_vqa_loader.main(loader_argv(tmp_path, tmp_path / "no-model", answers, "--num-chunks", "9",
                                      "--chunk-idx", "8"))
    assert answers.read_text() == ""


def test_the_lock_is_per_file(tmp_path):
    with hold_lock(str(tmp_path / "a.jsonl")):
        with hold_lock(str(tmp_path / "b.jsonl")):
            pass
        with pytest.raises(AnswersLockedError, match=f"process {os.getpid()}"):
            with hold_lock(str(tmp_path / "a.jsonl")):
                pass


# ------------------------------------------------------------------ item 9: no orphans


RUNNER = """
import os, sys, time
from llava.eval.run_benchmark import start_chunk_process
children = [start_chunk_process([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ))
            for _ in range(2)]
print(" ".join(str(c.pid) for c in children), flush=True)
time.sleep(60)
"""

WATCHED = """
import os, sys, time
from llava.eval.answering import watch_parent
watch_parent(os.getppid(), interval=0.1)
print("watching", flush=True)
time.sleep(60)
"""

PARENT_OF_WATCHED = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_kill_9_of_the_runner_takes_its_chunk_workers_along(tmp_path):
    runner = subprocess.Popen([sys.executable, "-c", RUNNER], stdout=subprocess.PIPE, text=True, env=python_env())
    pids = [int(p) for p in runner.stdout.readline().split()]
    try:
        assert len(pids) == 2 and all(alive(p) for p in pids)
        assert [os.getpgid(p) for p in pids] == pids  # each worker leads its own process group
        runner.send_signal(signal.SIGKILL)
        runner.wait()
        assert [wait_gone(p, 5) for p in pids] == [True, True]
    finally:
        for p in pids:
            if alive(p):
                os.kill(p, signal.SIGKILL)


def test_a_worker_without_the_death_signal_notices_its_parent_is_gone(tmp_path):
    """The portable fallback: the worker polls os.getppid()."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT_OF_WATCHED, WATCHED], stdout=subprocess.PIPE, text=True,
                              env=python_env())
    pid = int(parent.stdout.readline())
    try:
        assert parent.stdout.readline().strip() == "watching"  # the watch is on (however slow the imports were)
        assert alive(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert wait_gone(pid, 5)
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_the_runner_holds_the_merged_answers_lock_while_chunks_run(tmp_path):
    folder = tmp_path / "textvqa"
    folder.mkdir()
    (folder / "train_images").mkdir()
    (folder / "llava_textvqa_val_v051_ocr.jsonl").write_text("")
    plan = run_benchmark.make_plan(["--benchmark", "textvqa", "--visual-token-num", "6", "--ckpt", "c",
                                    "--data-root", str(tmp_path), "--num-chunks", "2", "--no-score"])
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, plan.answers], stdout=subprocess.PIPE, text=True,
                              env=python_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AnswersLockedError, match=f"process {holder.pid}"):
            run_benchmark.answer(plan)
        assert not os.path.exists(plan.chunk_answers(0))  # refused before any chunk started
    finally:
        holder.kill()
        holder.wait()


# ------------------------------------------------------------------ item 16: bad images


def break_image(folder: Path, qid: int) -> Path:
    path = folder / "images" / f"{qid}.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return path


def test_a_bad_image_is_named_before_the_model_loads(tmp_path):
    write_questions(tmp_path)
    bad = break_image(tmp_path, 1)
    with pytest.raises(ValueError, match=rf"question 1: cannot read image .*: {bad}.*--skip-bad-images"):
        model_vqa_loader.main(loader_argv(tmp_path, tmp_path / "no-model", tmp_path / "a.jsonl"))


def test_skip_bad_images_leaves_the_question_unanswered_and_resume_keeps_it_so(tmp_path, v15_dir, capsys):
    write_questions(tmp_path)
    bad = break_image(tmp_path, 1)
    answers = tmp_path / "a.jsonl"
    argv = loader_argv(tmp_path, v15_dir, answers, "--visual-token-num", str(TOKENS), "--skip-bad-images")
    model_vqa_loader.main(argv)
    assert [json.loads(line)["question_id"] for line in answers.read_text().splitlines()] == [0, 2]
    skipped = [json.loads(line) for line in Path(skipped_path(str(answers))).read_text().splitlines()]
    assert [(s["question_id"], s["image"]) for s in skipped] == [(1, str(bad))]
    assert skipped[0]["skipped"].startswith("cannot read image") and "text" not in skipped[0]
    assert "skipped question 1" in capsys.readouterr().err
    before = answers.read_bytes()
    model_vqa_loader.main(argv)  # a rerun neither retries nor stops at it
    assert "all 3 questions answered" in capsys.readouterr().err
    assert answers.read_bytes() == before
