"""What every scorer prints besides its metrics, and how its command line ends.

Coverage. Every report also carries ``n_expected`` (questions the benchmark
asks: the annotations), ``n_answered`` (those that have an answer) and
``coverage`` = 100 * n_answered / n_expected, a percentage (None when nothing
is expected). :func:`emit` prints ``coverage: 950/1000 (95.0%)`` for every
report in the metrics and a ``WARNING:`` line when it is below 100%, whether the
scorer counts the unanswered questions as wrong (ScienceQA, GQA) or leaves them
out as its official script does (TextVQA, POPE; those set ``partial``).

Exit status. A scorer's ``main(argv)`` returns its metrics (the eval runner
calls it in-process); its ``__main__`` block ends with
``sys.exit(exit_code(main(sys.argv[1:])))``: :func:`exit_code` is 1 (and says
why on stderr) when nothing at all was scored -- no report has both an
expected and an answered question -- and 0 otherwise.

The eval runner reads :func:`headline_status` (how complete the headline number is) and raises
:class:`NothingScoredError` where a scorer's command line would exit with status 1.
"""

from __future__ import annotations

import argparse
import sys

from .common import MAX_LISTED_IDS, write_json

_WARNING_TEXT = {
    "unknown": "result ids not in the annotations (ignored)",
    "missing": "annotated questions without a result",
    "duplicate": "questions answered more than once (same id and repeat; last answer kept)",
}


def _expected_answered(report: dict) -> tuple[int, int]:
    """(expected, answered) of a report dict; older dicts only have n_annotations / n_matched."""
    expected = report.get("n_expected", report.get("n_annotations", 0))
    return expected, report.get("n_answered", report.get("n_matched", 0))


def coverage_line(report: dict) -> str:
    """``coverage: 950/1000 (95.0%)`` for a ``MatchReport.to_dict()``."""
    expected, answered = _expected_answered(report)
    share = f"{100.0 * answered / expected:.1f}%" if expected else "nothing expected"
    return f"coverage: {answered}/{expected} ({share})"


def coverage_warning(report: dict) -> str | None:
    """A WARNING line when fewer questions were answered than expected (or none were expected)."""
    expected, answered = _expected_answered(report)
    if not expected:
        return "WARNING: no questions expected (empty annotations or split): nothing was scored"
    if answered < expected:
        return (f"WARNING: incomplete answers: {answered} of {expected} questions answered "
                f"({100.0 * answered / expected:.1f}% coverage)")
    return None


def warning_lines(report: dict) -> list[str]:
    """Human-readable warnings from a ``MatchReport.to_dict()``: coverage, then unknown / missing / duplicate ids."""
    lines = []
    low_coverage = coverage_warning(report)
    if low_coverage:
        lines.append(low_coverage)
    for label, what in _WARNING_TEXT.items():
        count = report.get(f"n_{label}", 0)
        if count:
            shown = ", ".join(report.get(f"{label}_ids", []))
            more = f", ... ({count - MAX_LISTED_IDS} more)" if count > MAX_LISTED_IDS else ""
            lines.append(f"WARNING: {count} {what}: {shown}{more}")
    return lines



def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--result-file", required=True, help="answers jsonl written by the eval runner")
    parser.add_argument("--output-json", default=None, help="also write the metrics to this JSON file")
    return parser


def format_metrics(metrics: dict, indent: int = 0) -> list[str]:
    lines = []
    pad = "  " * indent
    for key, value in metrics.items():
        if isinstance(value, dict):
            lines.append(f"{pad}{key}:")
            lines.extend(format_metrics(value, indent + 1))
        elif isinstance(value, float):
            lines.append(f"{pad}{key}: {value:.2f}")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: {', '.join(str(v) for v in value) if value else '-'}")
        else:
            lines.append(f"{pad}{key}: {value}")
    return lines


def emit(metrics: dict, output_json: str | None) -> None:
    """Print the metrics, a coverage line per ``report``, then the warnings; write JSON if asked."""
    for line in format_metrics(metrics):
        print(line)
    for line in report_lines(metrics):
        print(line)
    if output_json:
        write_json(output_json, metrics)
        print(f"metrics written to {output_json}")


def find_reports(metrics: dict, path: str = "") -> list[tuple[str, dict]]:
    """``(where, report)`` for every ``report`` entry, depth first; ``where`` is the path of the enclosing dict."""
    found = []
    for key, value in metrics.items():
        if key == "report" and isinstance(value, dict):
            found.append((path, value))
        elif isinstance(value, dict):
            found.extend(find_reports(value, f"{path}/{key}" if path else key))
    return found


def report_lines(metrics: dict) -> list[str]:
    """Coverage line of every report (prefixed with its place when it is nested), then all warnings."""
    lines = []
    for where, report in find_reports(metrics):
        line = coverage_line(report)
        lines.append(f"{where} {line}" if where else line)
    return lines + _collect_warnings(metrics)


def _collect_warnings(metrics: dict) -> list[str]:
    lines = []
    for key, value in metrics.items():
        if key == "report" and isinstance(value, dict):
            lines.extend(warning_lines(value))
        elif key == "warnings" and isinstance(value, list):
            lines.extend(f"WARNING: {w}" for w in value)
        elif key == "partial_reasons" and isinstance(value, list):
            lines.extend(f"WARNING: partial: {w}" for w in value)
        elif isinstance(value, dict):
            lines.extend(_collect_warnings(value))
    return lines


def nothing_scored(metrics: dict) -> str | None:
    """Why nothing at all was scored (no report with an expected *and* an answered question), else None.

    Metrics without any report are not judged (None).
    """
    reports = [report for _, report in find_reports(metrics)]
    if not reports:
        return None
    counts = [_expected_answered(report) for report in reports]
    if any(expected and answered for expected, answered in counts):
        return None
    if all(not expected for expected, _ in counts):
        return "no questions expected (empty annotations or split)"
    return "no expected question has an answer (wrong result file, or ids that match nothing)"


def exit_code(metrics: dict) -> int:
    """Process exit status of a scorer CLI: 1 (with the reason on stderr) when nothing was scored, else 0."""
    reason = nothing_scored(metrics)
    if reason is None:
        return 0
    print(f"ERROR: nothing was scored: {reason}", file=sys.stderr)
    return 1


class NothingScoredError(ValueError):
    """Raised by the eval runner when a scorer scored nothing: the run must not end with exit status 0."""


def headline_status(metrics: dict, missing_as_wrong: bool = True) -> dict:
    """How complete the headline number is: ``{"n_answered", "n_expected", "partial", "reasons", "note"}``.

    Counts come from the top-level ``report`` (else the first one found). ``partial`` is the scorer's flag, or
    true when coverage is below 100% or ``partial_reasons`` lists something (e.g. a POPE category without
    answers). ``note`` is the text the runner appends to the headline: ``"partial: 10/60 answered"`` and, where
    the official scorer counts a missing answer as wrong, ``", missing counted wrong"``; empty when complete.
    """
    reports = find_reports(metrics)
    top = metrics.get("report") if isinstance(metrics.get("report"), dict) else (reports[0][1] if reports else {})
    expected, answered = _expected_answered(top) if top else (0, 0)
    reasons = []
    if expected and answered < expected:
        reasons.append(f"{answered}/{expected} answered" + (", missing counted wrong" if missing_as_wrong else ""))
    reasons.extend(metrics.get("partial_reasons", []))
    partial = bool(metrics.get("partial")) or bool(reasons)
    if partial and not reasons:
        reasons.append(f"{answered}/{expected} answered")
    return {"n_answered": answered, "n_expected": expected, "partial": partial, "reasons": reasons,
            "note": f"partial: {'; '.join(reasons)}" if partial else ""}
