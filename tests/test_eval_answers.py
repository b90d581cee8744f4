"""Answers files without a model: truncated lines, malformed lines, identity checks, merging, chunks."""

import json

import pytest

from llava.eval.answers import (AnswersFile, AnswersMismatchError, RunIdentity, merge_answers, read_answers,
                                record_key)
from llava.eval import model_vqa_loader
from llava.eval.model_vqa_loader import get_chunk, split_list

RUN = RunIdentity("llava-v1.5-7b", 144, "fastervlm")


def line(qid, text="a", identity=RUN, **extra):
    return {"question_id": qid, "text": text, **identity.as_fields(), **extra}


def write_lines(path, records, tail=b""):
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail)


def test_truncated_last_line_is_dropped_and_redone(tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    write_lines(path, [line(1), line(2)], tail=b'{"question_id": 3, "te')
    answers = AnswersFile(str(path))
    assert answers.done == {"1", "2"}
    assert "dropped a truncated last line" in capsys.readouterr().err
    answers.check(RUN)
    answers.append(line(3))
    answers.close()
    assert [r["question_id"] for r in read_answers(str(path))] == [1, 2, 3]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(json.dumps(line(1)).encode())
    with AnswersFile(str(path)) as answers:
        answers.append(line(2))
    assert [r["question_id"] for r in read_answers(str(path))] == [1, 2]


def test_malformed_line_in_the_middle_names_file_and_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(line(1)) + "\n{oops\n" + json.dumps(line(3)) + "\n")
    with pytest.raises(ValueError, match=r"a\.jsonl:2: malformed answer line"):
        AnswersFile(str(path))


def test_refuses_to_mix_budgets_and_says_how_to_start_fresh(tmp_path):
    path = tmp_path / "a.jsonl"
    write_lines(path, [line(1)])
    other = RunIdentity("llava-v1.5-7b", 58, "fastervlm")
    with pytest.raises(AnswersMismatchError, match=r"visual_token_num: 144 in the file, 58 in this run.*--overwrite"):
        AnswersFile(str(path)).check(other)
    fresh = AnswersFile(str(path), overwrite=True)
    assert fresh.records == []
    fresh.check(other)


def test_lines_without_identity_are_refused(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"question_id": 1, "text": "x", "model_id": "llava-v1.5-7b"}) + "\n")
    with pytest.raises(AnswersMismatchError, match="pruning_method"):
        AnswersFile(str(path)).check(RUN)


def test_keys_tell_rounds_and_repeated_ids_apart():
    assert record_key({"question_id": 7}) == "7"
    assert record_key({"question_id": 7, "round_id": 2}) == "7#r2"
    assert record_key({"question_id": 7, "metadata": {"repeat": 1}}) == "7#1"


def test_merge_keeps_chunk_order_and_refuses_mixed_runs(tmp_path):
    a, b, out = tmp_path / "2_0.jsonl", tmp_path / "2_1.jsonl", tmp_path / "merged.jsonl"
    write_lines(a, [line(1), line(2)])
    write_lines(b, [line(3)])
    assert merge_answers([str(a), str(b)], str(out)) == 3
    assert [r["question_id"] for r in read_answers(str(out))] == [1, 2, 3]
    write_lines(b, [line(3, identity=RunIdentity("llava-v1.5-7b", 58, "fastervlm"))])
    with pytest.raises(AnswersMismatchError, match="cannot merge"):
        merge_answers([str(a), str(b)], str(out))
    write_lines(b, [line(3)], tail=b'{"question_id": 4')
    with pytest.raises(ValueError, match=r"2_1\.jsonl:2"):
        merge_answers([str(a), str(b)], str(out))


def test_chunks_follow_llava_split_list():
    items = list(range(10))
    assert split_list(items, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [get_chunk(items, 3, k) for k in range(3)] == split_list(items, 3)
    # fewer items than chunks: the missing chunks are empty, not an IndexError
    assert [get_chunk([0, 1], 4, k) for k in range(4)] == [[0], [1], [], []]
    with pytest.raises(ValueError, match="chunk index 4 out of range"):
        get_chunk(items, 4, 4)


def test_an_empty_chunk_leaves_an_empty_answers_file_without_loading_a_model(tmp_path):
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question_id": i, "image": f"{i}.png", "text": "q"}) + "\n"
                                              for i in range(2)))
    out = tmp_path / "answers" / "4_3.jsonl"
    model_vqa_loader.main(["--model-path", str(tmp_path / "no-such-model"), "--question-file", str(tmp_path / "q.jsonl"),
                           "--image-folder", str(tmp_path), "--answers-file", str(out), "--num-chunks", "4",
                           "--chunk-idx", "3"])
    assert out.exists() and out.read_text() == ""
