"""The eval runner (`llava.eval.model_vqa_loader`) and the lmms-eval plugin on transformers-native checkpoint
directories (tiny random LLaVA-OneVision-hf and Qwen2.5-VL, written as tests/test_native_loader.py writes them).

Sources of truth: transformers' own unmodified model read from the directory, asked one question at a time with
transformers' processor on a chat-template prompt written out here by hand (full budget; the visual tokens are the
processor's own placeholders); `apply_pruning` put by hand on a fresh instance, batch 1 (pruned answers and the
handle's kept counts); for the plugin, lmms-eval's own CLI on the local task easyvqa_500 against the runner on the
same questions.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from llava.eval import model_vqa_loader
from llava.integrations.transformers import apply_pruning
from tests.conftest import pil_image
from tests.test_native_loader import FAMILIES, _transformers_processor, write_native_dir

NEW_TOKENS = 6
SUFFIX = "\nAnswer the question using a single word or phrase."  # a benchmark's suffix, kept in the question file
# (question, image size): texts and images of different lengths, so a batch of three needs left padding
QUESTIONS = [("What is shown?", (40, 30)), ("Which colour is the large shape in the middle?", (24, 36)),
             ("Is it round?", (32, 32))]


@pytest.fixture(scope="module", params=["onevision", "qwen2_5_vl"])
def family(request, tmp_path_factory, tok_dir):
    """(name, directory) of a native family."""
    return request.param, write_native_dir(tmp_path_factory.mktemp(request.param), tok_dir, request.param)


@pytest.fixture(scope="module")
def question_file(tmp_path_factory):
    """(question file, image folder): LLaVA's jsonl with the suffix in each `text`."""
    root = tmp_path_factory.mktemp("native-questions")
    lines = []
    for i, (text, (w, h)) in enumerate(QUESTIONS):
        pil_image(w, h, seed=i).save(root / f"{i}.png")
        lines.append(json.dumps({"question_id": f"q{i}", "image": f"{i}.png", "text": text + SUFFIX}))
    (root / "q.jsonl").write_text("\n".join(lines) + "\n")
    return root / "q.jsonl", root


def hand_prompt(name: str, text: str) -> str:
    """The family's chat template for one image and `text`, written out by hand (tests/test_native_loader.py's)."""
    return f"<|im_start|>user\n{FAMILIES[name].image_text}{text}<|im_end|>\n<|im_start|>assistant\n"


def reference(family, image_folder, pruning: tuple | None = None) -> list[tuple[str, int]]:
    """(answer, visual tokens) per question, one at a time, by a fresh transformers model: unmodified (tokens = the
    processor's image placeholders) or with `apply_pruning(model, *pruning)` by hand (tokens = the handle's count)."""
    name, path = family
    model = FAMILIES[name].model_class.from_pretrained(path).eval()
    processor = _transformers_processor(name, path)
    handle = apply_pruning(model, *pruning[:2], **dict(pruning[2:])) if pruning else None
    out = []
    for i, (text, _) in enumerate(QUESTIONS):
        image = Image.open(image_folder / f"{i}.png").convert("RGB")
        batch = processor(text=[hand_prompt(name, text + SUFFIX)], images=[image], return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**batch, max_new_tokens=NEW_TOKENS, do_sample=False)
        answer = processor.tokenizer.decode(ids[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        placeholders = int((batch["input_ids"] == model.config.image_token_id).sum())
        out.append((answer, handle.last_v_token_num if handle else placeholders))
    return out


@pytest.fixture(scope="module")
def full(family, question_file) -> list[tuple[str, int]]:
    """The unmodified model's answers and visual tokens per question (`reference` at full budget)."""
    return reference(family, question_file[1])


def run_loader(path, question_file, answers, *flags) -> list[dict]:
    """model_vqa_loader on the native directory: the answer records in question order."""
    qfile, folder = question_file
    model_vqa_loader.main(["--model-path", str(path), "--question-file", str(qfile), "--image-folder", str(folder),
                           "--answers-file", str(answers), "--temperature", "0", "--max_new_tokens",
                           str(NEW_TOKENS), "--device", "cpu", *flags])
    records = [json.loads(line) for line in Path(answers).read_text().splitlines()]
    return sorted(records, key=lambda r: r["question_id"])


def test_full_budget_equals_transformers_generate(family, question_file, full, tmp_path):
    expected = full
    assert len({a for a, _ in expected}) > 1  # different answers: a mix-up of questions would show
    records = run_loader(family[1], question_file, tmp_path / "a.jsonl", "--batch-size", "3")
    assert [(r["text"], r["v_token_num"]) for r in records] == expected
    assert [r["prompt"] for r in records] == [t + SUFFIX for t, _ in QUESTIONS]
    assert {r["conv_mode"] for r in records} == {"chat_template"}


@pytest.mark.parametrize("method, budget", [("uniform", 4), ("random", 3), ("fastv", 3)])
def test_pruned_equals_apply_pruning_by_hand_at_batch_1_and_3(family, question_file, full, tmp_path, method,
                                                               budget):
    """fastv (K = 1): its batch of images of different sizes drops different numbers of tokens per sample, which a
    single FastV generate refuses; the runner then asks sample by sample."""
    expected = reference(family, question_file[1], (method, budget, ("llm_layer", 1)))
    assert all(kept < n for (_, kept), (_, n) in zip(expected, full))  # the budget does prune
    flags = ("--pruning-method", method, "--visual-token-num", str(budget), "--fastv-layer", "1")
    one = run_loader(family[1], question_file, tmp_path / "b1.jsonl", *flags, "--batch-size", "1")
    three = run_loader(family[1], question_file, tmp_path / "b3.jsonl", *flags, "--batch-size", "3")
    assert [(r["text"], r["v_token_num"]) for r in one] == expected
    assert [(r["text"], r["v_token_num"]) for r in three] == expected


def test_resume_keeps_answers_and_refuses_an_edited_chat_template(tok_dir, question_file, tmp_path):
    """The same run resumes (the first answer is kept as written, the other two are added); the chat template is
    part of the run identity: after it changes, the file is not resumed."""
    path = write_native_dir(tmp_path / "ov", tok_dir, "onevision")
    answers = tmp_path / "a.jsonl"
    qfile, folder = question_file
    first = tmp_path / "first.jsonl"
    first.write_text(qfile.read_text().splitlines(keepends=True)[0])
    (written,) = run_loader(path, (first, folder), answers)
    resumed = run_loader(path, question_file, answers)
    assert [r["question_id"] for r in resumed] == ["q0", "q1", "q2"] and resumed[0] == written
    template = path / "chat_template.jinja"
    template.write_text(template.read_text().replace("<|im_start|>assistant\n", "<|im_start|>assistant\n\n"))
    with pytest.raises(ValueError, match="processor"):
        run_loader(path, question_file, answers)


# --------------------------------------------------------------------------- lmms-eval


REPO = Path(__file__).resolve().parents[1]
TASKS = REPO / "llava" / "integrations" / "lmms_eval" / "tasks"
N_LMMS = 4
LMMS_TOKENS = 8  # easyvqa_500.yaml's max_new_tokens


def _lmms_env(tmp: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               HF_DATASETS_CACHE=str(tmp / "datasets-cache"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in ("lmms_eval", "easy_vqa")),
                    reason="needs lmms-eval (the [lmms] extra, .ci/run) and easy-vqa (the tiny extra)")
def test_lmms_eval_plugin_answers_as_the_runner(tok_dir, tmp_path):
    """lmms-eval's CLI, batch 2, uniform 4 per crop, on the first N_LMMS questions of easyvqa_500, against the
    runner (batch 1) on the same questions and images."""
    import easy_vqa

    path = write_native_dir(tmp_path / "ov", tok_dir, "onevision")
    first = tmp_path / "first.jsonl"
    task_file = TASKS / "easyvqa_500" / "llava_easyvqa_500_test.jsonl"
    first.write_text("".join(task_file.read_text().splitlines(keepends=True)[:N_LMMS]))
    folder = Path(easy_vqa.get_test_image_paths()[0]).parent
    model_vqa_loader.main(["--model-path", str(path), "--question-file", str(first), "--image-folder", str(folder),
                           "--answers-file", str(tmp_path / "a.jsonl"), "--temperature", "0", "--max_new_tokens",
                           str(LMMS_TOKENS), "--device", "cpu", "--pruning-method", "uniform",
                           "--visual-token-num", "4"])
    records = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    out = tmp_path / "lmms"
    done = subprocess.run(
        [sys.executable, "-m", "lmms_eval", "--model", "fastervlm", "--model_args",
         f"pretrained={path},pruning_method=uniform,visual_token_num=4", "--tasks", "easyvqa_500",
         "--include_path", str(TASKS), "--batch_size", "2", "--limit", str(N_LMMS), "--log_samples",
         "--output_path", str(out), "--device", "cpu"],
        env=_lmms_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (samples,) = glob.glob(str(out / "*" / "*_samples_easyvqa_500.jsonl"))
    logged = sorted((json.loads(line) for line in Path(samples).read_text().splitlines()), key=lambda s: s["doc_id"])
    assert len({r["text"] for r in records}) > 1
    assert [s["filtered_resps"] for s in logged] == [r["text"] for r in records]
    assert [s["token_counts"][0]["v_token_num"] for s in logged] == [r["v_token_num"] for r in records]
