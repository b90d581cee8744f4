"""POPE (COCO adversarial / popular / random): accuracy, precision, recall, F1, yes-ratio.

Inputs
  annotation dir  ``coco_pope_<category>.json`` files, each one JSON object per line
                  with ``question_id``, ``image``, ``text`` (the question), ``label`` (yes/no)
  question file   LLaVA's ``llava_pope_test.jsonl``: ``question_id`` (unique over all
                  categories), ``image``, ``text``, ``category``
  result file     answers jsonl

Answer parsing is LLaVA's ``eval_pope`` (haotian-liu/LLaVA ``llava/eval/eval_pope.py``, as in
Theia-4869/FasterVLM): keep the text before the first ``.``, drop commas, split on single spaces
(not on newlines); the answer is "no" if one of the words is exactly ``No``, ``no`` or ``not``,
otherwise "yes" (so an empty or off-topic answer, "NO", "Not sure" and "No\nIt is" are yes).

Metrics per category, "yes" the positive class: accuracy (TP+TN)/all, precision TP/(TP+FP),
recall TP/(TP+FN), F1, yes-ratio = share of "yes" predictions; ``average`` is their mean over the
categories (FasterVLM prints the mean F1 as "Average F1 score").

Matching. LLaVA looked each answer's category up in the question file and zipped a category's
answers, in answers-file order, with the label lines of ``coco_pope_<category>.json`` by position.
So an unanswered question shifted every later label, a repeated answer was scored twice, and an
answer id outside the question file raised KeyError. Here labels are joined to questions by
(image, question text) within a category, and each answer to its question by id:

* unanswered questions are left out (LLaVA, too, scored only the answers present): ``partial`` is
  true and the coverage line says how many;
* ids not in the question file are listed as unknown and ignored;
* an id answered twice keeps its last answer and is listed as a duplicate.

Joining by position, as LLaVA, is used only when a category's questions carry no matching
(image, question) keys and the counts agree, and the output says so.

Undefined ratios: with no "yes" prediction precision is 0/0, with no "yes" label
recall is 0/0; both are reported as 0 and listed under ``undefined``. LLaVA's
script raised ZeroDivisionError there.
"""

from __future__ import annotations

import os
import sys

from .common import (MatchReport, index_by_id, load_answers, numbered_keys, percent, read_jsonl, require_dir,
                     require_fields)
from .report import base_parser, emit, exit_code

CATEGORIES = ("adversarial", "popular", "random")
_PREFIX, _SUFFIX = "coco_pope_", ".json"


def parse_yes_no(text: str) -> str:
    """LLaVA's POPE answer rule: 'no' if the first sentence has the word No/no/not, else 'yes'."""
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if ("No" in words or "no" in words or "not" in words) else "yes"


def binary_metrics(preds: list[str], labels: list[str]) -> dict:
    """Metrics of yes/no predictions against yes/no labels ("yes" is the positive class)."""
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    tp = sum(p == "yes" and l == "yes" for p, l in zip(preds, labels))
    fp = sum(p == "yes" and l == "no" for p, l in zip(preds, labels))
    tn = sum(p == "no" and l == "no" for p, l in zip(preds, labels))
    fn = sum(p == "no" and l == "yes" for p, l in zip(preds, labels))
    n = len(preds)
    undefined = []
    if tp + fp == 0:
        undefined.append("precision (no 'yes' predictions)")
    if tp + fn == 0:
        undefined.append("recall (no 'yes' labels)")
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "TP": tp, "FP": fp, "TN": tn, "FN": fn,
        "accuracy": percent(tp + tn, n),
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": percent(tp + fp, n),
        "undefined": undefined,
    }


def llava_ratios(m: dict) -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio of :func:`binary_metrics` output as fractions, with LLaVA's
    float arithmetic (so its printed values are reproduced digit for digit); 0.0 where LLaVA divided by zero."""
    tp, fp, tn, fn = m["TP"], m["FP"], m["TN"], m["FN"]
    precision = float(tp) / float(tp + fp) if tp + fp else 0.0
    recall = float(tp) / float(tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = tp + tn + fp + fn
    return {
        "accuracy": (tp + tn) / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else 0.0,
    }


def label_categories(annotation_dir: str) -> list[str]:
    """Sorted ``<category>`` names of the ``coco_pope_<category>.json`` files (other files are ignored)."""
    require_dir(annotation_dir, "POPE annotation")
    return sorted(name[len(_PREFIX):-len(_SUFFIX)] for name in os.listdir(annotation_dir)
                  if name.startswith(_PREFIX) and name.endswith(_SUFFIX))


def load_labels(annotation_dir: str) -> dict[str, list[dict]]:
    """category -> the label records of ``coco_pope_<category>.json`` (file order)."""
    labels = {}
    for category in label_categories(annotation_dir):
        path = os.path.join(annotation_dir, f"{_PREFIX}{category}{_SUFFIX}")
        records = read_jsonl(path, role="POPE annotation file")
        for i, record in enumerate(records, start=1):
            require_fields(record, ("label",), f"{path}: record #{i}")
            if record["label"] not in ("yes", "no"):
                raise ValueError(f"{path}: record #{i}: label must be 'yes' or 'no', got {record['label']!r}")
        labels[category] = records
    if not labels:
        raise FileNotFoundError(f"no {_PREFIX}<category>{_SUFFIX} files in {annotation_dir}")
    return labels


def _question_key(record: dict) -> tuple[str, str] | None:
    if "image" not in record or "text" not in record:
        return None
    return record["image"], record["text"].split("\n")[0].strip()


def label_questions(questions: list[dict],
                    labels: dict[str, list[dict]]) -> tuple[dict[str, tuple[str, str]], list[str]]:
    """answer key -> (category, label), plus notes on how each category was joined.

    The answer key is the question id, with ``#<repeat>`` for the 2nd, 3rd, ... question that reuses an id
    (:func:`.common.numbered_keys`), so repeated ids are separate questions, as the eval runner asks them.
    """
    by_category: dict[str, list[dict]] = {}
    for key, question in zip(numbered_keys(q["question_id"] for q in questions), questions):
        by_category.setdefault(question["category"], []).append(dict(question, _key=key))
    labelled: dict[str, tuple[str, str]] = {}
    notes = []
    for category, records in labels.items():
        cat_questions = by_category.get(category, [])
        keyed = {_question_key(r): r["label"] for r in records if _question_key(r) is not None}
        hits = [q for q in cat_questions if _question_key(q) in keyed]
        if hits:
            for question in hits:
                labelled[question["_key"]] = (category, keyed[_question_key(question)])
            if len(hits) < len(cat_questions):
                notes.append(f"{category}: {len(cat_questions) - len(hits)} questions have no label "
                             "with the same image and question")
        elif cat_questions and len(cat_questions) == len(records):
            notes.append(f"{category}: no (image, question) keys matched; joined by position as LLaVA does")
            for question, record in zip(cat_questions, records):
                labelled[question["_key"]] = (category, record["label"])
        elif cat_questions:
            raise ValueError(
                f"POPE category {category!r}: {len(cat_questions)} questions and {len(records)} labels "
                "share no (image, question) key and differ in number; cannot join them")
    unlabelled = sorted(set(by_category) - set(labels))
    if unlabelled:
        notes.append(f"question categories without a coco_pope_<category>.json: {unlabelled}")
    return labelled, notes


def score_pope(labelled: dict[str, tuple[str, str]], answers: list[dict], categories: list[str] | None = None) -> dict:
    """Per-category and averaged metrics; ``labelled`` is answer key -> (category, label).

    ``categories`` are those of the annotation dir (default: the labelled ones). The average is meant over all
    of them: a category without a single answer is left out of it, and the average is marked partial
    (``average.missing_categories``, ``partial_reasons``) instead of silently covering fewer categories.
    """
    report = MatchReport(n_results=len(answers), n_annotations=len(labelled))
    results = index_by_id(answers, report)
    report.unknown_ids = [key for key in results if key not in labelled]
    per_category: dict[str, tuple[list[str], list[str]]] = {}
    for key, (category, label) in labelled.items():
        if key not in results:
            report.missing_ids.append(key)
            continue
        preds, gold = per_category.setdefault(category, ([], []))
        preds.append(parse_yes_no(results[key]["text"]))
        gold.append(label)
    report.n_matched = sum(len(preds) for preds, _ in per_category.values())

    metrics: dict = {}
    expected = list(categories) if categories is not None else sorted({c for c, _ in labelled.values()})
    expected += sorted(set(per_category) - set(expected))
    ordered = [c for c in CATEGORIES if c in expected] + sorted(set(expected) - set(CATEGORIES))
    present = [c for c in ordered if c in per_category]
    absent = [c for c in ordered if c not in per_category]
    for category in present:
        metrics[category] = binary_metrics(*per_category[category])
    reasons = []
    if present:
        # LLaVA-style tables quote the mean over the three categories.
        metrics["average"] = {
            name: sum(metrics[c][name] for c in present) / len(present)
            for name in ("accuracy", "precision", "recall", "f1", "yes_ratio")
        }
        metrics["average"]["categories"] = present
        if absent:
            metrics["average"]["partial"] = True
            metrics["average"]["missing_categories"] = absent
            reasons.append(f"average over {len(present)}/{len(ordered)} categories, no answers for {', '.join(absent)}")
    metrics["partial"] = report.partial or bool(reasons)
    if reasons:
        metrics["partial_reasons"] = reasons
    metrics["report"] = report.to_dict()
    return metrics


def evaluate(result_file: str, annotation_dir: str, question_file: str) -> dict:
    labels = load_labels(annotation_dir)
    questions = read_jsonl(question_file, role="POPE question file")
    for i, question in enumerate(questions, start=1):
        require_fields(question, ("question_id", "category"), f"{question_file}: question #{i}")
    labelled, notes = label_questions(questions, labels)
    metrics = score_pope(labelled, load_answers(result_file), list(labels))
    if notes:
        metrics["warnings"] = notes
    return metrics


def main(argv=None) -> dict:
    parser = base_parser("POPE accuracy / precision / recall / F1 / yes-ratio per category.")
    parser.add_argument("--annotation-dir", required=True, help="directory with coco_pope_<category>.json")
    parser.add_argument("--question-file", required=True, help="llava_pope_test.jsonl (carries the category)")
    args = parser.parse_args(argv)
    metrics = evaluate(args.result_file, args.annotation_dir, args.question_file)
    emit(metrics, args.output_json)
    return metrics


if __name__ == "__main__":
    sys.exit(exit_code(main(sys.argv[1:])))
