"""Writes that a kill, a crash or a full disk cannot leave half done.

``atomic_write_text`` / ``atomic_write_json`` write a temporary file beside the target,
fsync it, rename it over the target (atomic on POSIX) and fsync the folder, so a reader
sees the old file or the new one, never a mix. ``replace_dir`` does the same for a folder
(a checkpoint): the old one is moved aside first and deleted only after the new one is in
place. ``WRITE_ERRORS`` are the exceptions a failed write raises: ``OSError`` from Python,
and ``RuntimeError`` from torch and safetensors (whose Rust writer reports a full disk as
``SafetensorError``, a ``RuntimeError`` subclass, or as a generic I/O error).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

WRITE_ERRORS = (OSError, RuntimeError)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` whole or not at all (the old content stays on any error)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding=encoding) as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)


def atomic_write_json(path: str | os.PathLike, data, indent: int | None = 2, **kwargs) -> None:
    """``atomic_write_text`` of ``json.dumps(data)`` (and a final newline)."""
    atomic_write_text(path, json.dumps(data, indent=indent, **kwargs) + "\n")


def fsync_tree(folder: str | os.PathLike) -> None:
    """fsync every file under ``folder``, then the folders themselves (before a rename makes it visible)."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Move the finished folder ``tmp`` to ``final``; an existing ``final`` is renamed aside first
    and deleted only once ``tmp`` is in its place, so a crash leaves one whole copy on disk."""
    tmp, final = os.fspath(tmp), os.fspath(final)
    fsync_tree(tmp)
    old = None
    if os.path.exists(final):
        old = f"{final}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        if old is not None:
            os.rename(old, final)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(final)))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
