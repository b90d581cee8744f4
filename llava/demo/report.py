"""What the demo prints: one line per budget (budget, reduction, kept tokens, LLM prompt length, time, answer)."""

from __future__ import annotations

import unicodedata


def printable(text: str, width: int | None = None) -> str:
    """One line: control characters and line breaks as spaces, undecodable bytes (U+FFFD) as '?'."""
    out = "".join(
        "?" if ch == "\ufffd" else " " if unicodedata.category(ch).startswith("C") else ch for ch in text
    ).strip()
    if width is not None and len(out) > width:
        out = out[: width - 1] + "…"
    return out


def format_table(rows) -> str:
    """The rows (`llava.demo.budgets.BudgetRow`) as an aligned table with a header and a rule."""
    header = ("budget", "reduction", "kept", "LLM prompt", "time", "answer")
    lines = [(str(r.budget), f"{r.reduction:.1f}%", str(r.kept), f"{r.prompt_len} tok", f"{r.seconds:.2f} s",
              repr(printable(r.answer, 48))) for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]

    def fmt(cells) -> str:  # the answer, last, is left-aligned; the numbers right-aligned
        return "  ".join(c.ljust(w) if i == len(cells) - 1 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in lines)])
