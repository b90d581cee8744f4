"""Small file writers shared by the scorer tests."""

import json


def write_jsonl(path, records) -> str:
    """One JSON object per line, as the eval runner writes answers files; returns the path as a string."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)
