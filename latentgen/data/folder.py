"""User image folders: find image-caption pairs, skip what is broken, say why.

Three caption layouts, which may be mixed and nested in subfolders:

1. ``cat.png`` beside ``cat.txt`` (same name, any image extension);
2. ``metadata.jsonl`` with one JSON object per line, ``{"file_name": "sub/cat.png", "text": "a cat"}``
   (the Hugging Face ``imagefolder`` layout; other keys, such as ``objects``, go to ``Item.extra``);
3. ``captions.csv`` (or ``metadata.csv``) with the columns ``file_name,text``.

``scan_folder`` opens and fully decodes every image once (``latentgen.data.images``), so a
truncated JPEG, a text file called ``.png`` or a decompression bomb is skipped with a reason at
scan time instead of crashing a training run hours later. Caption text is bounded too
(``latentgen.data.captions``): a hostile metadata line or an over-long caption is a reported skip.
``ImageCaptionDataset`` serves the usable pairs.
"""

from __future__ import annotations

import collections
import logging
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from latentgen.data.captions import (
    METADATA_NAMES,
    caption_file_problem,
    caption_problem,
    clean_caption,
    guessed,
    metadata_rows,
    read_text,
)
from latentgen.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTS, check_image, load_rgb, resize_center_crop

log = logging.getLogger(__name__)

CAPTION_KEYS = ("text", "caption")  # the first present key is the caption

FORMATS_HELP = (
    "Supported layouts: (1) each image beside a same-name .txt caption (cat.png + cat.txt); "
    '(2) a metadata.jsonl with one JSON object per line, {"file_name": "cat.png", "text": "a cat"}; '
    "(3) a captions.csv with the columns file_name,text. "
    f"Image types: {' '.join(IMAGE_EXTS)}. Subfolders are fine (file_name relative to the metadata file). "
    "Run `latentgen data check DIR` to list every skipped file and why."
)


# ---------------------------------------------------------------- report
@dataclass(frozen=True)
class Item:
    """One usable image-caption pair; ``extra`` holds the other metadata keys (e.g. ``objects``)."""

    path: str
    caption: str
    extra: dict = field(default_factory=dict)


class Skip(NamedTuple):
    """A file (or metadata line) left out; ``reason`` reads ``"<kind>: <detail>"``."""

    path: str
    reason: str

    @property
    def kind(self) -> str:
        return self.reason.split(":", 1)[0]


@dataclass
class FolderReport:
    """What ``scan_folder`` found: usable ``items``, ``skipped`` files, and ``notes`` on kept ones."""

    root: str
    items: list[Item] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    notes: list[tuple[str, str]] = field(default_factory=list)

    def skip_counts(self) -> dict[str, int]:
        """How many files were skipped for each kind of reason, most common first."""
        return dict(collections.Counter(s.kind for s in self.skipped).most_common())

    def summary(self, detail: bool = False) -> str:
        """One line: usable count and skip counts; with ``detail``, one more line per skip and note."""
        counts = ", ".join(f"{n} {k}" for k, n in self.skip_counts().items())
        line = f"{len(self.items)} usable image-caption pairs in {self.root}"
        line += f"; skipped {len(self.skipped)} ({counts})" if self.skipped else "; nothing skipped"
        if self.notes:
            line += f"; {len(self.notes)} notes"
        if not detail:
            return line
        rows = [f"  skipped {p}: {r}" for p, r in self.skipped] + [f"  note {p}: {m}" for p, m in self.notes]
        return "\n".join([line, *rows])

    @staticmethod
    def merge(reports: list[FolderReport]) -> FolderReport:
        """One report over several folders."""
        out = FolderReport(root=", ".join(r.root for r in reports))
        for r in reports:
            out.items += r.items
            out.skipped += r.skipped
            out.notes += r.notes
        return out


class NoUsableImagesError(ValueError):
    """No usable image-caption pair in the folder(s); the message says why and what to do."""


def require_usable(report: FolderReport, path: str | None = None) -> FolderReport:
    """Return ``report``, or raise ``NoUsableImagesError`` naming the folder, skip counts and layouts."""
    if report.items:
        return report
    where = path or report.root
    if report.skipped:
        counts = ", ".join(f"{n} {k}" for k, n in report.skip_counts().items())
        why = f"{len(report.skipped)} files were skipped ({counts})"
    else:
        why = "it holds no image files"
    raise NoUsableImagesError(f"No usable image-caption pair in {where!r}: {why}. {FORMATS_HELP}")


# ---------------------------------------------------------------- captions
class _Meta(NamedTuple):
    caption: object
    extra: dict
    where: str  # "DIR/metadata.jsonl:3"


# ---------------------------------------------------------------- scan
class _Scanner:
    """One pass over a folder tree; builds the ``FolderReport``."""

    def __init__(self, root: str, max_pixels: int, on_image: Callable[[Item, Image.Image], None] | None,
                 empty_captions: bool = False):
        self.root, self.max_pixels, self.on_image = root, max_pixels, on_image
        self.empty_captions = empty_captions
        self.report = FolderReport(root=root)
        self.meta: dict[str, _Meta] = {}  # normalised image path -> metadata entry
        self.used_meta: set[str] = set()
        self.txt_users: dict[str, list[str]] = collections.defaultdict(list)

    def _skip(self, path: str, reason: str) -> None:
        self.report.skipped.append(Skip(path, reason))

    def run(self) -> FolderReport:
        for dirpath, files in self._walk():
            for name in files:
                if name.lower() in METADATA_NAMES:
                    self._read_metadata(os.path.join(dirpath, name))
            images = [n for n in files if n.lower().endswith(IMAGE_EXTS)]
            for name in images:
                self._add_image(os.path.join(dirpath, name), name)
            stems = {os.path.splitext(n)[0] for n in images} | set(images)
            for name in (n for n in files if n.lower().endswith(".txt") and n[0] != "."):
                if os.path.splitext(name)[0] not in stems:
                    self._skip(os.path.join(dirpath, name), "caption without image: no image with this name")
        self._leftovers()
        return self.report

    def _walk(self):
        """``os.walk`` in sorted order; follows folder symlinks, never into a loop nor twice into a folder."""
        seen: set[str] = set()

        def onerror(e: OSError) -> None:
            self._skip(e.filename, f"unreadable: {e.strerror}")

        for dirpath, dirnames, filenames in os.walk(self.root, onerror=onerror, followlinks=True):
            real = os.path.realpath(dirpath)
            seen.add(real)
            keep = []
            for d in sorted(dirnames):
                full = os.path.join(dirpath, d)
                target = os.path.realpath(full)
                if d.startswith(".") or d == "__MACOSX":
                    continue
                if real == target or real.startswith(target.rstrip(os.sep) + os.sep):
                    self._skip(full, f"symlink loop: links back to its own parent {target}")
                elif target in seen:
                    self._skip(full, f"duplicate folder: {target} was already scanned")
                else:
                    seen.add(target)
                    keep.append(d)
            dirnames[:] = keep
            yield dirpath, sorted(filenames)

    def _read_metadata(self, meta_path: str) -> None:
        base = os.path.dirname(meta_path)
        enc, rows = metadata_rows(meta_path)
        if guessed(enc):
            self.report.notes.append((meta_path, f"not UTF-8, decoded as {enc}"))
        for n, row, problem in rows:
            where = f"{meta_path}:{n}"
            if problem:
                self._skip(where, problem)
                continue
            if not isinstance(row, dict) or not row.get("file_name"):
                self._skip(where, "bad metadata: no file_name")
                continue
            rel = str(row["file_name"])
            key = os.path.normpath(os.path.join(base, rel))
            if os.path.isabs(rel) or os.path.relpath(key, base).split(os.sep)[0] == "..":
                self._skip(where, f"bad metadata: file_name {rel!r} points outside its folder")
                continue
            if key in self.meta:
                self._skip(where, f"duplicate entry: {rel!r} is already listed at {self.meta[key].where}")
                continue
            cap_key = next((k for k in CAPTION_KEYS if k in row), None)
            extra = {k: v for k, v in row.items() if k not in ("file_name", cap_key)}
            self.meta[key] = _Meta(row.get(cap_key) if cap_key else None, extra, where)

    def _add_image(self, full: str, name: str) -> None:
        if name.startswith("."):
            self._skip(full, "hidden file: dotfile or macOS '._' resource fork")
            return
        item = self._pair(full)
        if isinstance(item, str):
            self._skip(full, item)
            return
        problem = _file_problem(full)
        rgb, problem = (None, problem) if problem else check_image(full, self.max_pixels)
        if problem:
            self._skip(full, problem)
            return
        self.report.items.append(item)
        if self.on_image is not None:
            self.on_image(item, rgb)

    def _pair(self, full: str) -> Item | str:
        """The Item for image ``full`` (caption from metadata, else from a .txt), or a skip reason."""
        key = os.path.normpath(full)
        if key in self.meta:
            self.used_meta.add(key)
            m = self.meta[key]
            if m.caption is None:
                return f"no caption: {m.where} has no 'text' field"
            if not isinstance(m.caption, (str, int, float)):
                return f"bad caption: {m.where} has a {type(m.caption).__name__}, not a string"
            caption, extra, where = clean_caption(str(m.caption)), m.extra, m.where
        else:
            txt = _caption_file(full)
            if txt is None:
                return "no caption: no same-name .txt file and not listed in a metadata.jsonl / captions.csv"
            try:
                too_big = caption_file_problem(txt)
                text, enc = ("", "") if too_big else read_text(txt)
            except OSError as e:
                return f"unreadable: caption file {txt}: {e.strerror or e}"
            if too_big:
                return too_big
            if guessed(enc):
                self.report.notes.append((txt, f"not UTF-8, decoded as {enc}: {clean_caption(text)[:60]!r}"))
            self.txt_users[txt].append(full)
            caption, extra, where = clean_caption(text), {}, None
        problem = None if self.empty_captions and not caption else caption_problem(caption, where)
        if problem:
            return problem
        return Item(path=full, caption=caption, extra=extra)

    def _leftovers(self) -> None:
        """Metadata entries without a file; caption files shared by two images (both kept, noted)."""
        for key, m in self.meta.items():
            if key not in self.used_meta:
                self._skip(m.where, f"missing file: {key} is listed but not found")
        for txt, users in self.txt_users.items():
            if len(users) > 1:
                names = " and ".join(os.path.basename(u) for u in users)
                self.report.notes.append((txt, f"shared caption: {names} both use it; kept both"))


def _caption_file(img_path: str) -> str | None:
    """``cat.txt`` (or ``cat.TXT``, ``cat.png.txt``) beside ``cat.png``, if it exists."""
    stem = os.path.splitext(img_path)[0]
    for txt in (stem + ".txt", stem + ".TXT", img_path + ".txt"):
        if os.path.isfile(txt):
            return txt
    return None


def _file_problem(path: str) -> str | None:
    """A reason to skip before opening: broken link, not a regular file (never open a pipe), zero bytes."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "unreadable: broken symlink" if os.path.islink(path) else "unreadable: file vanished"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file: a pipe, socket or device"
    if st.st_size == 0:
        return "empty file: 0 bytes"
    return None


def scan_folder(
    path: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_image: Callable[[Item, Image.Image], None] | None = None,
    empty_captions: bool = False,
) -> FolderReport:
    """Find every usable image-caption pair under ``path``; skip (with a reason) everything else.

    Every image is opened and fully decoded once; ``on_image(item, rgb)`` receives the decoded
    RGB image of each usable item (the dataset uses it to preload without decoding twice).
    ``empty_captions`` keeps images whose caption is blank (the unconditional prompt: the model's own
    drawings with no prompt); a user's folder skips them.
    Raises ``FileNotFoundError`` / ``NotADirectoryError`` for a bad path, never for a bad file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"image folder {path!r} does not exist. {FORMATS_HELP}")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{path!r} is a file; give the folder that holds the images. {FORMATS_HELP}")
    return _Scanner(path, max_pixels, on_image, empty_captions).run()


# ---------------------------------------------------------------- dataset
class ImageCaptionDataset(torch.utils.data.Dataset):
    """All usable image-caption pairs of one or several folders, as ``size`` x ``size`` tensors.

    ``ds[i]`` is ``{"pixels": (3, S, S) float in [-1, 1], "caption": str, "index": i}``.
    ``hflip=True`` doubles the set deterministically (index ``i + len(items)`` is item ``i``
    mirrored), so a resumed run sees the same samples; it is off by default because captions
    may say "left" and "right". ``preload=True`` keeps the small uint8 images in memory.
    """

    def __init__(self, folders: list[str] | str, size: int, hflip: bool = False, preload: bool = True,
                 max_pixels: int = DEFAULT_MAX_PIXELS, empty_captions: bool = False):
        folders = [folders] if isinstance(folders, (str, os.PathLike)) else list(folders)
        if not folders:
            raise ValueError("ImageCaptionDataset needs at least one folder")
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.size, self.hflip = int(size), bool(hflip)
        self._cache: dict[str, torch.Tensor] = {}

        def keep(item: Item, rgb: Image.Image) -> None:
            self._cache[item.path] = self._to_uint8(rgb)

        reports = [scan_folder(f, max_pixels=max_pixels, on_image=keep if preload else None,
                               empty_captions=empty_captions) for f in folders]
        self.reports = reports
        self.report = FolderReport.merge(reports)
        require_usable(self.report, ", ".join(map(str, folders)))
        self.items: list[Item] = self.report.items
        if self.report.skipped:
            log.warning("%s (run `latentgen data check` for the list)", self.report.summary())
        else:
            log.info("%s", self.report.summary())

    def _to_uint8(self, rgb: Image.Image) -> torch.Tensor:
        a = np.asarray(resize_center_crop(rgb, self.size), dtype=np.uint8)  # (S, S, 3)
        return torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous()  # (3, S, S)

    def __len__(self) -> int:
        return len(self.items) * (2 if self.hflip else 1)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)}")
        item = self.items[i % len(self.items)]
        x = self._cache.get(item.path)
        if x is None:
            x = self._to_uint8(load_rgb(item.path))
        pixels = x.float() / 127.5 - 1.0  # (3, S, S) in [-1, 1]
        if i >= len(self.items):
            pixels = pixels.flip(-1)
        return {"pixels": pixels, "caption": item.caption, "index": i}

    @property
    def captions(self) -> list[str]:
        return [it.caption for it in self.items]
