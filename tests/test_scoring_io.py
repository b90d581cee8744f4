"""Bad input to the scorers: malformed lines, missing files, incomplete records."""

import json

import pytest

from llava.eval.scoring import gqa, pope, textvqa
from llava.eval.scoring.common import MatchReport, load_answers, match_by_id, read_jsonl
from llava.eval.scoring.report import coverage_line, emit, exit_code, warning_lines


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
    with pytest.raises(ValueError, match=r"answers.jsonl:1: record lacks field\(s\) \[.text.\]"):
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
    unknown_line = [w for w in warning_lines(report.to_dict()) if "result ids not in the annotations" in w]
    assert unknown_line == ["WARNING: 25 result ids not in the annotations (ignored): "
                            + ", ".join(str(i) for i in range(100, 110)) + ", ... (15 more)"]


def test_report_coverage_fields():
    # 1 of the 3 annotated ids has an answer: 1/3 = 33.33...%
    _, report = match_by_id([{"question_id": 1, "text": ""}, {"question_id": 9, "text": ""}], [1, 2, 3])
    listed = report.to_dict()
    assert (listed["n_expected"], listed["n_answered"]) == (3, 1)
    assert listed["coverage"] == pytest.approx(100 / 3)
    assert coverage_line(listed) == "coverage: 1/3 (33.3%)"
    assert warning_lines(report.to_dict())[0] == "WARNING: incomplete answers: 1 of 3 questions answered (33.3% coverage)"


def test_full_coverage_has_no_warning():
    _, report = match_by_id([{"question_id": 2, "text": ""}, {"question_id": 1, "text": ""}], [1, 2])
    assert report.to_dict()["coverage"] == 100.0
    assert warning_lines(report.to_dict()) == []


def test_emit_prints_a_coverage_line_per_report(capsys):
    outer = MatchReport(n_results=950, n_annotations=1000, n_matched=950).to_dict()
    inner = MatchReport(n_results=4, n_annotations=4, n_matched=4).to_dict()
    emit({"accuracy": 50.0, "report": outer, "perception": {"report": inner}}, None)
    lines = capsys.readouterr().out.splitlines()
    assert "coverage: 950/1000 (95.0%)" in lines
    assert "perception coverage: 4/4 (100.0%)" in lines
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert warnings == ["WARNING: incomplete answers: 950 of 1000 questions answered (95.0% coverage)"]


@pytest.mark.parametrize("reports, code", [
    ([(0, 0)], 1),            # nothing expected
    ([(5, 0)], 1),            # nothing answered
    ([(5, 0), (0, 0)], 1),    # no report scored anything
    ([(5, 1)], 0),
    ([(5, 0), (3, 3)], 0),    # one part scored
    ([], 0),                  # no report: not judged
])
def test_exit_code_when_nothing_was_scored(reports, code, capsys):
    metrics = {f"part{i}": {"report": MatchReport(n_annotations=e, n_matched=a).to_dict()}
               for i, (e, a) in enumerate(reports)}
    assert exit_code(metrics) == code
    assert ("ERROR: nothing was scored" in capsys.readouterr().err) == bool(code)


def test_cli_output_json(tmp_path):
    questions = tmp_path / "q.json"
    questions.write_text(json.dumps({"q1": {"answer": "yes", "types": {"structural": "verify"}}}))
    answers = tmp_path / "a.jsonl"
    answers.write_text('{"question_id": "q1", "text": "Yes"}\n')
    out = tmp_path / "m.json"
    gqa.main(["--question-file", str(questions), "--result-file", str(answers), "--output-json", str(out)])
    assert json.loads(out.read_text())["accuracy"] == 100.0
