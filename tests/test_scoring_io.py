"""Bad input to the scorers: malformed lines, missing files, incomplete records; the registry."""

import importlib
import json

import pytest

from llava.eval.scoring import SCORERS, gqa, pope, textvqa
from llava.eval.scoring.common import load_answers, match_by_id, read_jsonl


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": 1, "text": "yes"}\n\n{"question_id": 2, "text": "no"\n')
    with pytest.raises(ValueError, match=r"answers\.jsonl:3: malformed JSON"):
        read_jsonl(path)


def test_non_object_line_is_rejected(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('[1, 2]\n')
    with pytest.raises(ValueError, match=r"answers\.jsonl:1: expected a JSON object"):
        read_jsonl(path)


def test_answer_without_text_is_rejected(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"question_id": 1, "answer": "yes"}\n')
    with pytest.raises(ValueError, match=r"answer #1: record lacks field\(s\) \['text'\]"):
        load_answers(path)


def test_missing_files_are_named(tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"question_id": 1, "text": "yes"}\n')
    with pytest.raises(FileNotFoundError, match="TextVQA annotation file not found: .*nope.json"):
        textvqa.evaluate(str(answers), str(tmp_path / "nope.json"))
    with pytest.raises(FileNotFoundError, match="result file not found: .*absent.jsonl"):
        gqa.evaluate(str(tmp_path / "absent.jsonl"), str(answers))
    with pytest.raises(FileNotFoundError, match="POPE annotation directory not found"):
        pope.evaluate(str(answers), str(tmp_path / "coco"), str(answers))


def test_malformed_annotation_json(tmp_path):
    bad = tmp_path / "questions.json"
    bad.write_text('{"q1": {"answer": "yes"},\n')
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"question_id": "q1", "text": "yes"}\n')
    with pytest.raises(ValueError, match=r"questions\.json:\d+: malformed JSON"):
        gqa.evaluate(str(answers), str(bad))


def test_match_report_lists_first_ids_and_counts_all():
    answers = [{"question_id": i, "text": ""} for i in range(100, 125)] + [{"question_id": 1, "text": ""}]
    pairs, report = match_by_id(answers, [1, 2, 3])
    listed = report.to_dict()
    assert [k for k, _ in pairs] == ["1"]
    assert listed["n_unknown"] == 25 and len(listed["unknown_ids"]) == 10
    assert listed["missing_ids"] == ["2", "3"]
    assert "(15 more)" in report.warnings()[0]


def test_registry_entries_resolve():
    assert {"textvqa", "vqav2", "gqa", "vizwiz", "sqa", "pope", "mme", "mmbench", "mmbench_cn", "mmvet"} <= set(SCORERS)
    for name, spec in SCORERS.items():
        module = importlib.import_module(f"llava.eval.scoring.{spec.module}")
        assert callable(spec.evaluate) and callable(module.main), name
        assert spec.server_scored == (spec.headline is None), name


def test_headline_value_follows_the_path():
    assert SCORERS["pope"].headline_value({"average": {"f1": 85.0}}) == 85.0
    assert SCORERS["mmbench"].headline_value({"note": "not scored"}) is None


def test_cli_output_json(tmp_path):
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps({"q1": {"answer": "yes", "types": {"structural": "verify"}}}))
    answers = tmp_path / "a.jsonl"
    answers.write_text('{"question_id": "q1", "text": "Yes"}\n')
    out = tmp_path / "m.json"
    gqa.main(["--question-file", str(questions), "--result-file", str(answers), "--output-json", str(out)])
    assert json.loads(out.read_text())["accuracy"] == 100.0
