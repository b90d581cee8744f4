"""The original LLaVA converters (scripts/convert_*.py), run as a researcher's eval script runs them.

Each converter runs as a subprocess with the flags and working directory of LLaVA's scripts/v1_5/eval/*.sh on small
hand-made data; the files it writes are compared with hand-written expected contents, derived from the original
scripts in haotian-liu/LLaVA (scripts/convert_vqav2_for_submission.py, convert_gqa_for_eval.py,
convert_vizwiz_for_submission.py, convert_mmbench_for_submission.py, convert_mmvet_for_eval.py, and
playground/data/eval/MME/convert_answer_to_mme.py). JSON files are also compared as text: the original writes them
with ``json.dump``'s default separators (and indent 2 for MM-Vet).
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(script, args, cwd):
    """Run scripts/<script> in ``cwd``; returns stdout (fails the test on a non-zero exit)."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_vqav2(tmp_path):
    # LLaVA's vqav2.sh, from the repo root: python scripts/convert_vqav2_for_submission.py --split $SPLIT --ckpt $CKPT
    root = tmp_path / "playground" / "data" / "eval" / "vqav2"
    split, ckpt = "llava_vqav2_mscoco_test-dev2015", "llava-v1.5-13b"
    write_jsonl(root / "llava_vqav2_mscoco_test2015.jsonl",
                [{"question_id": q, "image": f"{q}.jpg"} for q in (10, 11, 12)])
    write_jsonl(root / f"{split}.jsonl", [{"question_id": q} for q in (10, 11)])
    write_jsonl(root / "answers" / split / ckpt / "merge.jsonl", [
        {"question_id": 10, "text": "Two"}, {"question_id": 11, "text": "Yes."}, {"question_id": 11, "text": "No."}])
    out = run("convert_vqav2_for_submission.py", ["--split", split, "--ckpt", ckpt], cwd=tmp_path)
    upload = root / "answers_upload" / split / f"{ckpt}.json"
    assert upload.read_text().rstrip("\n") == (
        '[{"question_id": 10, "answer": "2"}, {"question_id": 11, "answer": "no"}, {"question_id": 12, "answer": ""}]')
    assert "total results: 3, total split: 3" in out
    assert "coverage: 2/2 (100.0%)" in out             # both asked test-dev questions answered
    assert "WARNING" in out and "n_empty: 1" in out    # the repeated id 11 is reported


def test_vqav2_dir_flag_and_partial_run(tmp_path):
    root = tmp_path / "elsewhere"
    write_jsonl(root / "llava_vqav2_mscoco_test2015.jsonl", [{"question_id": q} for q in (1, 2)])
    write_jsonl(root / "answers" / "s" / "c" / "merge.jsonl", [{"question_id": 2, "text": "A red one"}])
    out = run("convert_vqav2_for_submission.py", ["--dir", str(root), "--split", "s", "--ckpt", "c"], cwd=tmp_path)
    assert json.loads((root / "answers_upload" / "s" / "c.json").read_text()) == [
        {"question_id": 1, "answer": ""}, {"question_id": 2, "answer": "red 1"}]  # "one" -> "1"
    assert "partial: True" in out


def test_gqa(tmp_path):
    # gqa.sh: python scripts/convert_gqa_for_eval.py --src $output_file --dst $GQADIR/testdev_balanced_predictions.json
    src = write_jsonl(tmp_path / "merge.jsonl", [
        {"question_id": "201", "text": "Yes."}, {"question_id": "202", "text": "Left"},
        {"question_id": "203", "text": "U.S.."}])
    dst = tmp_path / "data" / "testdev_balanced_predictions.json"
    dst.parent.mkdir()
    run("convert_gqa_for_eval.py", ["--src", str(src), "--dst", str(dst)], cwd=tmp_path)
    assert dst.read_text().rstrip("\n") == (
        '[{"questionId": "201", "prediction": "yes"}, {"questionId": "202", "prediction": "left"}, '
        '{"questionId": "203", "prediction": "u.s"}]')


def test_vizwiz(tmp_path):
    root = tmp_path / "playground" / "data" / "eval" / "vizwiz"
    write_jsonl(root / "llava_test.jsonl", [
        {"question_id": 0, "image": "VizWiz_test_00000000.jpg", "text": "What is this?"},
        {"question_id": 1, "image": "VizWiz_test_00000001.jpg", "text": "What color?"}])
    write_jsonl(root / "answers" / "llava-v1.5-13b.jsonl", [
        {"question_id": 1, "text": "Dark-blue."}, {"question_id": 0, "text": "Unanswerable"}])
    run("convert_vizwiz_for_submission.py", [
        "--annotation-file", "./playground/data/eval/vizwiz/llava_test.jsonl",
        "--result-file", "./playground/data/eval/vizwiz/answers/llava-v1.5-13b.jsonl",
        "--result-upload-file", "./playground/data/eval/vizwiz/answers_upload/llava-v1.5-13b.json"], cwd=tmp_path)
    written = (root / "answers_upload" / "llava-v1.5-13b.json").read_text()
    assert written.rstrip("\n") == ('[{"image": "VizWiz_test_00000000.jpg", "answer": "unanswerable"}, '
                                    '{"image": "VizWiz_test_00000001.jpg", "answer": "dark blue"}]')


def test_mmvet(tmp_path):
    root = tmp_path / "mm-vet"
    src = write_jsonl(root / "answers" / "llava-v1.5-13b.jsonl", [
        {"question_id": 0, "text": "A cat.\nIt sits."}, {"question_id": 1, "text": "42"}])
    (root / "results").mkdir()
    out = run("convert_mmvet_for_eval.py", ["--src", str(src), "--dst", str(root / "results" / "llava-v1.5-13b.json")],
              cwd=tmp_path)
    assert (root / "results" / "llava-v1.5-13b.json").read_text().rstrip("\n") == (
        '{\n  "v1_0": "A cat.\\nIt sits.",\n  "v1_1": "42"\n}')
    assert "partial" not in out          # no mm-vet.json next to answers/: nothing to check against

    (root / "mm-vet.json").write_text(json.dumps({"v1_0": {}, "v1_1": {}, "v1_2": {}}))
    out = run("convert_mmvet_for_eval.py", ["--src", str(src), "--dst", str(root / "results" / "x.json")], cwd=tmp_path)
    assert "partial: True" in out and "v1_2" in out


def test_mmvet_ids_duplicates_and_unknown(tmp_path):
    from llava.eval.scoring import mmvet

    answers = [{"question_id": 0, "text": "first"}, {"question_id": "v1_0", "text": "second"},  # same id, last wins
               {"question_id": 5, "text": "x"}]
    entries, report = mmvet.submission(answers, known_ids=["v1_0", "v1_1"])
    assert entries == {"v1_0": "second", "v1_5": "x"}
    assert report["duplicate_ids"] == ["v1_0"] and report["unknown_ids"] == ["v1_5"]
    assert report["missing_ids"] == ["v1_1"] and (report["n_annotations"], report["n_matched"]) == (2, 1)


MMBENCH_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "source", "l2-category",
                   "comment", "split", "image"]


def test_mmbench(tmp_path):
    from openpyxl import load_workbook

    root = tmp_path / "playground" / "data" / "eval" / "mmbench"
    root.mkdir(parents=True)
    split = "mmbench_dev_20230712"
    with open(root / f"{split}.tsv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(MMBENCH_COLUMNS)
        writer.writerow([1, "Which animal?", "Look.", "cat", "dog", "bird", "", "B", "c1", "s", "l2", "", "dev",
                         "aGk="])
        writer.writerow([1000001, "Which animal?", "Look.", "dog", "bird", "cat", "", "A", "c1", "s", "l2", "", "dev",
                         "aGk="])
        writer.writerow([2, "How many?", "", "1", "2", "", "", "A", "c2", "s", "l2", "", "dev", "aGk="])
    write_jsonl(root / "answers" / split / "llava-v1.5-13b.jsonl", [
        {"question_id": 1, "text": "B"}, {"question_id": 1000001, "text": "A"}])
    # mmbench_cn.sh creates a different folder than the one it uploads to; the upload folder is made here.
    out = run("convert_mmbench_for_submission.py", [
        "--annotation-file", f"./playground/data/eval/mmbench/{split}.tsv",
        "--result-dir", f"./playground/data/eval/mmbench/answers/{split}",
        "--upload-dir", f"./playground/data/eval/mmbench/answers_upload/{split}",
        "--experiment", "llava-v1.5-13b"], cwd=tmp_path)
    book = load_workbook(root / "answers_upload" / split / "llava-v1.5-13b.xlsx")
    assert book.sheetnames == ["Sheet1"]
    values = list(book.active.values)
    assert values == [
        ("index", "question", "A", "B", "C", "D", "prediction", "answer", "split"),
        (1, "Which animal?", "cat", "dog", "bird", None, "B", "B", "dev"),
        (1000001, "Which animal?", "dog", "bird", "cat", None, "A", "A", "dev"),
        (2, "How many?", "1", "2", None, None, None, "A", "dev"),
    ]
    # question 1 right in both rotations, question 2 unanswered: 1 of 2
    assert "accuracy: 50.00" in out and "partial: True" in out


LLAVA = "\nAnswer the question using a single word or phrase."


def test_mme(tmp_path):
    # mme.sh: cd ./playground/data/eval/MME; python convert_answer_to_mme.py --experiment llava-v1.5-13b
    mme = tmp_path / "MME"
    bench = mme / "MME_Benchmark_release_version"
    (bench / "count").mkdir(parents=True)
    (bench / "count" / "000000006040.jpg").write_bytes(b"")
    (bench / "count" / "000000006040.txt").write_text(
        "Are there two trains in the image? Please answer yes or no.\tYes\n"
        "Are there three trains in the image? Please answer yes or no.\tNo\n")
    (bench / "artwork" / "images").mkdir(parents=True)
    (bench / "artwork" / "questions_answers_YN").mkdir()
    (bench / "artwork" / "images" / "10002.jpg").write_bytes(b"")
    (bench / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Does this artwork exist in the form of painting? Please answer yes or no.\tYes\n"
        "Does this artwork exist in the form of glassware?  Please answer yes or no.\tNo\n")
    write_jsonl(mme / "answers" / "llava-v1.5-13b.jsonl", [
        {"question_id": "count/000000006040.jpg", "prompt": "Are there two trains in the image?" + LLAVA,
         "text": "Yes"},
        {"question_id": "count/000000006040.jpg",
         "prompt": "Are there three trains in the image? Please answer yes or no." + LLAVA, "text": "No"},
        {"question_id": "artwork/images/10002.jpg",
         "prompt": "Does this artwork exist in the form of painting?" + LLAVA, "text": "No"},
        {"question_id": "artwork/images/10002.jpg",
         "prompt": "Does this artwork exist in the form of glassware?" + LLAVA, "text": "No"},
    ])
    out = run("convert_answer_to_mme.py", ["--experiment", "llava-v1.5-13b"], cwd=mme)
    results = mme / "eval_tool" / "answers" / "llava-v1.5-13b"
    assert sorted(p.name for p in results.iterdir()) == ["artwork.txt", "count.txt"]
    assert (results / "count.txt").read_text() == (
        "000000006040.txt\tAre there two trains in the image? Please answer yes or no.\tYes\tYes\n"
        "000000006040.txt\tAre there three trains in the image? Please answer yes or no.\tNo\tNo\n")
    assert (results / "artwork.txt").read_text() == (
        "10002.txt\tDoes this artwork exist in the form of painting? Please answer yes or no.\tYes\tNo\n"
        "10002.txt\tDoes this artwork exist in the form of glassware?  Please answer yes or no.\tNo\tNo\n")
    # count: 200; artwork: acc 1/2, acc+ 0 -> 50
    assert "total: 250.00" in out and "partial: False" in out


def test_mme_experiment_may_be_our_runs_path(tmp_path):
    # our runner writes MME/answers/<ckpt>/<method>/n_<tokens>.jsonl: that path is a valid --experiment
    mme = tmp_path / "MME"
    (mme / "MME_Benchmark_release_version" / "color").mkdir(parents=True)
    (mme / "MME_Benchmark_release_version" / "color" / "1.txt").write_text(
        "Is it red? Please answer yes or no.\tYes\nIs it blue? Please answer yes or no.\tNo\n")
    write_jsonl(mme / "answers" / "llava-v1.5-7b" / "fastervlm" / "n_144.jsonl", [
        {"question_id": "color/1.jpg", "prompt": "Is it red?" + LLAVA, "text": "yes"}])
    out = run("convert_answer_to_mme.py", ["--experiment", "llava-v1.5-7b/fastervlm/n_144"], cwd=mme)
    written = mme / "eval_tool" / "answers" / "llava-v1.5-7b" / "fastervlm" / "n_144" / "color.txt"
    assert written.read_text() == ("1.txt\tIs it red? Please answer yes or no.\tYes\tyes\n"
                                   "1.txt\tIs it blue? Please answer yes or no.\tNo\t\n")
    assert "partial: True" in out


def test_nothing_scored_exits_non_zero(tmp_path):
    write_jsonl(tmp_path / "llava_test.jsonl", [{"question_id": 0, "image": "a.jpg"}])
    write_jsonl(tmp_path / "answers.jsonl", [{"question_id": 5, "text": "x"}])   # matches no question
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "convert_vizwiz_for_submission.py"),
                           "--annotation-file", "llava_test.jsonl", "--result-file", "answers.jsonl",
                           "--result-upload-file", "up.json"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and "nothing was scored" in proc.stderr
    assert "coverage: 0/1" in proc.stdout


def test_mme_outside_the_mme_folder(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "convert_answer_to_mme.py"), "--experiment", "x"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "run this from the MME folder" in proc.stderr


@pytest.mark.parametrize("script", ["convert_vqav2_for_submission.py", "convert_gqa_for_eval.py",
                                    "convert_vizwiz_for_submission.py", "convert_mmbench_for_submission.py",
                                    "convert_mmvet_for_eval.py", "convert_answer_to_mme.py"])
def test_missing_answers_file_names_the_path(tmp_path, script):
    args = {"convert_vqav2_for_submission.py": ["--split", "s", "--ckpt", "absent"],
            "convert_gqa_for_eval.py": ["--src", "absent.jsonl", "--dst", "out.json"],
            "convert_vizwiz_for_submission.py": ["--annotation-file", "absent.jsonl", "--result-file", "absent.jsonl",
                                                 "--result-upload-file", "out.json"],
            "convert_mmbench_for_submission.py": ["--annotation-file", "absent.tsv", "--result-dir", ".",
                                                  "--upload-dir", ".", "--experiment", "absent"],
            "convert_mmvet_for_eval.py": ["--src", "absent.jsonl", "--dst", "out.json"],
            "convert_answer_to_mme.py": ["--experiment", "absent"]}[script]
    if script == "convert_answer_to_mme.py":  # past the benchmark folder check
        (tmp_path / "MME_Benchmark_release_version" / "color").mkdir(parents=True)
        (tmp_path / "MME_Benchmark_release_version" / "color" / "1.txt").write_text("Q?\tYes\n")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "not found" in proc.stderr and "absent" in proc.stderr
