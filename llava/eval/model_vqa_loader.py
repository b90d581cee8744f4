"""Answer a LLaVA question file (the command; the loop lives in :mod:`llava.eval.answering`).

Question file (LLaVA's jsonl): one object per line with ``question_id``, ``image`` (a path
relative to ``--image-folder``) and ``text`` (the question, including any answer-format
instruction such as "Answer the question using a single word or phrase.")::

    python -m llava.eval.model_vqa_loader --model-path liuhaotian/llava-v1.5-7b \\
        --question-file q.jsonl --image-folder images/ --answers-file answers.jsonl \\
        --visual-token-num 144 --temperature 0 --conv-mode vicuna_v1

Answers go to ``--answers-file`` as jsonl (layout in :mod:`llava.eval.answers`), one line per
question, written and fsynced as each batch finishes; a rerun skips the questions already
answered. ``--num-chunks N --chunk-idx K`` answers only the K-th of N contiguous slices of the
question file (LLaVA's ``split_list``), for one process per GPU.

Run identity: every answer line records what produced it (:class:`llava.eval.answer_identity.RunIdentity`:
checkpoint fingerprint, budget, method and its parameters, template, decoding, prompt options);
a rerun that differs in any of them, or whose question text for an id changed, is refused
before the model loads. ``--overwrite`` writes the new run beside the old file and replaces it
only when complete. A run holds ``<answers>.lock`` while it writes; a second one is refused.

Images are checked before the model loads (the file exists, Pillow reads its header). A bad one
stops the run with the question id and path, unless ``--skip-bad-images``: then the question is
recorded in ``<answers stem>.skipped.jsonl`` and left unanswered (the scorers' coverage counts it).

``--batch-size N`` (LLaVA itself answers one question at a time) left-pads N prompts and prunes
each sample's visual tokens on its own; greedy answers equal those of batch size 1.

A transformers-native directory (LLaVA-OneVision-hf, Qwen2.5-VL, Qwen3-VL, Video-LLaVA-hf; see
:mod:`llava.model.native`) is asked through its processor's chat template: one image entry, then
the question file's ``text`` as it is (with the benchmark's suffix); ``--conv-mode`` is not read
(recorded as ``chat_template``, next to a fingerprint of the template / processor files), except
for Video-LLaVA, which has no template. Batches are the processor's left-padded ones, and each
answer's ``v_token_num`` is the pruning handle's count for that sample.
"""

from __future__ import annotations

import sys

from llava.cli import run_cli
from llava.eval.answering import build_parser, parse_args, run
from llava.eval.questions import jsonl_questions


def main(argv=None) -> str:
    args = parse_args(build_parser(__doc__), argv)
    questions, n_records = jsonl_questions(args.question_file, args.image_folder)
    return run(args, questions, n_records)


if __name__ == "__main__":
    sys.exit(run_cli(main))
