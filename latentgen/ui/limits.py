"""What the server enforces whatever a client sends: exposure, training caps, uploads, data folders, paths.

Gradio's ``api_visibility="private"`` only hides an event from the API docs and from
``gradio_client``; anyone who can load the page can still call it over HTTP (the page does),
so every bound here is checked in the handler itself.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

MAX_JOB_STEPS = 20_000  # training steps of one run (of one stage, for distillation)
MAX_JOB_BATCH = 64
MIN_CHECKPOINT_EVERY = 10  # steps between checkpoints / samples
MAX_UPLOAD_FILES = 2000  # uploaded files of one run
MAX_UPLOAD_BYTES = 200_000_000  # their total size (also Gradio's max_file_size, per file)
UPLOAD_MAX_AGE_S = 24 * 3600  # staged uploads older than this are removed at startup
MAX_QUEUE_SIZE = 10_000  # --queue-size: requests waiting at most


# ---------------------------------------------------------------- exposure
def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    h = (host or "").strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def exposure(host: str, share: bool) -> str | None:
    """How the app would be reachable from other machines, or None (loopback, no share link)."""
    if share:
        return "--share publishes the app on a public gradio.live link"
    if not is_loopback(host):
        return f"--host {host or '(all interfaces)'} makes the app reachable from other machines"
    return None


def check_exposure(host: str, share: bool, auth, insecure_no_auth: bool) -> str | None:
    """A ValueError when the app would be reachable from elsewhere without a password; the warning
    to print when the operator accepted that with ``--insecure-no-auth``; else None."""
    how = exposure(host, share)
    if how is None or auth is not None:
        return None
    if not insecure_no_auth:
        raise ValueError(
            f"refusing to start: {how} without a password, and anyone who reaches it can generate images "
            "and start training runs: add --auth USER:PASS (or --insecure-no-auth to run it open anyway)"
        )
    return (
        f"WARNING: {how} WITHOUT A PASSWORD (--insecure-no-auth): anyone who reaches it can generate "
        "images and start training runs; use --auth USER:PASS"
    )


# ---------------------------------------------------------------- training jobs
def whole(label: str, value, lo: int, hi: int) -> int:
    """``value`` as an int from ``lo`` to ``hi``, or a ValueError naming ``label`` and the range."""
    try:
        ok = value is not None and float(value) == int(value) and lo <= int(value) <= hi
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{label} must be a whole number from {lo:,} to {hi:,}, got {value!r}")
    return int(value)


def check_job_settings(max_steps, batch_size, every) -> tuple[int, int, int]:
    """(max steps, batch size, checkpoint every) within the server's caps."""
    steps = whole("max steps", max_steps, 1, MAX_JOB_STEPS)
    batch = whole("batch size", batch_size, 1, MAX_JOB_BATCH)
    every = whole("checkpoint every", every, min(MIN_CHECKPOINT_EVERY, steps), steps)
    return steps, batch, every


def check_uploads(files, max_files: int = MAX_UPLOAD_FILES, max_bytes: int = MAX_UPLOAD_BYTES) -> list[Path]:
    """The uploaded files of one run, if there are at most ``max_files`` of at most ``max_bytes`` in all."""
    paths = [Path(f if isinstance(f, (str, os.PathLike)) else getattr(f, "path", f)) for f in files or ()]
    if len(paths) > max_files:
        raise ValueError(
            f"{len(paths):,} files uploaded; at most {max_files:,} per run are accepted: upload fewer, "
            "or put the images in a folder in the data folder on the server"
        )
    total = sum(p.stat().st_size for p in paths if p.is_file())
    if total > max_bytes:
        raise ValueError(
            f"the uploaded files hold {_size(total)}; at most {_size(max_bytes)} per run are accepted: upload "
            "fewer or smaller images, or put them in a folder in the data folder on the server"
        )
    return paths


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} KB"


def check_data_root(data_dir: str | os.PathLike) -> Path:
    """The data root (``--data-dir``), absolute; never the whole disk."""
    root = Path(data_dir).expanduser().absolute()
    if root.resolve() == Path(root.anchor):
        raise ValueError(
            f"--data-dir {data_dir} would offer the whole disk for training: give the folder that holds "
            "your image folders, e.g. --data-dir ./data"
        )
    return root


def data_folder(value: str, root: Path) -> Path:
    """The image folder typed in the app, inside the data root ``root`` (symlinks followed)."""
    text = (value or "").strip()
    hint = f"give a folder inside the data folder {root.name}/ (set with --data-dir)"
    if "\x00" in text:
        raise ValueError(f"the image folder contains a NUL character: {hint}")
    path = Path(text).expanduser()
    if ".." in path.parts:
        raise ValueError(f"the image folder {text!r} contains '..': {hint}")
    real = (path if path.is_absolute() else root / path).resolve()
    top = root.resolve()
    if real == Path(real.anchor) or not real.is_relative_to(top):
        raise ValueError(f"the image folder {text!r} is outside the data folder: {hint}")
    if not real.is_dir():
        raise ValueError(f"the image folder {text!r} does not exist in the data folder: {hint}")
    return real


# ---------------------------------------------------------------- messages
_ABS_PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\"`,;:()\[\]{}<>|*?]*[^\s'\"`,;:()\[\]{}<>|*?.]")


def hide_paths(text: str, roots: dict[str, os.PathLike] | None = None) -> str:
    """``text`` without absolute server paths: below a root of ``roots`` (label -> folder) a path is
    named from the label (``models/my-run``), elsewhere by its last part (``model_index.json``)."""
    for label, root in sorted((roots or {}).items(), key=lambda kv: -len(os.fspath(kv[1]))):
        for form in {os.fspath(root), os.fspath(Path(root).resolve())}:
            if len(form) > 1:
                text = re.sub(re.escape(form.rstrip("/")) + r"(?=/|\b|$)", label, text)
    return _ABS_PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1] or "/", text)

PRIVATE = {"api_visibility": "private"}  # an event kept off the API page (the server still checks every call)
