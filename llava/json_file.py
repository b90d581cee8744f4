"""Reading one JSON file with errors a user can act on. Torch-free, so the scorers (`llava.eval.scoring.common`)
and the loaders (checkpoint and tower config files, shard indexes) share it without importing the model stack."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_json_file(path: str | os.PathLike, what: str = "", *, object_only: bool = True) -> Any:
    """The JSON value in `path`; with `object_only` (config files, shard indexes) it must be an object (a dict).

    `what` says what the file is for. A missing file raises FileNotFoundError ``<what> not found: <path>``; a file
    that is not UTF-8 or not JSON raises ValueError ``<path>:<line>: malformed JSON (...)`` (json's own message
    names neither the file nor, read from text, anything a user could find)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{what or 'JSON file'} not found: {path}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a UTF-8 text file ({err.reason} at byte {err.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: malformed JSON ({err.msg} at column {err.colno})"
                         f"{f'; {what}' if what else ''}") from None
    if object_only and not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
