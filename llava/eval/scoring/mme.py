"""MME: per-subtask acc and acc+, perception and cognition totals, and the eval_tool layout.

Inputs
  result file     answers jsonl; LLaVA's ``llava_mme.jsonl`` sets ``question_id`` to the
                  image path inside the benchmark (``<subtask>/[images/]<name>.<ext>``)
                  and the prompt to the question plus an answer-format instruction
  ground truth    either ``--mme-dir``: the ``MME_Benchmark_release_version`` folder,
                  one folder per subtask, each image ``<name>.<ext>`` with a
                  ``<name>.txt`` of ``question<TAB>Yes|No`` lines (next to the image, or
                  in ``questions_answers_YN/`` when the images sit in ``images/``);
                  or a question file whose records carry ``answer`` (yes/no)
  question file   optional; its ``category`` gives the subtask (else the first
                  component of ``question_id``)

The official pipeline (LLaVA's ``scripts/v1_5/eval/mme.sh``) is two scripts:

* ``convert_answer_to_mme.py`` (LLaVA's ``playground/data/eval/MME``, run there) finds each
  answer's ground truth by (subtask, ``<name>.txt``, question) -- the prompt without LLaVA's
  "Answer the question using a single word or phrase." plus " Please answer yes or no." (one
  space, else two, as the benchmark writes it) -- and writes
  ``eval_tool/answers/<experiment>/<subtask>.txt`` with ``<name>.txt<TAB>question<TAB>gt<TAB>answer``
  lines in answer order. An answer without ground truth stops it (KeyError).
* MME's ``eval_tool/calculation.py`` reads the 14 subtask files, pairs consecutive lines as the
  two questions of one image and reads a prediction as :func:`parse_pred` does. Per subtask:
  acc = right / questions, acc+ = images with both questions right / images, score =
  100 * (acc + acc+); perception sums its 10 subtasks (max 2000), cognition its 4 (max 800).
  A missing subtask file stops it; a missing or repeated answer shifts the pairing.

Here the pairs are formed by image explicitly, so line order does not matter, and every
question of the ground truth is scored: a missing answer is written and read as an empty
prediction, i.e. wrong ("other"), so acc and acc+ keep the benchmark's denominators and a partial
run never scores higher than the finished one (``partial`` is then true). Answers without ground
truth are listed as unknown and skipped; a repeated (image, question) keeps its last answer and
is listed as duplicate. The eval_tool files we write are the converter's, line for line, for a
complete run whose answers are in question-file order.

``--eval-tool-dir DIR`` writes the ``<subtask>.txt`` files; ``--results-dir DIR`` scores such a
folder (as calculation.py would) instead of an answers file.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass

from ...atomic import atomic_write
from .common import MatchReport, load_answers, percent, qid_key, read_jsonl, require_dir, require_fields
from .report import emit, exit_code

PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
              "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")

# Instructions LLaVA's prompts may carry that the benchmark's own questions lack
# or write differently ("? Please answer yes or no." with one or two spaces).
_INSTRUCTIONS = ("Answer the question using a single word or phrase.", "Please answer yes or no.")
_SPACES = re.compile(r"\s+")


@dataclass
class MMEItem:
    subtask: str
    image: str  # the image's question file name, "<name>.txt": the first field of an eval_tool line
    question: str  # the benchmark's wording
    gt: str  # "Yes" / "No" as the benchmark writes it
    pred: str  # raw model answer; "" for a question without an answer


def parse_pred(text: str) -> str:
    """MME's reading of an answer: 'yes', 'no' or 'other'."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def canonical_question(text: str) -> str:
    """Question text without answer-format instructions and with single spaces."""
    for instruction in _INSTRUCTIONS:
        text = text.replace(instruction, " ")
    return _SPACES.sub(" ", text).strip()


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def tab_rows(path: str, n_fields: int, expected: str, encoding: str = "utf-8"):
    """The tab-separated fields of each non-blank line; a line with another field count names file and line."""
    with open(path, encoding=encoding) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != n_fields:
                raise ValueError(f"{path}:{line_no}: expected {expected}, got {len(parts)} field(s)")
            yield parts


def load_ground_truth(mme_dir: str) -> dict[tuple[str, str, str], tuple[str, str, str]]:
    """(subtask, image stem, canonical question) -> ("<stem>.txt", question, gt), in benchmark order."""
    require_dir(mme_dir, "MME benchmark")
    truth = {}
    for subtask in sorted(os.listdir(mme_dir)):
        root = os.path.join(mme_dir, subtask)
        if not os.path.isdir(root):
            continue
        qa_dir = root
        if os.path.isdir(os.path.join(root, "images")):
            qa_dir = require_dir(os.path.join(root, "questions_answers_YN"), f"MME {subtask} questions_answers_YN")
        for name in sorted(os.listdir(qa_dir)):
            if not name.endswith(".txt"):
                continue
            for question, gt in tab_rows(os.path.join(qa_dir, name), 2, "'question<TAB>answer'", "utf-8-sig"):
                # The converter strips the whole line, so the question as written, without surrounding blanks.
                truth[(subtask, _stem(name), canonical_question(question))] = (name, question.strip(), gt.strip())
    if not truth:
        raise ValueError(f"no MME question files found under {mme_dir}")
    return truth


def truth_from_questions(questions: list[dict], path: str) -> dict[tuple[str, str, str], tuple[str, str, str]]:
    truth = {}
    for i, question in enumerate(questions, start=1):
        require_fields(question, ("question_id", "text", "answer"), f"{path}: question #{i}")
        subtask = question.get("category") or qid_key(question["question_id"]).split("/")[0]
        stem = _stem(question.get("image") or qid_key(question["question_id"]))
        truth[(subtask, stem, canonical_question(question["text"]))] = (
            f"{stem}.txt", canonical_question(question["text"]), str(question["answer"]).strip())
    return truth


def match_answers(answers: list[dict], truth: dict,
                  categories: dict[str, str] | None = None) -> tuple[list[MMEItem], MatchReport]:
    """One item per ground-truth question, joined to its answer by (subtask, image, question).

    ``categories`` maps question_id -> subtask (from the question file). Items come in answer
    order, then the unanswered questions (empty ``pred``) in benchmark order.
    """
    report = MatchReport(n_results=len(answers), n_annotations=len(truth))
    matched: dict[tuple[str, str, str], MMEItem] = {}
    for answer in answers:
        qid = qid_key(answer["question_id"])
        subtask = (categories or {}).get(qid) or qid.split("/")[0]
        key = (subtask, _stem(qid), canonical_question(answer.get("prompt", "")))
        if key not in truth:
            report.unknown_ids.append(f"{qid} | {key[2][:60]}")
            continue
        if key in matched:
            report.duplicate_ids.append(f"{qid} | {key[2][:60]}")
        image, question, gt = truth[key]
        matched[key] = MMEItem(subtask, image, question, gt, answer["text"])
    report.n_matched = len(matched)
    items = list(matched.values())
    for key, (image, question, gt) in truth.items():
        if key not in matched:
            report.missing_ids.append(f"{key[0]}/{key[1]} | {key[2][:60]}")
            items.append(MMEItem(key[0], image, question, gt, ""))
    return items, report


def score_items(items: list[MMEItem]) -> dict:
    """acc, acc+ and score per subtask; perception / cognition totals."""
    by_subtask: dict[str, dict[str, list[bool]]] = {}  # subtask -> image -> [correct...]
    for item in items:
        gt = item.gt.lower()
        if gt not in ("yes", "no"):
            raise ValueError(f"MME ground truth must be yes/no, got {item.gt!r} for {item.subtask}/{item.image}")
        correct = parse_pred(item.pred) == gt
        by_subtask.setdefault(item.subtask, {}).setdefault(item.image, []).append(correct)

    subtasks, warnings = {}, []
    for subtask, images in by_subtask.items():
        n_questions = sum(len(v) for v in images.values())
        n_correct = sum(sum(v) for v in images.values())
        n_images_right = sum(all(v) for v in images.values())
        odd = [name for name, v in images.items() if len(v) != 2]
        if odd:
            warnings.append(f"{subtask}: {len(odd)} images do not have exactly 2 questions (e.g. {odd[0]})")
        acc, acc_plus = percent(n_correct, n_questions), percent(n_images_right, len(images))
        subtasks[subtask] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
                             "n_questions": n_questions, "n_images": len(images)}

    def total(names: tuple[str, ...]) -> dict:
        present = [name for name in names if name in subtasks]
        absent = [name for name in names if name not in subtasks]
        if present and absent:
            warnings.append(f"total over {len(present)}/{len(names)} subtasks; absent: {absent}")
        return {"total": sum(subtasks[name]["score"] for name in present),
                **{name: subtasks[name]["score"] for name in present}}

    metrics = {"perception": total(PERCEPTION), "cognition": total(COGNITION), "subtasks": subtasks}
    others = sorted(set(subtasks) - set(PERCEPTION) - set(COGNITION))
    if others:
        warnings.append(f"subtasks outside perception/cognition (not in the totals): {others}")
    if warnings:
        metrics["warnings"] = warnings
    return metrics


def _clean_field(text: str) -> str:
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def write_eval_tool(items: list[MMEItem], out_dir: str) -> list[str]:
    """Write ``<subtask>.txt`` files for MME's calculation.py; returns the paths.

    Lines are ``<name>.txt<TAB>question<TAB>gt<TAB>answer``; an image's questions are adjacent
    (calculation.py pairs consecutive lines), images in order of first appearance in ``items``.
    """
    os.makedirs(out_dir, exist_ok=True)
    by_subtask: dict[str, dict[str, list[MMEItem]]] = {}
    for item in items:
        by_subtask.setdefault(item.subtask, {}).setdefault(item.image, []).append(item)
    paths = []
    for subtask, images in by_subtask.items():
        path = os.path.join(out_dir, f"{subtask}.txt")
        with atomic_write(path) as f:  # a failure keeps the previous file (and never leaves half of one)
            for group in images.values():  # calculation.py pairs consecutive lines
                for item in group:
                    fields = (item.image, _clean_field(item.question), item.gt, _clean_field(item.pred))
                    f.write("\t".join(fields) + "\n")
        paths.append(path)
    return paths


def read_eval_tool(results_dir: str) -> list[MMEItem]:
    """Items from a folder of ``<subtask>.txt`` files (image, question, gt, prediction)."""
    require_dir(results_dir, "MME results")
    items = []
    for name in sorted(os.listdir(results_dir)):
        if not name.endswith(".txt"):
            continue
        for image, question, gt, pred in tab_rows(os.path.join(results_dir, name), 4, "4 tab-separated fields"):
            items.append(MMEItem(name[:-4], image, question, gt.strip(), pred))
    return items


def evaluate(result_file: str, mme_dir: str | None = None, question_file: str | None = None,
             eval_tool_dir: str | None = None) -> dict:
    questions = read_jsonl(question_file, role="MME question file") if question_file else []
    categories = {qid_key(q["question_id"]): q["category"] for q in questions if "category" in q}
    if mme_dir:
        truth = load_ground_truth(mme_dir)
    elif questions:
        truth = truth_from_questions(questions, question_file)
    else:
        raise ValueError("MME needs ground truth: pass --mme-dir, or a --question-file with 'answer' fields")
    items, report = match_answers(load_answers(result_file), truth, categories)
    metrics = score_items(items)
    metrics["partial"] = report.partial
    metrics["report"] = report.to_dict()
    if eval_tool_dir:
        metrics["eval_tool_files"] = write_eval_tool(items, eval_tool_dir)
    return metrics


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="MME perception / cognition scores (acc + acc+ per subtask).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--result-file", help="answers jsonl written by the eval runner")
    source.add_argument("--results-dir", help="score an existing eval_tool folder of <subtask>.txt files")
    parser.add_argument("--mme-dir", help="MME_Benchmark_release_version (ground truth)")
    parser.add_argument("--question-file", help="question jsonl (category; 'answer' if no --mme-dir)")
    parser.add_argument("--eval-tool-dir", help="also write <subtask>.txt files for MME's calculation.py here")
    parser.add_argument("--output-json", default=None, help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    if args.results_dir:
        metrics = score_items(read_eval_tool(args.results_dir))
    else:
        metrics = evaluate(args.result_file, args.mme_dir, args.question_file, args.eval_tool_dir)
    emit(metrics, args.output_json)
    return metrics


if __name__ == "__main__":
    sys.exit(exit_code(main(sys.argv[1:])))
