"""Atomic file output: a result file is either the previous complete version or the new complete one.

Every output of the scorers and reports (upload files, ``metrics.json``, MME eval-tool files, figures, CSVs) goes
through :func:`atomic_write` or :func:`atomic_path`: the content is written to a temporary file in the *same*
directory (so the final rename never crosses a file system), flushed and fsynced, then renamed over the target
with ``os.replace`` (atomic on POSIX and Windows). A failure part-way (disk full, an exception in the writer, a
kill) leaves the old file untouched and removes the temporary one; a kill -9 can leave a ``.<name>.*.tmp<ext>``
file next to the target, never a truncated target.

This module imports nothing heavy, so the scorers can use it without torch.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator


def _temp_name(path: str) -> tuple[int, str]:
    """An open descriptor and the name of a fresh temporary file next to ``path`` with the same extension
    (writers such as matplotlib's savefig pick the format from it)."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    ext = os.path.splitext(name)[1]
    return tempfile.mkstemp(prefix=f".{name}.", suffix=f".tmp{ext}", dir=directory)


def _fsync_dir(directory: str) -> None:
    """Make the rename itself durable where the platform allows opening a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replace(tmp: str, path: str) -> None:
    # mkstemp creates 0600 files; give the result the permissions a plain open() would have.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8",
                 newline: str | None = None) -> Iterator[IO]:
    """``with atomic_write(path) as f: f.write(...)``: ``path`` is replaced only if the block finishes.

    ``mode`` is ``"w"`` (text, ``encoding`` / ``newline`` as in :func:`open`) or ``"wb"``.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    fd, tmp = _temp_name(path)
    try:
        if mode == "wb":
            f = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding, newline=newline)
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """For writers that want a file name (``fig.savefig(tmp)``, ``workbook.save(tmp)``): yields a temporary name
    with ``path``'s extension in the same directory; on success it is fsynced and renamed to ``path``."""
    path = os.fspath(path)
    fd, tmp = _temp_name(path)
    os.close(fd)
    try:
        yield tmp
        if not os.path.isfile(tmp):
            raise OSError(f"{path}: the writer did not create its output")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
