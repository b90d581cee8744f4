"""The answering loop of the video entry point (:mod:`llava.eval.model_video_qa`): the image loop of
:mod:`llava.eval.answering` (chunk, resume, refuse another run's file, lock, fsynced lines) with videos instead of
images: each question's video is read as 8 frames (:func:`llava.video.read_video`) and answered by the Video-LLaVA
helper of the transformers integration (:func:`llava.integrations.transformers.video_llava.answer_videos`),
``--batch-size`` questions per left-padded ``generate`` call.

The run identity is the image one (:func:`llava.eval.answer_identity.run_identity`) with ``visual_token_num`` the
budget per frame; the pruning settings of the loaded model are those `apply_pruning` installed
(``model.fastervlm.pruning``).
"""

from __future__ import annotations

import sys

from torch.utils.data import DataLoader

from llava.eval.answer_identity import IDENTITY_FIELDS, RunIdentity, run_identity
from llava.eval.answering import (_chunk_label, _collate, _finish_answered, _num_workers, _say_resumed,
                                  _watch_parent_from_env, tqdm_bar)
from llava.eval.answers import AnswersFile, hold_lock
from llava.eval.questions import Question, chunk_questions, number_repeats
from llava.eval.run_identity import answer_record, checkpoint_fingerprint, skipped_record
from llava.inference import generation_kwargs, load_from_args
from llava.integrations.transformers.handle import HANDLE_ATTRIBUTE
from llava.integrations.transformers.video_llava import answer_videos, video_prompt
from llava.mm_utils import get_model_name_from_path
from llava.model.pruning import PruningConfig
from llava.video import read_video

NUM_FRAMES = 8  # Video-LLaVA's frames per video


def video_identity(args, pruning) -> RunIdentity:
    """The run identity: `pruning` is the request before the model loads, the installed config after."""
    return run_identity(args, pruning, model_id=get_model_name_from_path(args.model_path), anyres=False,
                        checkpoint=checkpoint_fingerprint(args.model_path, args.model_base))


class VideoDataset:
    """The frames of each question's video; runs in DataLoader workers. An unreadable video is an error naming
    the question and the file, or (``skip_bad``) a sample carrying the reason."""

    def __init__(self, questions: list[Question], videos: dict[int, str], skip_bad: bool):
        self.questions, self.videos, self.skip_bad = questions, videos, skip_bad

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> tuple[int, object, str | None]:
        """(index, frames or None, why the video could not be read or None)."""
        q = self.questions[index]
        path = self.videos[q.source]
        try:
            return index, read_video(path, num_frames=NUM_FRAMES), None
        except (OSError, ValueError) as err:
            if not self.skip_bad:
                raise ValueError(f"question {q.question_id!r}: cannot read video {path}: {err} (rerun with "
                                 "--skip-bad-videos to leave it unanswered)") from None
            return index, None, f"cannot read video ({err})"


def _missing_videos(questions: list[Question], videos: dict[int, str | None], args) -> dict[str, str]:
    """{key: reason} of the questions whose video file is absent; without --skip-bad-videos the first is an error."""
    missing = {q.key: "video file not found" for q in questions if videos[q.source] is None}
    if missing and not args.skip_bad_images:
        q = next(q for q in questions if q.key in missing)
        raise FileNotFoundError(f"question {q.question_id!r}: no video {args.video_prefix}{q.extra['video']}"
                                f"{{.mp4,.avi,.mov,.mkv}} in {args.video_folder} (rerun with --skip-bad-videos to "
                                "leave it unanswered)")
    return missing


def run_video(args, questions: list[Question], videos: dict[int, str | None], n_records: int) -> str:
    """Answer this chunk's questions that ``--answers-file`` does not hold yet, under its lock; returns its path."""
    _watch_parent_from_env()
    number_repeats(questions)
    with hold_lock(args.answers_file):
        return _run_locked(args, questions, videos, n_records)


def _run_locked(args, questions: list[Question], videos: dict[int, str | None], n_records: int) -> str:
    mine = chunk_questions(questions, n_records, args.num_chunks, args.chunk_idx)
    answers = AnswersFile(args.answers_file, overwrite=args.overwrite)
    request = PruningConfig.from_args(args)
    fields = tuple(f for f in IDENTITY_FIELDS if f != "visual_token_num" or request.visual_token_num is not None)
    if answers.records or answers.skipped:  # refuse another run's file before the model loads
        answers.check(video_identity(args, request), fields)
        answers.check_prompts({q.key: q.prompt for q in questions})
    pending = [q for q in mine if q.key not in answers.done]
    chunk = _chunk_label(args)
    _say_resumed(answers, mine, len(mine) - len(pending), chunk)
    if not pending and "visual_token_num" in fields:
        return _finish_answered(answers, len(mine), chunk)
    bad = _missing_videos(pending, videos, args)
    _, model, processor, _ = load_from_args(args)
    identity = video_identity(args, getattr(model, HANDLE_ATTRIBUTE).pruning)
    answers.check(identity)
    for q in pending:
        if q.key in bad:
            answers.append_skipped(skipped_record(q, bad[q.key], identity))
    todo = [q for q in pending if q.key not in bad]
    bar = tqdm_bar(len(mine), len(mine) - len(todo), f"{args.question_file}{chunk}")
    _answer_all(args, answers, VideoDataset(todo, videos, args.skip_bad_images), (model, processor), identity, bar)
    answers.finish()
    return answers.path


def _answer_all(args, answers: AnswersFile, dataset: VideoDataset, model_and_processor, identity, bar) -> None:
    """Answer every question of `dataset`, --batch-size at a time (one `generate` call per batch), appending each
    answer (or skip) as it comes."""
    model, processor = model_and_processor
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=_num_workers(args),
                        collate_fn=_collate)
    generation = generation_kwargs(args)
    with answers, bar:
        for samples in loader:
            good = []
            for index, frames, error in samples:
                q = dataset.questions[index]
                if error is None:
                    good.append((q, frames))
                    continue
                answers.append_skipped(skipped_record(q, error, identity))
                print(f"[answers] skipped question {q.question_id!r}: {error}", file=sys.stderr)
            if good:
                prompts = [video_prompt(q.query) for q, _ in good]
                replies = answer_videos(model, processor, prompts, [frames for _, frames in good], **generation)
                for (q, _), (text, v_tokens) in zip(good, replies):
                    answers.append(answer_record(q, text, v_tokens, identity))
            bar.update(len(samples))
