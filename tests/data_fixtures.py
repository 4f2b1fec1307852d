"""Build image folders for tests: ``make_messy_folder`` holds one of every kind of broken file.

Reusable from any test: ``messy = make_messy_folder(tmp_path)``; ``messy.path`` is the folder,
``messy.skips`` maps each bad file's name to the reason kind the scan must give, and
``messy.captions`` / ``messy.colours`` give what each usable image must come out as.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


@dataclass
class MessyFolder:
    path: Path
    captions: dict[str, str] = field(default_factory=dict)  # usable file name -> caption
    colours: dict[str, dict[tuple[int, int], tuple]] = field(default_factory=dict)  # name -> {(x, y): rgb}
    skips: dict[str, str] = field(default_factory=dict)  # skipped file name -> reason kind
    notes: set[str] = field(default_factory=set)  # file names the report must note (kept anyway)


def solid(colour, size=(16, 16), mode="RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def huge_png(path: Path, side: int = 10_000) -> None:
    """A ``side`` x ``side`` 1-bit black PNG written by hand (a few KB on disk, 100 MP decoded)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        return struct.pack(">I", len(data)) + tag + data + crc

    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def _good(m: MessyFolder, name: str, img: Image.Image, caption: str, colours: dict, **save) -> None:
    img.save(m.path / name, **save)
    (m.path / (Path(name).stem + ".txt")).write_text(caption, encoding="utf-8")
    m.captions[name] = caption
    m.colours[name] = colours


def _bad(m: MessyFolder, name: str, kind: str, caption: str | None = "a caption") -> Path:
    if caption is not None:
        (m.path / (Path(name).stem + ".txt")).write_text(caption, encoding="utf-8")
    m.skips[name] = kind
    return m.path / name


def make_messy_folder(tmp_path: Path) -> MessyFolder:
    """A folder of ``.txt``-captioned images: tricky-but-fine ones, and one of each broken kind."""
    m = MessyFolder(path=Path(tmp_path) / "messy")
    m.path.mkdir(parents=True)

    # usable, with colour traps (a naive convert("RGB") gets these wrong)
    _good(m, "red.png", solid(RED), "a red square", {(8, 8): RED})
    _good(m, "cmyk.jpg", solid((0, 255, 255, 0), mode="CMYK"), "a cmyk red square", {(8, 8): RED}, quality=95)
    pal = Image.new("P", (16, 16), 0)
    pal.putpalette([0, 0, 0, 0, 0, 255])  # index 0 black (transparent), index 1 blue
    pal.paste(1, (8, 0, 16, 16))
    _good(m, "palette.png", pal, "blue on the right", {(2, 8): WHITE, (12, 8): BLUE}, transparency=0)
    grey16 = Image.fromarray(np.full((16, 16), 0x8080, np.uint16))  # mode I;16, mid grey
    _good(m, "grey16.png", grey16, "a grey square", {(8, 8): (128, 128, 128)})
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 8, 16))
    _good(m, "rgba.png", rgba, "red on the left", {(2, 8): RED, (12, 8): WHITE})
    la = Image.new("LA", (16, 16), (0, 0))
    _good(m, "la.png", la, "nothing at all", {(8, 8): WHITE})
    _good(m, "grey.png", solid(64, mode="L"), "a dark grey square", {(8, 8): (64, 64, 64)})
    tall = Image.new("RGB", (20, 10), BLUE)  # stored wide, blue left / red right
    tall.paste(RED, (10, 0, 20, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 clockwise to display -> 10 wide x 20 tall, blue on top
    _good(m, "rotated.jpg", tall, "blue above red", {(5, 3): BLUE, (5, 16): RED}, exif=exif, quality=95)
    # same name, two images, one caption: both kept, noted
    solid(RED).save(m.path / "twin.png")
    solid(BLUE).save(m.path / "twin.jpg")
    (m.path / "twin.txt").write_text("a twin", encoding="utf-8")
    m.captions |= {"twin.png": "a twin", "twin.jpg": "a twin"}
    m.notes.add("twin.txt")
    # captions in other encodings
    solid(RED).save(m.path / "cp1252.png")
    (m.path / "cp1252.txt").write_bytes("café ’quoted’".encode("cp1252"))
    m.captions["cp1252.png"] = "café ’quoted’"
    m.notes.add("cp1252.txt")
    solid(RED).save(m.path / "utf16.png")
    (m.path / "utf16.txt").write_bytes("naïve 😀 caption".encode("utf-16"))  # with BOM
    m.captions["utf16.png"] = "naïve 😀 caption"
    solid(RED).save(m.path / "utf8sig.png")
    (m.path / "utf8sig.txt").write_bytes("\ufeffbom caption\n".encode("utf-8"))
    m.captions["utf8sig.png"] = "bom caption"
    sub = m.path / "sub"
    sub.mkdir()
    solid(BLUE).save(sub / "nested.png")
    (sub / "nested.txt").write_text("a nested\nblue   square\n", encoding="utf-8")
    m.captions["nested.png"] = "a nested blue square"

    # broken, each skipped with a reason
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, "JPEG")
    _bad(m, "truncated.jpg", "corrupt image").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _bad(m, "zero.png", "empty file").write_bytes(b"")
    _bad(m, "text.png", "not an image").write_text("this is not a picture\n")
    os.symlink(m.path / "no_such_target.png", _bad(m, "dangling.png", "unreadable"))
    if hasattr(os, "mkfifo"):  # a pipe must be skipped, never opened (opening one would block)
        os.mkfifo(_bad(m, "pipe.png", "not a regular file"))
    solid(RED).save(_bad(m, "nocap.png", "no caption", caption=None))
    solid(RED).save(_bad(m, "emptycap.png", "empty caption", caption="  \n\t"))
    huge_png(_bad(m, "huge.png", "too many pixels"))
    solid(RED).save(_bad(m, "._red.png", "hidden file", caption=None))
    (m.path / "orphan.txt").write_text("a caption with no image")
    m.skips["orphan.txt"] = "caption without image"
    os.symlink("..", sub / "loop")  # sub/loop -> the messy folder itself
    m.skips["loop"] = "symlink loop"
    return m


def write_metadata_folder(root: Path, fmt: str, rows: list[dict]) -> Path:
    """A folder whose captions live in ``metadata.jsonl`` (fmt="jsonl") or ``captions.csv`` (fmt="csv").

    Each row needs ``file_name``, ``colour`` (the image to draw) and usually ``text``; sub-folders
    in ``file_name`` are created.
    """
    root.mkdir(parents=True, exist_ok=True)
    for row in rows:
        p = root / row["file_name"]
        p.parent.mkdir(parents=True, exist_ok=True)
        solid(tuple(row["colour"])).save(p)
    if fmt == "jsonl":
        with open(root / "metadata.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    else:
        import csv

        keys = list(dict.fromkeys(k for row in rows for k in row))
        with open(root / "captions.csv", "w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
    return root
