"""The four video-QA benchmarks: declarations, question files, and the scripts end to end.

Independent sources:
- the declarations against a table written by hand from PKU-YuanGroup/Video-LLaVA (scripts/v1_5/eval/run_qa_*.sh:
  folders, video folders, test_q.json / test_a.json; run_inference_video_qa_act.py: ActivityNet's ``v_`` prefix;
  run_inference_video_qa.py: the extension order .mp4 .avi .mov .mkv);
- ``--limit N``: hand-made question files, the expected ids read off the file by hand;
- end to end (bash scripts/video/eval/run_qa_*.sh and eval_qa_*.sh on a tiny random Video-LLaVA-hf directory,
  tiny PyAV videos, a chat-completions server on 127.0.0.1 with scripted judgments): at the full budget each
  answer equals transformers' own, unpruned ``VideoLlavaForConditionalGeneration.generate`` on frames this test
  decodes itself (PyAV, Video-LLaVA's ``np.linspace(0, n - 1, 8)`` frame rule) and the prompt written out by
  hand; every answer got 8 x (budget + 1) visual tokens (each frame's [CLS] row and its kept patches: hand
  arithmetic); accuracy and mean score are computed by hand from the scripted judgments (the seed's
  eval_video_qa.py: accuracy = yes / judged, score = mean). msvd and tgif run with ``--batch-size 2``, so those
  answers come from left-padded batches.
- ``--batch-size 2`` vs ``--batch-size 1`` at a pruned budget (differential, next to the independent end-to-end
  check above): the same answers lines, an unreadable video inside a batch skipped alone.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llava.eval import run_benchmark
from llava.eval.model_video_qa import find_video, ground_truth, read_video_questions
from llava.eval.tasks import BENCHMARKS
from tests.test_video_judge import FakeJudgeServer, ok

av = pytest.importorskip("av", reason="PyAV writes the test videos (pip install -e '.[test]')")

REPO = Path(__file__).resolve().parents[1]
SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the human's questions.")

# name: (folder under the data root, video folder, question file, answer file, video prefix) -- Video-LLaVA's
# scripts/v1_5/eval/run_qa_{msvd,msrvtt,tgif,activitynet}.sh and run_inference_video_qa_act.py
VIDEO_LLAVA = {
    "msvd": ("GPT_Zero_Shot_QA/MSVD_Zero_Shot_QA", "videos", "test_q.json", "test_a.json", ""),
    "msrvtt": ("GPT_Zero_Shot_QA/MSRVTT_Zero_Shot_QA", "videos/all", "test_q.json", "test_a.json", ""),
    "tgif": ("GPT_Zero_Shot_QA/TGIF_Zero_Shot_QA", "mp4", "test_q.json", "test_a.json", ""),
    "activitynet": ("GPT_Zero_Shot_QA/Activitynet_Zero_Shot_QA", "all_test", "test_q.json", "test_a.json", "v_"),
}


def test_declarations_follow_video_llava():
    for name, (folder, videos, questions, answers, prefix) in VIDEO_LLAVA.items():
        bench = BENCHMARKS[name]
        assert (bench.folder, bench.video_folder, bench.question_file, bench.answer_file) == \
            (folder, videos, questions, answers), name
        assert bench.entry_args == (("--video-prefix", prefix) if prefix else ()), name
        # upstream: conv llava_v1; judged by a chat model, accuracy = yes / judged
        assert (bench.entry, bench.conv_mode, bench.scorer, bench.headline) == \
            ("model_video_qa", "llava_v1", "video_qa", "accuracy"), name
        assert bench.image_folder is None and ("--annotation-file", answers) in bench.scorer_args


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def test_limit_takes_the_first_questions_in_file_order(tmp_path):
    ids = [17, 3, "a9", 5, 11]  # deliberately not sorted
    q = write_json(tmp_path / "test_q.json", [{"video_name": f"v{i}", "question": f"q{i}", "question_id": i}
                                              for i in ids])
    assert [r["question_id"] for r in read_video_questions(str(q), 3)] == [17, 3, "a9"]
    assert [r["question_id"] for r in read_video_questions(str(q))] == ids
    assert [r["question_id"] for r in read_video_questions(str(q), 1000)] == ids  # more than the file: all


def test_limit_names_the_run_and_reaches_entry_point_and_judge():
    plan = run_benchmark.make_plan(["--benchmark", "tgif", "--family", "video", "--visual-token-num", "64",
                                    "--limit", "1000", "--data-root", "/d", "--api-base", "http://h/v1"])
    assert plan.model_path == "LanguageBind/Video-LLaVA-7B-hf"
    folder = "/d/GPT_Zero_Shot_QA/TGIF_Zero_Shot_QA"
    assert plan.answers == f"{folder}/answers/Video-LLaVA-7B-hf/fastervlm/n_64_first1000.jsonl"
    entry, scorer = plan.entry_argv(plan.answers), plan.scorer_argv()
    assert entry[entry.index("--limit") + 1] == "1000" and scorer[scorer.index("--limit") + 1] == "1000"
    assert "--api-base" not in entry and scorer[scorer.index("--api-base") + 1] == "http://h/v1"
    assert entry[entry.index("--video-folder") + 1] == f"{folder}/mp4"
    full = run_benchmark.make_plan(["--benchmark", "tgif", "--family", "video", "--visual-token-num", "64"])
    assert full.answers.endswith("/n_64.jsonl") and "--limit" not in full.entry_argv(full.answers)


def test_ground_truth_by_id_else_by_position(tmp_path):
    questions = [{"question_id": "x"}, {"question_id": "y"}]
    by_id = write_json(tmp_path / "a.json", [{"answer": "Y", "question_id": "y"}, {"answer": "X", "question_id": "x"}])
    assert ground_truth(str(by_id), questions) == ["X", "Y"]
    by_position = write_json(tmp_path / "b.json", [{"answer": "first"}, {"answer": "second"}, {"answer": "third"}])
    assert ground_truth(str(by_position), questions) == ["first", "second"]
    missing = write_json(tmp_path / "c.json", [{"answer": "X", "question_id": "x"}])
    with pytest.raises(ValueError, match="no answer for question_id 'y'"):
        ground_truth(str(missing), questions)


def test_video_file_follows_upstreams_extension_order(tmp_path):
    for name in ("v_clip.mkv", "v_clip.avi", "clip.mp4"):
        (tmp_path / name).write_bytes(b"")
    assert find_video(str(tmp_path), "v_", "clip") == str(tmp_path / "v_clip.avi")  # .avi before .mkv
    assert find_video(str(tmp_path), "", "clip") == str(tmp_path / "clip.mp4")
    assert find_video(str(tmp_path), "", "other") is None


# ------------------------------------------------------------------ end to end through the scripts


def write_video(path: Path, n_frames: int, seed: int) -> None:
    """A 32 x 32 video of `n_frames` random frames (mpeg4; container from the extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for _ in range(n_frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def decoded_frames(path: Path) -> np.ndarray:
    """Video-LLaVA's 8 frames, decoded here: every frame, then np.linspace(0, n - 1, 8) as ints. (8, H, W, 3)"""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack([frames[i] for i in np.linspace(0, len(frames) - 1, 8, dtype=int)])


# name: (budget per frame, runner options, questions (video, question, id), answers in test_a.json order,
#        extension, judged (question -> (yes/no, score)))
CASES = {
    "msvd": (16, ["--limit", "3", "--num-chunks", "2", "--batch-size", "2"],
             [("vidA", "what is the animal?", 0), ("vidB", "what color is it?", 1), ("vidA", "is it moving?", 2),
              ("vidC", "is it a car?", 3)],
             [(0, "dog"), (1, "red"), (2, "yes"), (3, "no")], ".avi",  # aligned with test_q.json, as upstream's
             {"what is the animal?": ("yes", 4), "what color is it?": ("no", 1), "is it moving?": ("yes", 5)}),
    "msrvtt": (4, [], [("video7", "who is talking?", "m1"), ("video8", "where is it?", "m2")],
               [("m2", "kitchen"), ("m1", "man")], ".mp4",  # another order: matched by question_id
               {"who is talking?": ("no", 0), "where is it?": ("no", 2)}),
    "tgif": (2, ["--batch-size", "2"], [("tumblr_x", "what does the cat do?", "FrameQA1"),
                                        ("tumblr_y", "how many people?", "FrameQA2")],
             [("FrameQA1", "jump"), ("FrameQA2", "two")], ".mp4",
             {"what does the cat do?": ("yes", 3), "how many people?": ("yes", 5)}),
    "activitynet": (4, [], [("abc", "is the man running?", "v_abc_0")], [("v_abc_0", "yes")], ".mkv",
                    {"is the man running?": ("yes", 4)}),
}
# accuracy = 100 * yes / judged and score = mean, by hand from the judgments above (msvd: --limit 3 judges 0, 1, 2)
EXPECTED_METRICS = {"msvd": (200 / 3, 10 / 3), "msrvtt": (0.0, 1.0), "tgif": (100.0, 4.0), "activitynet": (100.0, 4.0)}


def write_benchmark(root: Path, name: str) -> dict:
    """test_q.json, test_a.json and the videos of one benchmark; returns {video_name: path}."""
    folder, videos, _, _, prefix = VIDEO_LLAVA[name]
    _, _, questions, answers, ext, _ = CASES[name]
    base = root / folder
    write_json(base / "test_q.json", [{"video_name": v, "question": q, "question_id": i} for v, q, i in questions])
    write_json(base / "test_a.json", [{"answer": a, "type": 8, "question_id": i} for i, a in answers])
    paths = {}
    for seed, video in enumerate(sorted({v for v, _, _ in questions})):
        paths[video] = base / videos / f"{prefix}{video}{ext}"
        write_video(paths[video], n_frames=9 + 3 * seed, seed=seed)
    return paths


def reference_answer(model_dir: Path, tok_dir, question: str, video: Path, max_new_tokens: int) -> str:
    """transformers' own VideoLlava (no pruning installed) on the hand-written Video-LLaVA eval prompt; the processor
    is built as the directory's was (its from_pretrained wants torchvision for the video processor)."""
    from transformers import VideoLlavaForConditionalGeneration

    from tests.video_helpers import video_llava_processor

    model = VideoLlavaForConditionalGeneration.from_pretrained(model_dir, attn_implementation="eager").eval()
    processor = video_llava_processor(tok_dir)
    prompt = f"{SYSTEM} USER: <video>\n{question} ASSISTANT:"
    inputs = processor(text=prompt, videos=decoded_frames(video), return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    return processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip()


def run_script(script: str, args: list[str], env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run(["bash", str(REPO / "scripts/video/eval" / script), *args], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"{script} {args}: {out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def video_llava_dir(tmp_path_factory, tok_dir):
    from tests.video_helpers import make_video_llava_hf_dir

    path, _ = make_video_llava_hf_dir(tmp_path_factory.mktemp("video") / "tiny-video-llava-hf", tok_dir)
    return path


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_four_scripts_end_to_end(tmp_path, video_llava_dir, tok_dir):
    root = tmp_path / "eval"
    videos = {name: write_benchmark(root, name) for name in CASES}
    env = {k: v for k, v in os.environ.items() if k not in ("METHOD", "CUDA_VISIBLE_DEVICES")}
    env.update(CKPT="tiny-video", MODEL_PATH=str(video_llava_dir), DATA_ROOT=str(root), PYTHON=sys.executable,
               OPENAI_API_KEY="sk-local")
    max_new = 5
    script = {q: [ok(*judged)] for _, _, _, _, _, judgments in CASES.values() for q, judged in judgments.items()}
    with FakeJudgeServer(script) as server:
        for name, (budget, options, questions, answers, _, judgments) in CASES.items():
            run_script(f"run_qa_{name}.sh", [str(budget), *options, "--device", "cpu", "--max_new_tokens",
                                             str(max_new)], env)
            limit = ["--limit", options[options.index("--limit") + 1]] if "--limit" in options else []
            run_script(f"eval_qa_{name}.sh", [str(budget), *limit, "--api-base", server.url, "--judge-model", "j",
                                              "--retry-delay", "0.01"], env)
            run = f"n_{budget}" + (f"_first{limit[1]}" if limit else "")
            answers_dir = root / VIDEO_LLAVA[name][0] / "answers" / "tiny-video" / "fastervlm"
            lines = read_lines(answers_dir / f"{run}.jsonl")
            asked = questions[:len(judgments)]  # the first --limit questions, in file order
            truth = dict(answers)
            assert [(r["question_id"], r["question"], r["answer"], r["video"]) for r in lines] == \
                [(i, q, truth[i], v) for v, q, i in asked], name
            if budget == 16:  # every patch of every frame: transformers' own model gives the same answers
                for line, (video, question, _) in zip(lines, asked):
                    video_path = videos[name][video]
                    assert line["text"] == reference_answer(video_llava_dir, tok_dir, question, video_path, max_new)
            # each of the 8 frames: its [CLS] row + `budget` patches (transformers' T x (patches + 1) video
            # placeholders, llava/integrations/transformers/video_llava.py); the tiny tower has 16 patches per frame
            assert {r["v_token_num"] for r in lines} == {8 * (budget + 1)}, name
            assert {r["visual_token_num"] for r in lines} == {budget}
            metrics = json.loads((answers_dir / f"{run}.metrics.json").read_text())
            accuracy, score = EXPECTED_METRICS[name]
            assert (metrics["accuracy"], metrics["score"]) == (pytest.approx(accuracy), pytest.approx(score)), metrics
            assert metrics["headline"]["value"] == pytest.approx(accuracy) and not metrics["partial"], name
        # the judge saw each answer once, with the ground truth and the model's answer of the answers file
        assert sorted(server.counts.values()) == [1] * sum(len(c[5]) for c in CASES.values())
        assert set(server.auth) == {"Bearer sk-local"}


def test_batch_size_two_writes_the_lines_of_batch_size_one(tmp_path, video_llava_dir):
    """Questions of different lengths, two per generate call, one unreadable video in the middle of a batch."""
    from llava.eval import model_video_qa

    questions = [("vidA", "what is the animal?", "q0"), ("vidB", "what color is the thing on the left?", "q1"),
                 ("bad", "is it broken?", "q2"), ("vidA", "why?", "q3"), ("vidB", "is it moving or standing?", "q4")]
    q_file = write_json(tmp_path / "test_q.json", [{"video_name": v, "question": q, "question_id": i}
                                                   for v, q, i in questions])
    a_file = write_json(tmp_path / "test_a.json", [{"answer": "x", "question_id": i} for _, _, i in questions])
    write_video(tmp_path / "videos" / "vidA.mp4", n_frames=10, seed=1)
    write_video(tmp_path / "videos" / "vidB.mp4", n_frames=13, seed=2)
    (tmp_path / "videos" / "bad.mp4").write_bytes(b"not a video")
    lines = {}
    for batch in (1, 2):
        answers = tmp_path / f"b{batch}.jsonl"
        model_video_qa.main(["--model-path", str(video_llava_dir), "--question-file", str(q_file),
                             "--gt-file-answers", str(a_file), "--video-folder", str(tmp_path / "videos"),
                             "--answers-file", str(answers), "--visual-token-num", "4", "--pruning-method",
                             "fastervlm", "--device", "cpu", "--max_new_tokens", "12", "--batch-size", str(batch),
                             "--skip-bad-videos", "--temperature", "0"])
        lines[batch] = [(r["question_id"], r["text"], r["v_token_num"]) for r in read_lines(answers)]
        skipped = read_lines(tmp_path / f"b{batch}.skipped.jsonl")
        assert [r["question_id"] for r in skipped] == ["q2"]
    assert lines[2] == lines[1]
    assert [i for i, _, _ in lines[1]] == ["q0", "q1", "q3", "q4"]
    assert {n for _, _, n in lines[1]} == {8 * (4 + 1)}  # 8 frames x ([CLS] + 4 patches), hand arithmetic
    assert len({t for _, t, _ in lines[1]}) > 1  # the answers differ: rows were not swapped unseen
