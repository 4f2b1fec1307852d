"""Images uploaded for a training run, staged in ``<models>/.uploads/<name>`` for the trainer's ``--data``.

The job manager removes a run's staged folder when the run finishes or fails (a stopped run
keeps it, to resume); ``clean_stale`` removes, at startup, the folders of runs that no
longer exist or have finished, and any older than a day, but never one whose run folder a
live trainer holds (``RunLock``).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from latentgen.data.captions import METADATA_NAMES
from latentgen.data.images import IMAGE_EXTS
from latentgen.fsutil import RunLock
from latentgen.limits import MAX_CAPTION_CHARS
from latentgen.ui.limits import UPLOAD_MAX_AGE_S

UPLOADS = ".uploads"
CAPTION_FILES = METADATA_NAMES


def staged_dir(models_dir: Path, name: str) -> Path:
    return Path(models_dir) / UPLOADS / name


def stage_uploads(files, caption: str, dest: Path) -> Path:
    """Copy uploaded images (and their .txt / metadata files) into ``dest``; caption the rest."""
    caption = (caption or "").strip()
    if len(caption) > MAX_CAPTION_CHARS:
        raise ValueError(
            f"the caption is {len(caption):,} characters long; at most {MAX_CAPTION_CHARS:,} are accepted: shorten it"
        )
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    try:
        return _stage(files, caption, dest)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _stage(files, caption: str, dest: Path) -> Path:
    names = set()
    for f in files:
        src = Path(f)
        name = src.name
        if name.lower().endswith((*IMAGE_EXTS, ".txt")) or name.lower() in CAPTION_FILES:
            shutil.copy(src, dest / name)
            names.add(name)
    images = [n for n in names if n.lower().endswith(IMAGE_EXTS)]
    if not images:
        raise ValueError(f"none of the uploaded files is an image ({', '.join(IMAGE_EXTS)})")
    has_meta = any(n.lower() in CAPTION_FILES for n in names)
    missing = [n for n in images if f"{Path(n).stem}.txt" not in names]
    if missing and not has_meta:
        if not caption:
            raise ValueError(
                f"{len(missing)} uploaded image(s) have no caption (e.g. {missing[0]}): upload "
                f"{Path(missing[0]).stem}.txt with them, or fill in 'Caption for uploaded images'"
            )
        for n in missing:
            (dest / f"{Path(n).stem}.txt").write_text(caption)
    return dest


def clean_stale(models_dir: Path, finished, max_age_s: float = UPLOAD_MAX_AGE_S) -> list[str]:
    """Remove staged uploads whose run is gone (no ``job.json``) or ``finished(run)``, or older than
    ``max_age_s``; never those of a run a live process holds. Returns the names removed."""
    folder = Path(models_dir) / UPLOADS
    removed = []
    for staged in sorted(folder.iterdir()) if folder.is_dir() else []:
        run = Path(models_dir) / staged.name
        try:
            if RunLock.held(run):
                continue
            gone = not (run / "job.json").is_file() or finished(run)
            if gone or time.time() - staged.stat().st_mtime > max_age_s:
                shutil.rmtree(staged) if staged.is_dir() else staged.unlink()
                removed.append(staged.name)
        except OSError:
            continue
    return removed
