"""Functions of the local lmms-eval task easyvqa_500 (easyvqa_500.yaml): the image of a question, its text, and the
score of our own easy-vqa scorer (llava/eval/scoring/easyvqa.py: exact match after `normalize`, accuracy in percent),
so that the task's accuracy is the runner's for the same answers.

lmms-eval loads this file by path (the YAML's ``!function utils.<name>``), not as a package module.
"""

from __future__ import annotations

import easy_vqa  # the images ship with the package (the `tiny` extra); the task reads nothing else

from llava.eval.scoring.common import percent
from llava.eval.scoring.easyvqa import normalize
from llava.image_io import load_image


def doc_to_visual(doc: dict) -> list:
    """The question's image ("<image id>.png") from the easy-vqa package, as RGB PIL (as the runner loads it)."""
    image_id = int(doc["image"].rsplit(".", 1)[0])
    return [load_image(easy_vqa.get_test_image_paths()[image_id])]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs=None) -> str:
    """The question as it is; the conversation template asks for one word (as the runner's question file)."""
    return doc["text"]


def process_results(doc: dict, results: list[str]) -> dict:
    """1 if the answer equals the gold answer after the scorer's normalisation, else 0."""
    return {"accuracy": int(normalize(results[0]) == normalize(doc["answer"]))}


def accuracy(items: list[int]) -> float:
    """Percent right, as the easy-vqa scorer reports it."""
    return percent(sum(items), len(items))
