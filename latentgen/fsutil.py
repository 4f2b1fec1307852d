"""Writes that a kill, a crash or a full disk cannot leave half done.

``atomic_write_text`` / ``atomic_write_json`` write a temporary file beside the target,
fsync it, rename it over the target (atomic on POSIX) and fsync the folder, so a reader
sees the old file or the new one, never a mix. ``replace_dir`` does the same for a folder
(a checkpoint): the old one is moved aside first and deleted only after the new one is in
place. ``WRITE_ERRORS`` are the exceptions a failed write raises: ``OSError`` from Python,
``RuntimeError`` from torch (its zip writer reports a full disk as an "enforce fail"), and
safetensors' ``SafetensorError`` (an ``Exception`` subclass, not an ``OSError``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from safetensors import SafetensorError

WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)


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


LOCK_FILE = ".lock"


class RunLockedError(RuntimeError):
    """Another live process holds the run folder's lock."""


class RunLock:
    """One writer per run folder: an exclusive ``flock`` on ``<folder>/.lock``, held while the run trains.

    The kernel drops the lock when its process dies (even by SIGKILL), so a killed run never
    leaves a stale lock. ``RunLock.held(folder)`` asks without taking it.

        with RunLock(out):
            ...train, checkpoint...
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = os.fspath(folder)
        self.path = os.path.join(self.folder, LOCK_FILE)
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        os.makedirs(self.folder, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"the run folder {os.path.basename(os.path.normpath(self.folder))} is in use by another "
                "training process: wait for it to finish (or stop it), or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    @staticmethod
    def held(folder: str | os.PathLike) -> bool:
        """Whether some live process holds ``folder``'s lock now."""
        import fcntl

        path = os.path.join(os.fspath(folder), LOCK_FILE)
        if not os.path.isfile(path):
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock taken just now
        return False
