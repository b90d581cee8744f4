"""Answers files without a model: truncated lines, malformed lines, identity checks, merging, chunks."""

import json

import pytest

from llava.eval.answer_identity import IDENTITY_FIELDS, RunIdentity
from llava.eval.answers import AnswersFile, AnswersMismatchError, merge_answers, read_answers, record_key, skipped_path
from llava.eval import model_vqa_loader
from llava.eval.questions import get_chunk, split_list

RUN = RunIdentity("llava-v1.5-7b", 144, "fastervlm", None, {"llm_layer": 2, "seed": 0}, "vicuna_v1", 0.0, None, 1, 128,
                  {"single_pred_prompt": True}, "sha256:0123456789abcdef")


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


# For each identity field, a value another run could have written. Written out by hand: a field added to RunIdentity
# without an entry here fails test_every_identity_field_is_listed, so the per-field tests below cover it too.
OTHER_RUN = {
    "model_id": "llava-v1.5-13b",
    "visual_token_num": 58,
    "pruning_method": "random",
    "anyres_mode": "paper",
    "method_params": {"llm_layer": 20, "seed": 0},
    "conv_mode": "llava_v1",
    "temperature": 0.2,
    "top_p": 0.9,
    "num_beams": 3,
    "max_new_tokens": 16,
    "prompt_options": {"single_pred_prompt": False},
    "checkpoint": "sha256:fedcba9876543210",
}


def differing_in(name):
    """RUN with only `name` changed."""
    return RunIdentity(**{**RUN.as_fields(), name: OTHER_RUN[name]})


def test_every_identity_field_is_listed():
    assert set(IDENTITY_FIELDS) == set(OTHER_RUN) == {
        "model_id", "visual_token_num", "pruning_method", "anyres_mode", "method_params", "conv_mode", "temperature",
        "top_p", "num_beams", "max_new_tokens", "prompt_options", "checkpoint"}
    assert set(RunIdentity("m", 1, "fastervlm").as_fields()) == set(IDENTITY_FIELDS)


@pytest.mark.parametrize("name", sorted(OTHER_RUN))
def test_resume_refuses_a_file_differing_in_one_field(tmp_path, name):
    path = tmp_path / "a.jsonl"
    other = differing_in(name)
    write_lines(path, [line(1, identity=other)])
    with pytest.raises(AnswersMismatchError) as err:
        AnswersFile(str(path)).check(RUN)
    # only that field is named, with both values
    assert f"{name}: {OTHER_RUN[name]!r} in the file, {RUN.as_fields()[name]!r} in this run" in str(err.value)
    assert [f for f in IDENTITY_FIELDS if f"{f}:" in str(err.value)] == [name]
    AnswersFile(str(path)).check(other)  # the run that wrote it resumes


@pytest.mark.parametrize("name", sorted(OTHER_RUN))
def test_a_conflict_on_any_line_is_refused(tmp_path, name):
    path = tmp_path / "a.jsonl"
    records = [line(q) for q in range(1, 6)]
    records[2] = line(3, identity=differing_in(name))  # line 3 of 5 written by another run
    write_lines(path, records)
    with pytest.raises(AnswersMismatchError, match=rf"answer #3: {name}:"):
        AnswersFile(str(path)).check(RUN)
    records[2], records[4] = line(3), line(5, identity=differing_in(name))  # and the last line
    write_lines(path, records)
    with pytest.raises(AnswersMismatchError, match=rf"answer #5: {name}:"):
        AnswersFile(str(path)).check(RUN)


@pytest.mark.parametrize("name", sorted(OTHER_RUN))
def test_merge_refuses_chunks_differing_in_one_field_on_any_line(tmp_path, name):
    a, b, out = tmp_path / "2_0.jsonl", tmp_path / "2_1.jsonl", tmp_path / "merged.jsonl"
    write_lines(a, [line(1), line(2)])
    write_lines(b, [line(3), line(4, identity=differing_in(name)), line(5)])
    with pytest.raises(AnswersMismatchError, match=rf"cannot merge.*{name}: .*2_1\.jsonl \(answer #2\)"):
        merge_answers([str(a), str(b)], str(out))
    assert not out.exists()
    # the whole second chunk by another run, also refused; the first chunk's lines are what the rest must match
    write_lines(b, [line(3, identity=differing_in(name))])
    with pytest.raises(AnswersMismatchError, match=name):
        merge_answers([str(a), str(b)], str(out))


def test_merge_refuses_a_key_answered_in_two_chunks(tmp_path):
    a, b, c = (tmp_path / f"3_{k}.jsonl" for k in range(3))
    out = tmp_path / "merged.jsonl"
    write_lines(a, [line(1), line(2)])
    write_lines(b, [line(3)])
    write_lines(c, [line(4), line(2)])  # question 2 again, in the last chunk
    with pytest.raises(ValueError, match=r"question 2 answered twice, in .*3_0\.jsonl \(answer #2\) and again in "
                                         r".*3_2\.jsonl \(answer #2\)"):
        merge_answers([str(a), str(b), str(c)], str(out))
    assert not out.exists()
    # the same id in another round or as a repeat is a different key: merged
    write_lines(c, [line(4), line(2, round_id=1), line(2, metadata={"repeat": 1})])
    assert merge_answers([str(a), str(b), str(c)], str(out)) == 6
    assert [record_key(r) for r in read_answers(str(out))] == ["1", "2", "3", "4", "2#r1", "2#1"]


def test_lines_without_identity_are_refused(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"question_id": 1, "text": "x", "model_id": "llava-v1.5-7b"}) + "\n")
    with pytest.raises(AnswersMismatchError, match="pruning_method"):
        AnswersFile(str(path)).check(RUN)


def test_a_file_from_before_the_wider_identity_names_the_missing_fields_and_the_way_out(tmp_path):
    """A line written by the old code: model, budget, method and anyres mode only."""
    path = tmp_path / "a.jsonl"
    old = {"question_id": 1, "prompt": "q", "text": "x", "model_id": "llava-v1.5-7b", "visual_token_num": 144,
           "pruning_method": "fastervlm", "anyres_mode": None, "v_token_num": 144, "metadata": {}}
    path.write_text(json.dumps(old) + "\n")
    with pytest.raises(AnswersMismatchError) as err:
        AnswersFile(str(path)).check(RUN)
    message = str(err.value)
    assert "answer #1 lacks the run identity field(s) ['method_params', 'conv_mode', 'temperature', 'top_p', " \
           "'num_beams', 'max_new_tokens', 'prompt_options', 'checkpoint']" in message
    assert "--overwrite" in message and "a.jsonl" in message


def test_a_changed_question_text_is_refused(tmp_path):
    path = tmp_path / "a.jsonl"
    write_lines(path, [line(1, prompt="What is it?"), line(2, prompt="Who is it?")])
    answers = AnswersFile(str(path))
    answers.check_prompts({"1": "What is it?", "2": "Who is it?", "3": "new"})  # unchanged: accepted
    with pytest.raises(AnswersMismatchError, match=r"answer #2, question 2: 'Who is it\?' in the file, 'Who is she\?'"):
        answers.check_prompts({"1": "What is it?", "2": "Who is she?"})


def test_overwrite_keeps_the_old_file_until_the_new_run_finishes(tmp_path):
    path = tmp_path / "a.jsonl"
    write_lines(path, [line(1, "old"), line(2, "old")])
    before = path.read_bytes()
    answers = AnswersFile(str(path), overwrite=True)
    assert answers.records == [] and answers.done == set()
    answers.append(line(1, "new"))
    answers.close()  # the run dies here
    assert path.read_bytes() == before
    answers = AnswersFile(str(path), overwrite=True)  # a second --overwrite run completes
    answers.append(line(1, "new"))
    answers.append(line(2, "new"))
    answers.finish()
    assert [(r["question_id"], r["text"]) for r in read_answers(str(path))] == [(1, "new"), (2, "new")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl"]


def test_skipped_questions_go_to_the_side_file_count_as_done_and_merge(tmp_path):
    assert skipped_path(str(tmp_path / "n_144.jsonl")) == str(tmp_path / "n_144.skipped.jsonl")
    a, b, out = tmp_path / "2_0.jsonl", tmp_path / "2_1.jsonl", tmp_path / "merged.jsonl"
    with AnswersFile(str(a)) as answers:
        answers.append(line(1))
        answers.append_skipped({k: v for k, v in line(2, skipped="cannot read image").items() if k != "text"})
    reopened = AnswersFile(str(a))
    assert reopened.done == {"1", "2"} and [r["question_id"] for r in reopened.records] == [1]
    write_lines(b, [line(3)])
    assert merge_answers([str(a), str(b)], str(out)) == 2
    assert [r["question_id"] for r in read_answers(str(out))] == [1, 3]
    assert [(r["question_id"], r["skipped"]) for r in read_answers(skipped_path(str(out)))] == [
        (2, "cannot read image")]
    write_lines(tmp_path / "2_1.skipped.jsonl", [line(2, skipped="x")])  # skipped in one chunk, answered in another
    with pytest.raises(ValueError, match="question 2 answered twice"):
        merge_answers([str(a), str(b)], str(out))


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
