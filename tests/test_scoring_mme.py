"""MME: answer reading, acc / acc+ per image, totals, incomplete runs, and the eval_tool layout.

Sources of truth: hand-computed pair tables, and ``calculation_oracle`` below, a short transcription of MME's
eval_tool/calculation.py (pairs consecutive lines; lower-case; "yes"/"no" as is, else "yes" / "no" found in the
first 4 characters, else "other"; acc over questions, acc+ over pairs both right; score = 100 * (acc + acc+)).
"""


import pytest

from llava.eval.scoring import mme
from llava.eval.scoring.mme import MMEItem, parse_pred, score_items
from tests.helpers_io import write_jsonl

LLAVA_SUFFIX = "\nAnswer the question using a single word or phrase."


@pytest.mark.parametrize("text, label", [
    ("Yes", "yes"), ("no", "no"), ("No.", "no"), ("Yes, there is a dog.", "yes"),
    ("nope", "no"),                # "no" within the first 4 characters
    ("The answer is yes", "other"),
    ("I don't know", "other"),
    ("eyes", "yes"),               # MME's prefix rule, kept as is
    ("YES", "yes"),
    (" yes", "yes"),               # no strip: " yes"[:4] still holds "yes"
    ("Not sure", "no"),
    ("unknown", "other"),          # "unkn" holds neither
    ("", "other"),                 # what a missing answer is written as
    ("know", "no"),
])
def test_parse_pred(text, label):
    assert parse_pred(text) == label


@pytest.fixture
def mme_dir(tmp_path):
    """A miniature MME_Benchmark_release_version with both folder layouts."""
    root = tmp_path / "MME_Benchmark_release_version"
    existence = root / "existence"
    existence.mkdir(parents=True)
    for stem, lines in {
        "0001": ["Is there a dog in this image? Please answer yes or no.\tYes",
                 "Is there a cat in this image? Please answer yes or no.\tNo"],
        "0002": ["Is there a car in this image? Please answer yes or no.\tYes",
                 "Is there a bus in this image? Please answer yes or no.\tNo"],
    }.items():
        (existence / f"{stem}.jpg").write_bytes(b"")
        (existence / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    artwork = root / "artwork"
    (artwork / "images").mkdir(parents=True)
    (artwork / "questions_answers_YN").mkdir()
    (artwork / "images" / "10.jpg").write_bytes(b"")
    # The benchmark itself has "?  Please" with two spaces in places.
    (artwork / "questions_answers_YN" / "10.txt").write_text(
        "Is this artwork created by X? Please answer yes or no.\tYes\n"
        "Is this artwork created by Y?  Please answer yes or no.\tNo\n")
    code = root / "code_reasoning"
    code.mkdir()
    (code / "0020.png").write_bytes(b"")
    (code / "0020.txt").write_text("Is a python code shown in the picture? Please answer yes or no.\tYes\n"
                                   "Is a c++ code shown in the picture? Please answer yes or no.\tNo\n")
    return str(root)


ANSWERS = [
    # existence 0001: both right; 0002: one wrong -> acc 3/4, acc+ 1/2 -> 75 + 50 = 125
    {"question_id": "existence/0001.jpg", "prompt": "Is there a dog in this image?" + LLAVA_SUFFIX, "text": "Yes"},
    {"question_id": "existence/0001.jpg", "prompt": "Is there a cat in this image?" + LLAVA_SUFFIX, "text": "No"},
    {"question_id": "existence/0002.jpg", "prompt": "Is there a car in this image?" + LLAVA_SUFFIX, "text": "Yes"},
    {"question_id": "existence/0002.jpg", "prompt": "Is there a bus in this image?" + LLAVA_SUFFIX,
     "text": "Yes, there is a bus"},
    # artwork: both right -> 100 + 100 = 200
    {"question_id": "artwork/images/10.jpg", "prompt": "Is this artwork created by X?" + LLAVA_SUFFIX, "text": "yes"},
    {"question_id": "artwork/images/10.jpg", "prompt": "Is this artwork created by Y?" + LLAVA_SUFFIX, "text": "No."},
    # code_reasoning: "other" + right -> acc 1/2, acc+ 0 -> 50
    {"question_id": "code_reasoning/0020.png", "prompt": "Is a python code shown in the picture?" + LLAVA_SUFFIX,
     "text": "I don't know"},
    {"question_id": "code_reasoning/0020.png", "prompt": "Is a c++ code shown in the picture?" + LLAVA_SUFFIX,
     "text": "no"},
]


def test_mme_scores(tmp_path, mme_dir):
    result = write_jsonl(tmp_path / "answers.jsonl", ANSWERS)
    m = mme.evaluate(result, mme_dir=mme_dir)
    ex = m["subtasks"]["existence"]
    assert (ex["acc"], ex["acc_plus"], ex["score"]) == (75.0, 50.0, 125.0)
    assert m["subtasks"]["artwork"]["score"] == 200.0
    code = m["subtasks"]["code_reasoning"]
    assert (code["acc"], code["acc_plus"]) == (50.0, 0.0)
    assert m["perception"]["total"] == 325.0
    assert m["cognition"]["total"] == 50.0
    assert any("absent" in w for w in m["warnings"])  # a miniature benchmark lacks most subtasks
    assert m["report"]["n_missing"] == 0 and m["report"]["n_unknown"] == 0


def test_mme_acc_plus_groups_by_image_not_by_line_order():
    # a.jpg: both right; b.jpg: both wrong; lines interleaved a, b, a, b.
    # Grouped by image acc+ = 1/2; pairing consecutive lines would give (a,b), (a,b) -> 0.
    items = [MMEItem("color", "a.jpg", "q1", "yes", "Yes"), MMEItem("color", "b.jpg", "q1", "yes", "No"),
             MMEItem("color", "a.jpg", "q2", "no", "No"), MMEItem("color", "b.jpg", "q2", "no", "Yes")]
    sub = score_items(items)["subtasks"]["color"]
    assert sub["acc"] == 50.0 and sub["acc_plus"] == 50.0


def test_mme_acc_plus_needs_both_questions_of_an_image():
    items = [MMEItem("count", "a.jpg", "q1", "yes", "Yes"), MMEItem("count", "a.jpg", "q2", "no", "Yes"),
             MMEItem("count", "b.jpg", "q1", "yes", "Yes"), MMEItem("count", "b.jpg", "q2", "no", "No")]
    sub = score_items(items)["subtasks"]["count"]
    assert sub["acc"] == 75.0 and sub["acc_plus"] == 50.0 and sub["score"] == 125.0


def calculation_oracle(results_dir, subtask):
    """(acc, acc+) in percent for one subtask file, the way MME's eval_tool/calculation.py computes them."""
    lines = open(f"{results_dir}/{subtask}.txt").readlines()
    pairs = [lines[i:i + 2] for i in range(0, len(lines), 2)]
    right, both = 0, 0
    for pair in pairs:
        assert len(pair) == 2
        n = 0
        for line in pair:
            _, _, gt, pred = line.split("\t")
            gt, pred = gt.lower(), pred.lower()
            if pred not in ("yes", "no"):
                pred = "yes" if "yes" in pred[:4] else "no" if "no" in pred[:4] else "other"
            n += gt == pred
        right += n
        both += n == 2
    return 100 * right / len(lines), 100 * both / len(pairs)


def test_mme_missing_answers_are_wrong_and_unknown_ones_skipped(tmp_path, mme_dir):
    answers = ANSWERS[:3] + ANSWERS[6:] + [
        {"question_id": "existence/0009.jpg", "prompt": "Is there a dog?" + LLAVA_SUFFIX, "text": "Yes"}]
    out = tmp_path / "eval_tool"
    m = mme.evaluate(write_jsonl(tmp_path / "answers.jsonl", answers), mme_dir=mme_dir, eval_tool_dir=str(out))
    # existence: 0001 right, right; 0002 right, missing -> acc 3/4, acc+ 1/2
    ex = m["subtasks"]["existence"]
    assert (ex["acc"], ex["acc_plus"], ex["n_questions"], ex["n_images"]) == (75.0, 50.0, 4, 2)
    # artwork: nothing answered -> both questions wrong, still in the denominators
    art = m["subtasks"]["artwork"]
    assert (art["score"], art["n_questions"], art["n_images"]) == (0.0, 2, 1)
    assert m["perception"]["total"] == 125.0
    assert m["partial"] is True
    r = m["report"]
    assert (r["n_annotations"], r["n_matched"], r["n_missing"], r["n_unknown"]) == (8, 5, 3, 1)
    assert r["unknown_ids"] == ["existence/0009.jpg | Is there a dog?"]
    # the written files hold every question, so calculation.py gives the same numbers
    assert calculation_oracle(out, "existence") == (75.0, 50.0)
    assert calculation_oracle(out, "artwork") == (0.0, 0.0)
    assert (out / "artwork.txt").read_text().splitlines() == [
        "10.txt\tIs this artwork created by X? Please answer yes or no.\tYes\t",
        "10.txt\tIs this artwork created by Y?  Please answer yes or no.\tNo\t"]


def test_mme_duplicate_keeps_the_last_answer(tmp_path, mme_dir):
    again = dict(ANSWERS[3], text="No")  # 0002's bus question again, now right
    m = mme.evaluate(write_jsonl(tmp_path / "answers.jsonl", ANSWERS + [again]), mme_dir=mme_dir)
    assert m["subtasks"]["existence"]["score"] == 200.0
    assert m["report"]["n_duplicate"] == 1 and m["partial"] is False


def test_mme_eval_tool_files_are_the_converters(tmp_path, mme_dir):
    out = tmp_path / "eval_tool" / "answers" / "run"
    result = write_jsonl(tmp_path / "answers.jsonl", ANSWERS)
    direct = mme.evaluate(result, mme_dir=mme_dir, eval_tool_dir=str(out))
    # convert_answer_to_mme.py: "<name>.txt", the benchmark's question, its gt as written, the raw answer
    assert (out / "existence.txt").read_text().splitlines() == [
        "0001.txt\tIs there a dog in this image? Please answer yes or no.\tYes\tYes",
        "0001.txt\tIs there a cat in this image? Please answer yes or no.\tNo\tNo",
        "0002.txt\tIs there a car in this image? Please answer yes or no.\tYes\tYes",
        "0002.txt\tIs there a bus in this image? Please answer yes or no.\tNo\tYes, there is a bus"]
    assert (out / "artwork.txt").read_text().splitlines()[1] == (
        "10.txt\tIs this artwork created by Y?  Please answer yes or no.\tNo\tNo.")
    for subtask in ("existence", "artwork", "code_reasoning"):
        sub = direct["subtasks"][subtask]
        assert (sub["acc"], sub["acc_plus"]) == calculation_oracle(out, subtask)
    reread = mme.main(["--results-dir", str(out)])
    assert reread["subtasks"] == direct["subtasks"]


def test_mme_interleaved_answers_are_written_as_pairs(tmp_path, mme_dir):
    order = [ANSWERS[i] for i in (0, 2, 1, 3)] + ANSWERS[4:]  # 0001, 0002, 0001, 0002
    out = tmp_path / "eval_tool"
    mme.evaluate(write_jsonl(tmp_path / "answers.jsonl", order), mme_dir=mme_dir, eval_tool_dir=str(out))
    firsts = [line.split("\t")[0] for line in (out / "existence.txt").read_text().splitlines()]
    assert firsts == ["0001.txt", "0001.txt", "0002.txt", "0002.txt"]
    assert calculation_oracle(out, "existence") == (75.0, 50.0)


def test_mme_ground_truth_from_question_file(tmp_path):
    questions = write_jsonl(tmp_path / "q.jsonl", [
        {"question_id": "color/1.jpg", "image": "color/1.jpg", "text": "Is it red?" + LLAVA_SUFFIX,
         "category": "color", "answer": "Yes"},
        {"question_id": "color/1.jpg", "image": "color/1.jpg", "text": "Is it blue?" + LLAVA_SUFFIX,
         "category": "color", "answer": "No"},
    ])
    answers = write_jsonl(tmp_path / "a.jsonl", [
        {"question_id": "color/1.jpg", "prompt": "Is it red?" + LLAVA_SUFFIX, "text": "Yes"},
        {"question_id": "color/1.jpg", "prompt": "Is it blue?" + LLAVA_SUFFIX, "text": "Yes"},
    ])
    m = mme.evaluate(answers, question_file=questions)
    assert m["subtasks"]["color"]["score"] == 50.0  # acc 50, acc+ 0


def test_mme_needs_ground_truth(tmp_path):
    answers = write_jsonl(tmp_path / "a.jsonl", ANSWERS[:1])
    with pytest.raises(ValueError, match="ground truth"):
        mme.evaluate(answers)
