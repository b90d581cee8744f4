"""Answer a video-QA question file with Video-LLaVA (the command; MSVD-QA, MSRVTT-QA, TGIF-QA, ActivityNet-QA).

    python -m llava.eval.model_video_qa --model-path LanguageBind/Video-LLaVA-7B-hf \\
        --question-file test_q.json --gt-file-answers test_a.json --video-folder videos \\
        --answers-file answers.jsonl --visual-token-num 64 --pruning-method fastervlm [--limit 1000]

The files are those of Video-LLaVA's evaluation (PKU-YuanGroup/Video-LLaVA,
videollava/eval/video/run_inference_video_qa.py, after Video-ChatGPT): ``test_q.json`` is a JSON list of
``{"video_name", "question", "question_id"}``, ``test_a.json`` a JSON list of ``{"answer", "question_id", ...}``.
Upstream pairs the two lists by position (and, within a chunk, by the position in the chunk: a bug for every chunk
but the first); here an answer is matched by ``question_id`` when every answer record has one, else by position
in the whole file. A question's video is ``<--video-folder>/<--video-prefix><video_name><ext>`` with the first
extension of .mp4 .avi .mov .mkv that exists (upstream's order; ActivityNet's prefix is ``v_``,
run_inference_video_qa_act.py). Upstream silently drops a question whose video is missing; here that is an error
before the model loads, or, with ``--skip-bad-videos``, a skipped question that the judge's coverage counts.

``--limit N`` answers the first N questions of the file (file order, before chunking): the seed's video runs used
the first 1,000 of each set. Each question's video is read as 8 uniformly sampled frames (:mod:`llava.video`) and
answered by Video-LLaVA with its per-frame budget ``--visual-token-num`` (256 per frame = no pruning; 64 = 75%,
26 = 90%); greedy, up to 1024 new tokens as upstream; ``--batch-size N`` answers N questions per left-padded
``generate`` call (the same answers as one at a time).

Answers: one line per question (layout of :mod:`llava.eval.answers`, plus the fields the judge reads,
:mod:`llava.eval.scoring.video_qa`): ``question_id``, ``question``, ``answer`` (the ground truth), ``text`` (the
model's answer), ``video``, the run identity and ``v_token_num`` (kept visual tokens of the whole video). Resume,
locking, chunks (``--num-chunks/--chunk-idx``) and ``--overwrite`` behave as for the image entry points.
"""

from __future__ import annotations

import json
import os
import sys

from llava.cli import run_cli
from llava.eval.answering import build_parser, parse_args
from llava.eval.questions import Question
from llava.eval.video_answering import run_video

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv")  # upstream's search order (run_inference_video_qa.py)
MAX_NEW_TOKENS = 1024  # upstream's max_new_tokens


def build_video_parser():
    parser = build_parser(__doc__, max_new_tokens=MAX_NEW_TOKENS)
    parser.add_argument("--video-folder", required=True, help="folder of the videos named in the question file")
    parser.add_argument("--gt-file-answers", required=True, help="test_a.json: the ground-truth answers")
    parser.add_argument("--video-prefix", default="", help="file name prefix of every video (ActivityNet: v_)")
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N questions of the file")
    parser.add_argument("--skip-bad-videos", dest="skip_bad_images", action="store_true",
                        help="leave questions whose video is missing or unreadable unanswered (listed in "
                             "<answers>.skipped.jsonl) instead of stopping")
    return parser


def _read_json_list(path: str, role: str) -> list:
    try:
        with open(path, encoding="utf-8") as f:
            records = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{role} not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: {role} is not valid JSON ({err})") from None
    if not isinstance(records, list):
        raise ValueError(f"{path}: {role} must be a JSON list, got {type(records).__name__}")
    return records


def read_video_questions(path: str, limit: int | None = None) -> list[dict]:
    """The first `limit` (all when None) records of a test_q.json, each checked for its three fields."""
    records = _read_json_list(path, "question file")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit {limit}: must be at least 1 question")
        records = records[:limit]
    for i, record in enumerate(records):
        fields = ("video_name", "question", "question_id")
        missing = [k for k in fields if not isinstance(record, dict) or k not in record]
        if missing:
            raise ValueError(f"{path}: question #{i} lacks {missing} (expected video_name, question, question_id)")
    return records


def ground_truth(path: str, questions: list[dict]) -> list[str]:
    """The ground-truth answer of each question: by ``question_id`` when every record of test_a.json has one,
    otherwise by position in the whole file (upstream's pairing)."""
    records = _read_json_list(path, "ground-truth answers file")
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "answer" not in record:
            raise ValueError(f"{path}: answer #{i} has no 'answer'")
    if all("question_id" in r for r in records):
        by_id = {str(r["question_id"]): str(r["answer"]) for r in records}
        absent = [q["question_id"] for q in questions if str(q["question_id"]) not in by_id]
        if absent:
            raise ValueError(f"{path}: no answer for question_id {absent[0]!r} ({len(absent)} question(s) in all)")
        return [by_id[str(q["question_id"])] for q in questions]
    if len(records) < len(questions):
        raise ValueError(f"{path}: {len(records)} answers for {len(questions)} questions (paired by position, "
                         "since not every answer has a question_id)")
    return [str(r["answer"]) for r in records[:len(questions)]]


def find_video(folder: str, prefix: str, name: str) -> str | None:
    """``<folder>/<prefix><name><ext>`` for the first of VIDEO_EXTENSIONS that exists, else None."""
    for ext in VIDEO_EXTENSIONS:
        path = os.path.join(folder, f"{prefix}{name}{ext}")
        if os.path.isfile(path):
            return path
    return None


def video_questions(args) -> tuple[list[Question], dict[int, str | None], int]:
    """(questions, video path of each by source index (None: not found), number of records answered)."""
    if not os.path.isdir(args.video_folder):
        raise FileNotFoundError(f"video folder not found: {args.video_folder!r} (pass --video-folder)")
    records = read_video_questions(args.question_file, args.limit)
    answers = ground_truth(args.gt_file_answers, records)
    questions, videos = [], {}
    for i, (record, answer) in enumerate(zip(records, answers)):
        name = str(record["video_name"])
        extra = {"question": record["question"], "answer": answer, "video": name}
        questions.append(Question(record["question_id"], record["question"], record["question"], extra=extra,
                                  source=i))
        videos[i] = find_video(args.video_folder, args.video_prefix, name)
    return questions, videos, len(records)


def main(argv=None) -> str:
    args = parse_args(build_video_parser(), argv)
    questions, videos, n_records = video_questions(args)
    return run_video(args, questions, videos, n_records)


if __name__ == "__main__":
    sys.exit(run_cli(main))
