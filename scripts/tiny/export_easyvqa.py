"""Write easy-vqa's test split (from the `easy-vqa` package) in the eval loader's format:

    python scripts/tiny/export_easyvqa.py [--data-root ./playground/data/eval] [--set easyvqa|easyvqa_500 ...]

<data root>/easyvqa/images/<image id>.png                 the 1,000 test images (64 x 64 PNG, copied)
<data root>/easyvqa/llava_easyvqa_test.jsonl              all 9,673 test questions
<data root>/easyvqa_500/llava_easyvqa_500_test.jsonl      500 of them, drawn with seed 0 (the CPU sweep's subset)

--set writes only the named question files (default: both); a file whose content would not change is left alone.

One question per line: question_id (its index in the package's test list), image, text, answer, kind (shape,
color, yes/no, yes/no negated). The question is asked as it is; the tiny LLaVA's conversation template asks for
one-word answers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from llava.atomic import atomic_write  # noqa: E402
from llava.eval.scoring.easyvqa import question_kind  # noqa: E402
from llava.eval.tasks import DEFAULT_DATA_ROOT  # noqa: E402

SUBSETS = {"easyvqa": None, "easyvqa_500": 500}
SUBSET_SEED = 0


def test_records() -> list[dict]:
    try:
        import easy_vqa
    except ImportError:
        raise ImportError('easy-vqa is not installed: pip install -e ".[tiny]"') from None
    questions, answers, image_ids = easy_vqa.get_test_questions()
    return [{"question_id": i, "image": f"{image}.png", "text": q, "answer": a, "kind": question_kind(q, a)}
            for i, (q, a, image) in enumerate(zip(questions, answers, image_ids))]


def subset(records: list[dict], size: int | None, seed: int = SUBSET_SEED) -> list[dict]:
    """`size` records drawn without replacement with `seed`, in question-id order (all when size is None)."""
    if size is None:
        return records
    picked = sorted(random.Random(seed).sample(range(len(records)), size))
    return [records[i] for i in picked]


def export(data_root: str | os.PathLike = DEFAULT_DATA_ROOT, sets=tuple(SUBSETS)) -> dict[str, Path]:
    """Write the images and the question files of `sets`; returns benchmark name -> question file."""
    import easy_vqa

    unknown = [name for name in sets if name not in SUBSETS]
    if unknown:  # before anything is written
        raise ValueError(f"unknown easy-vqa set(s) {unknown}; choose from {list(SUBSETS)}")
    root = Path(data_root)
    images = root / "easyvqa" / "images"
    images.mkdir(parents=True, exist_ok=True)
    for image_id, src in sorted(easy_vqa.get_test_image_paths().items()):
        dst = images / f"{image_id}.png"
        if not dst.is_file() or dst.stat().st_size != os.path.getsize(src):
            shutil.copyfile(src, dst)
    records = test_records()
    written = {}
    for name in sets:
        path = root / name / f"llava_{name}_test.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(record) + "\n" for record in subset(records, SUBSETS[name]))
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            with atomic_write(path) as f:
                f.write(text)
        written[name] = path
    return written


def main(argv=None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT") or DEFAULT_DATA_ROOT)
    parser.add_argument("--set", dest="sets", action="append", choices=list(SUBSETS),
                        help="question set to write (repeatable; default: all)")
    args = parser.parse_args(argv)
    written = export(args.data_root, args.sets or tuple(SUBSETS))
    for name, path in written.items():
        with open(path) as f:
            print(f"{name}: {sum(1 for _ in f)} questions in {path}")
    return written


if __name__ == "__main__":
    main()
