"""Noto Color Emoji and Twemoji beside OpenMoji: where each is found, which emoji it has, each on white.

Every style is drawn as OpenMoji is (``latentgen.data.emoji``): centred on its ink, on white, scaled so
that a round face spans the share of the image that OpenMoji's does (172 of every 256 pixels), so the
styles differ in drawing, not in zoom. Names come from the ``emoji`` package, as OpenMoji's do.

* ``noto``: Noto Color Emoji (SIL OFL 1.1), the Debian package ``fonts-noto-color-emoji``. A CBDT bitmap
  font: FreeType draws its colour bitmaps only at their own size, 109 (136 x 128 pixel glyphs), so each
  is drawn there and resized. Its emoji are the ``emoji`` package's (fully qualified, and components)
  that the font draws as one glyph. A folder of the noto-emoji repository's PNGs at that size
  (``png/128/emoji_u1f600.png``) serves as well.
* ``twemoji``: Twemoji (graphics CC BY 4.0) from the npm package ``emoji-datasource-twitter``, whose
  ``img/twitter/64/`` holds a 64 px PNG per emoji, named by code points (``1f468-200d-1f4bb.png``).

Each is looked for in this order: the ``where`` argument (``--source``), the environment variable
(``LATENTGEN_NOTO_FONT``: the font file or PNG folder; ``LATENTGEN_TWEMOJI_DIR``: the package folder or
its PNG folder), then the usual places (``NOTO_PLACES``, ``twemoji_places()``). A source named
explicitly but not usable is an error, not skipped; none found is an error naming what to install.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, features

from latentgen.data.images import DEFAULT_SIZE

FACE_SHARE = 172 / 256  # OpenMoji's grinning face spans 172 of 256 pixels (latentgen.data.emoji)

NOTO_SIZE = 109  # the only size of the font's bitmaps
NOTO_FACE_PX = 117  # its grinning face is 117 pixels wide at that size (136 x 128 glyphs)
NOTO_ENV = "LATENTGEN_NOTO_FONT"
NOTO_INSTALL = "apt-get install -y fonts-noto-color-emoji"
NOTO_PLACES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",  # Debian, Ubuntu
    "/usr/share/fonts/google-noto-color-emoji-fonts/NotoColorEmoji.ttf",  # Fedora
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",  # Arch
)

TWEMOJI_PACKAGE = "emoji-datasource-twitter"
TWEMOJI_FACE_PX = 64  # its grinning face fills the 64 px image
TWEMOJI_ENV = "LATENTGEN_TWEMOJI_DIR"
TWEMOJI_INSTALL = f"npm install --prefix ~/.cache/latentgen/npm {TWEMOJI_PACKAGE}"
TWEMOJI_PNGS = os.path.join("img", "twitter", "64")


# ---------------------------------------------------------------- shared
def is_blank(img: Image.Image, tol: int = 8) -> bool:
    """Whether every pixel is within ``tol`` of white."""
    return int(np.asarray(img).min()) >= 255 - tol


def on_white(glyph: Image.Image, tile: int, size: int) -> Image.Image | None:
    """``glyph`` (with alpha) centred on its ink in a white ``tile`` x ``tile`` square, resized to
    ``size`` x ``size`` RGB; None when it has no ink or comes out blank."""
    glyph = glyph.convert("RGBA")
    box = glyph.getchannel("A").getbbox()
    if box is None:
        return None
    ink = glyph.crop(box)
    if max(ink.size) > tile:  # never expected: each style's ink fits its tile
        ink.thumbnail((tile, tile), Image.Resampling.LANCZOS)
    square = Image.new("RGBA", (tile, tile), (255, 255, 255, 255))
    square.alpha_composite(ink, ((tile - ink.width) // 2, (tile - ink.height) // 2))
    img = square.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    return None if is_blank(img) else img


def parse_codepoints(stem: str) -> str:
    """A file name's code points as the emoji: ``1f468-200d-1f4bb`` or ``emoji_u1f468_200d_1f4bb``."""
    hexes = stem.removeprefix("emoji_u").replace("_", "-").split("-")
    return "".join(chr(int(h, 16)) for h in hexes)


def _png_index(folder: Path) -> dict[str, Path]:
    """Emoji -> PNG for every ``*.png`` of ``folder`` named by code points (others ignored)."""
    index = {}
    for path in sorted(folder.glob("*.png")):
        try:
            index[parse_codepoints(path.stem)] = path
        except ValueError:
            continue
    return index


def _tile(face_px: int) -> int:
    """The side, in source pixels, that makes a face of ``face_px`` span ``FACE_SHARE`` of it."""
    return round(face_px / FACE_SHARE)


def _named(place: str | None, how: str) -> list[tuple[str, str]]:
    return [(os.path.expanduser(place), how)] if place else []


# ---------------------------------------------------------------- sources
class PngSource:
    """Emoji from a folder of PNGs named by code points, each on white (``tile``: see ``on_white``)."""

    def __init__(self, style: str, folder: Path, tile: int):
        self.style, self.where, self.tile = style, str(folder), tile
        self.index = _png_index(folder)
        if not self.index:
            raise FileNotFoundError(f"{folder} holds no PNG named by code points (e.g. 1f600.png): "
                                    f"give the {style} images' folder")

    def sequences(self) -> list[str]:
        return list(self.index)

    def has(self, seq: str) -> bool:
        return seq in self.index

    def render(self, seq: str, size: int = DEFAULT_SIZE) -> Image.Image | None:
        if seq not in self.index:
            return None
        with Image.open(self.index[seq]) as im:
            return on_white(im, self.tile, size)


class NotoFontSource:
    """Noto Color Emoji's font file: each emoji drawn at the bitmaps' own size, then put on white."""

    style = "noto"

    def __init__(self, path: str):
        self.where = path
        engine = ImageFont.Layout.RAQM if features.check("raqm") else ImageFont.Layout.BASIC
        try:
            self.font = ImageFont.truetype(path, size=NOTO_SIZE, layout_engine=engine)
        except OSError as e:
            raise FileNotFoundError(f"{path} is not a font FreeType can open at size {NOTO_SIZE} ({e}): "
                                    f"give Noto Color Emoji's NotoColorEmoji.ttf ({NOTO_INSTALL})") from None
        self.advance = self.font.getlength("\U0001F600")

    def sequences(self) -> list[str]:
        """The ``emoji`` package's fully qualified emoji and components, in code-point order."""
        import emoji

        keep = (emoji.STATUS["fully_qualified"], emoji.STATUS["component"])
        seqs = [s for s, d in emoji.EMOJI_DATA.items() if d["status"] in keep]
        return sorted(seqs, key=lambda s: [ord(c) for c in s])

    def has(self, seq: str) -> bool:
        """Whether the font shapes ``seq`` into one glyph with ink (a missing glyph draws nothing)."""
        _, top, _, bottom = self.font.getbbox(seq)
        return abs(self.font.getlength(seq) - self.advance) < 1 and bottom > top

    def render(self, seq: str, size: int = DEFAULT_SIZE) -> Image.Image | None:
        if not self.has(seq):
            return None
        canvas = Image.new("RGBA", (3 * NOTO_SIZE, 3 * NOTO_SIZE), (0, 0, 0, 0))
        centre = (3 * NOTO_SIZE // 2,) * 2
        ImageDraw.Draw(canvas).text(centre, seq, font=self.font, anchor="mm", embedded_color=True)
        # drawn on transparent black, the colours come out premultiplied by alpha: read them so
        glyph = Image.frombytes("RGBa", canvas.size, canvas.tobytes()).convert("RGBA")
        return on_white(glyph, _tile(NOTO_FACE_PX), size)


def open_noto(where: str | None = None) -> NotoFontSource | PngSource:
    """Noto Color Emoji: a font file or a folder of its PNGs, looked for as the module docstring says."""
    for place, how in _named(where, "--source") + _named(os.environ.get(NOTO_ENV), NOTO_ENV):
        if os.path.isdir(place):
            return PngSource("noto", Path(place), _tile(NOTO_FACE_PX))
        if os.path.isfile(place):
            return NotoFontSource(place)
        raise FileNotFoundError(f"{how} {place}: no such file or folder: give NotoColorEmoji.ttf or a "
                                "folder of Noto's emoji_u*.png")
    for place in NOTO_PLACES:
        if os.path.isfile(place):
            return NotoFontSource(place)
    raise FileNotFoundError(f"the noto style needs the Noto Color Emoji font, not found at {', '.join(NOTO_PLACES)}: "
                            f"install it with `{NOTO_INSTALL}`, or give its path with --source or {NOTO_ENV}")


def twemoji_places() -> list[str]:
    """Where ``emoji-datasource-twitter`` is looked for when no folder is given."""
    return [os.path.expanduser(f"~/.cache/latentgen/npm/node_modules/{TWEMOJI_PACKAGE}"),
            os.path.join(os.getcwd(), "node_modules", TWEMOJI_PACKAGE),
            f"/usr/local/lib/node_modules/{TWEMOJI_PACKAGE}", f"/usr/lib/node_modules/{TWEMOJI_PACKAGE}"]


def _twemoji_pngs(place: str) -> Path | None:
    """The PNG folder of a package folder (``img/twitter/64``), or ``place`` itself if it holds PNGs."""
    p = Path(place)
    if (p / TWEMOJI_PNGS).is_dir():
        return p / TWEMOJI_PNGS
    return p if p.is_dir() and any(p.glob("*.png")) else None


def open_twemoji(where: str | None = None) -> PngSource:
    """Twemoji's 64 px PNGs, looked for as the module docstring says."""
    for place, how in _named(where, "--source") + _named(os.environ.get(TWEMOJI_ENV), TWEMOJI_ENV):
        folder = _twemoji_pngs(place)
        if folder is None:
            raise FileNotFoundError(f"{how} {place}: not {TWEMOJI_PACKAGE}'s folder (no {TWEMOJI_PNGS}/) "
                                    "nor a folder of its PNGs: give the package folder")
        return PngSource("twemoji", folder, _tile(TWEMOJI_FACE_PX))
    for place in twemoji_places():
        folder = _twemoji_pngs(place)
        if folder is not None:
            return PngSource("twemoji", folder, _tile(TWEMOJI_FACE_PX))
    raise FileNotFoundError(f"the twemoji style needs the npm package {TWEMOJI_PACKAGE}, not found in "
                            f"{', '.join(twemoji_places())}: install it with `{TWEMOJI_INSTALL}`, or give its "
                            f"folder with --source or {TWEMOJI_ENV}")
