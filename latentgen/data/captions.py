"""Caption text for the image-folder scanner: caption files, metadata.jsonl and captions.csv rows.

Everything here is bounded: a metadata line over ``MAX_METADATA_LINE_CHARS`` is reported
without being parsed, a JSON line nested too deeply or a CSV field over the ``csv`` module's
limit is a reported line rather than a crash, and a caption over ``MAX_CAPTION_CHARS`` is
refused. Problems come back as reasons (``"<kind>: <detail>: <fix>"``); the scanner reports them.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator

from latentgen.limits import MAX_CAPTION_CHARS

METADATA_FILE = "metadata.jsonl"  # the caption file the data writers write
METADATA_NAMES = (METADATA_FILE, "captions.jsonl", "metadata.csv", "captions.csv")  # the ones scanned
MAX_METADATA_LINE_CHARS = 1_000_000  # a metadata line (or a caption file) longer than this is not read
ONE_OBJECT_PER_LINE = 'write one flat JSON object per line, {"file_name": "cat.png", "text": "a cat"}'


def read_text(path: str) -> tuple[str, str]:
    """Read a caption/metadata file as (text, encoding): BOMs first, then utf-8, cp1252, latin-1."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16"), "utf-16"
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw.decode("utf-8-sig"), "utf-8-sig"
    for enc in ("utf-8", "cp1252"):
        try:
            return raw.decode(enc), enc
        except UnicodeDecodeError:
            pass
    return raw.decode("latin-1"), "latin-1"


def clean_caption(text: str) -> str:
    """Collapse whitespace (newlines included) into single spaces."""
    return " ".join(text.split())


def guessed(enc: str) -> bool:
    """Whether ``read_text`` had to guess a legacy 8-bit encoding (then the report says so)."""
    return enc in ("cp1252", "latin-1")


def caption_problem(caption: str, where: str | None = None) -> str | None:
    """A skip reason for a cleaned caption that is blank or over ``MAX_CAPTION_CHARS``, else None.

    ``where`` (e.g. ``"DIR/metadata.jsonl:4"``) is named in the reason when the caption came from there.
    """
    if not caption:
        return "empty caption: the caption is blank"
    if len(caption) > MAX_CAPTION_CHARS:
        source = f"the caption at {where}" if where else "the caption"
        return (f"caption too long: {source} is {len(caption):,} characters, over the {MAX_CAPTION_CHARS:,} "
                "limit: shorten it (the text encoder reads only the first 77 tokens)")
    return None


def caption_file_problem(path: str) -> str | None:
    """A skip reason for a caption file too large to hold a caption (it is then never read), else None."""
    size = os.path.getsize(path)
    if size > MAX_METADATA_LINE_CHARS:
        return (f"caption too long: {os.path.basename(path)} is {size:,} bytes, over the "
                f"{MAX_CAPTION_CHARS:,}-character caption limit: shorten it")
    return None


def _too_long(line: str) -> str:
    return (f"bad metadata: line too long ({len(line):,} characters, over {MAX_METADATA_LINE_CHARS:,}), "
            f"not read: {ONE_OBJECT_PER_LINE} with a caption of at most {MAX_CAPTION_CHARS:,} characters")


def _jsonl_rows(text: str) -> Iterator[tuple[int, object, str | None]]:
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if len(line) > MAX_METADATA_LINE_CHARS:
            yield n, None, _too_long(line)
            continue
        try:
            yield n, json.loads(line), None
        except RecursionError:
            yield n, None, f"bad metadata: JSON nested too deeply: {ONE_OBJECT_PER_LINE}"
        except json.JSONDecodeError as e:
            yield n, None, f"bad metadata: invalid JSON ({e.msg}): {ONE_OBJECT_PER_LINE}"
        except ValueError as e:  # e.g. an integer over Python's 4,300-digit conversion limit
            yield n, None, f"bad metadata: unreadable JSON ({e}): {ONE_OBJECT_PER_LINE}"


def _csv_rows(text: str) -> Iterator[tuple[int, object, str | None]]:
    line_no, too_long = 0, []

    def lines():
        nonlocal line_no
        for line_no, line in enumerate(io.StringIO(text), 1):
            if len(line) > MAX_METADATA_LINE_CHARS:
                too_long.append((line_no, _too_long(line.rstrip("\r\n"))))
            else:
                yield line

    reader = csv.DictReader(lines())
    while True:
        try:
            row, problem = next(reader), None
        except StopIteration:
            row, problem = None, "end"
        except csv.Error as e:  # e.g. a field over the csv module's 131,072-character limit
            row, problem = None, (f"bad metadata: unreadable CSV row ({e}): give each image one row "
                                  f"file_name,text with a caption of at most {MAX_CAPTION_CHARS:,} characters "
                                  "(an unclosed quote makes one huge field)")
        yield from ((n, None, reason) for n, reason in too_long)
        too_long.clear()
        if problem == "end":
            return
        yield line_no, None if row is None else {k: v for k, v in row.items() if k is not None}, problem


def metadata_rows(meta_path: str) -> tuple[str, Iterator[tuple[int, object, str | None]]]:
    """The encoding of a metadata.jsonl / captions.csv and its rows as ``(line number, row, problem)``.

    ``row`` is the parsed JSON value or CSV dict when ``problem`` is None; a line that cannot
    be read has ``row`` None and a skip reason.
    """
    text, enc = read_text(meta_path)
    rows = _jsonl_rows(text) if meta_path.lower().endswith(".jsonl") else _csv_rows(text)
    return enc, rows
