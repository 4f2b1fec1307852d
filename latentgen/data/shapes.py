"""The shapes benchmark (``specs/shapes.md``): scenes, renders, captions, prompts and an analytic checker.

A scene is 1 to 3 coloured shapes on a 3 x 3 grid of a white square canvas.  Every
image drawn here can be checked against its prompt by :func:`check_image`, with no
learning: pixels are unmixed against the six palette colours, blobs are found by
connected components, and each blob's shape is the template (circle, square,
triangle) that best explains its coverage map.  Uses Pillow, numpy and the standard
library only.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

# ---------------------------------------------------------------- the spec's vocabulary
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "purple": (150, 50, 200),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Shapes outside the spec, for measuring a fine-tune that teaches a new shape word: drawn and checked like the
# spec's (half-width r, centred on the cell's jittered centre), never in the benchmark's scenes.
EXTRA_SHAPES: tuple[str, ...] = ("hexagon", "star")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # row-major: index = 3 * row + col
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "square"), ("orange", "triangle"), ("green", "circle")}
)
# training-only colours outside the palette (words of the tokenizer from OpenMoji's names), each drawn with every
# shape: data in which colour and shape vary independently (bench/results/ship/README.md)
EXTRA_COLORS: dict[str, tuple[int, int, int]] = {
    "pink": (240, 110, 190),
    "brown": (130, 80, 35),
    "black": (25, 25, 25),
    "grey": (130, 130, 130),
    "cyan": (30, 200, 220),
}



def names_heldout_pair(text: str) -> tuple[str, str] | None:
    """The held-out pair a caption names (a colour word right before a shape word), else None.

    ``"a large green circle at top"`` and OpenMoji's ``"green circle"`` both name ("green", "circle"),
    so any training set, not only the shapes one, can leave the pairs out (spec: *Held-out compositions*).
    """
    words = re.findall(r"[a-z]+", text.lower())
    for colour, shape in zip(words, words[1:]):
        pair = (colour, shape[:-1] if shape.endswith("s") and shape[:-1] in SHAPES else shape)
        if pair in HELDOUT_PAIRS:
            return pair
    return None


SIZE_K = {"small": 0.45, "large": 0.85}  # r = k * cell / 2
R_JITTER = (0.9, 1.1)  # times r
CENTER_JITTER = 0.07  # times cell, each axis
SUPERSAMPLE = 4
BACKGROUND = (255, 255, 255)
MIN_SIZE = 12  # smallest canvas side drawn or checked (the checker is reliable from 24 up)

_ATTRS = {"shape": SHAPES + EXTRA_SHAPES, "color": tuple(COLORS), "size": SIZES, "position": POSITIONS}


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene or a prompt; an attribute of ``None`` is free (not named)."""

    shape: str | None = None
    color: str | None = None
    size: str | None = None
    position: str | None = None

    def __post_init__(self):
        for name, allowed in _ATTRS.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; use one of {', '.join(allowed)} "
                                 "(or None for free)")

    @property
    def complete(self) -> bool:
        return None not in (self.shape, self.color, self.size, self.position)

    def to_dict(self) -> dict:
        return {"shape": self.shape, "color": self.color, "size": self.size, "position": self.position}

    @classmethod
    def from_dict(cls, d: dict) -> ShapeObject:
        unknown = set(d) - set(_ATTRS)
        if unknown:
            raise ValueError(f"ShapeObject has no field(s) {sorted(unknown)}; fields are {list(_ATTRS)}")
        return cls(**d)


# ---------------------------------------------------------------- sampling
def _shapes_for(color: str, include_heldout: bool) -> list[str]:
    return [s for s in SHAPES if include_heldout or (color, s) not in HELDOUT_PAIRS]


def sample_scene(rng: random.Random, include_heldout: bool = False, n_objects: int | None = None,
                 require_heldout: bool = False) -> list[ShapeObject]:
    """1 to 3 objects (uniformly), distinct colours, distinct cells, uniform shape/size/position.

    Held-out colour-shape pairs are never drawn unless ``include_heldout``;
    ``require_heldout`` makes one object (at a random place in the list) a held-out pair.
    """
    n = rng.randint(1, 3) if n_objects is None else n_objects
    if not 1 <= n <= 3:
        raise ValueError(f"n_objects must be 1, 2 or 3 (got {n})")
    cells = rng.sample(POSITIONS, n)
    forced = rng.choice(sorted(HELDOUT_PAIRS)) if require_heldout else None
    pool = [c for c in COLORS if forced is None or c != forced[0]]
    colors = rng.sample(pool, n - 1 if forced else n)
    objects = []
    if forced:
        objects.append(ShapeObject(forced[1], forced[0], rng.choice(SIZES), cells[0]))
    for color, cell in zip(colors, cells[1:] if forced else cells):
        shape = rng.choice(_shapes_for(color, include_heldout))
        objects.append(ShapeObject(shape, color, rng.choice(SIZES), cell))
    if forced:
        rng.shuffle(objects)
    return objects


# ---------------------------------------------------------------- rendering
def object_geometry(obj: ShapeObject, size: int, rng: random.Random) -> tuple[float, float, float]:
    """``(cx, cy, r)`` in pixels of a canvas of side ``size``, with the spec's jitter drawn from ``rng``."""
    cell = size / 3
    r = SIZE_K[obj.size] * cell / 2 * rng.uniform(*R_JITTER)
    row, col = divmod(POSITIONS.index(obj.position), 3)
    cx = (col + 0.5) * cell + rng.uniform(-CENTER_JITTER, CENTER_JITTER) * cell
    cy = (row + 0.5) * cell + rng.uniform(-CENTER_JITTER, CENTER_JITTER) * cell
    return cx, cy, r


def triangle_points(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Apex-up triangle of the spec: (cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)."""
    return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]


def polygon_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """An extra shape's corners: a hexagon (point up) or a five-pointed star (inner radius 0.45 r)
    inscribed in the circle of radius r."""
    if shape == "hexagon":
        radii, n = [r], 6
    elif shape == "star":
        radii, n = [r, 0.45 * r], 10
    else:
        raise ValueError(f"no polygon for {shape!r}: extra shapes are {', '.join(EXTRA_SHAPES)}")
    return [(cx + radii[k % len(radii)] * math.sin(2 * math.pi * k / n),
             cy - radii[k % len(radii)] * math.cos(2 * math.pi * k / n)) for k in range(n)]


def _polygon_area(points: list[tuple[float, float]]) -> float:
    """Shoelace formula."""
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))) / 2


def _draw(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon(triangle_points(cx, cy, r), fill=fill)
    else:
        draw.polygon(polygon_points(shape, cx, cy, r), fill=fill)


def _check_size(size: int) -> None:
    if not isinstance(size, int) or size < MIN_SIZE:
        raise ValueError(f"image size must be an int >= {MIN_SIZE} (got {size!r}); "
                         "the spec uses 32, 64, 128, ...")


def render_scene(objects: Iterable[ShapeObject], size: int, rng: random.Random,
                 fill: tuple[int, int, int] | None = None) -> Image.Image:
    """Draw ``objects`` at 4x on white, in list order, then reduce to ``size`` with ``Image.BOX``.

    ``fill``: draw every object in this RGB colour instead of its own, for a colour outside the
    palette (a new colour word to fine-tune on); the objects' ``color`` may then be None.
    """
    _check_size(size)
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in objects:
        if not (obj.complete or fill is not None and None not in (obj.shape, obj.size, obj.position)):
            raise ValueError(f"cannot render {obj}: every attribute must be named; "
                             "sample_scene gives complete objects")
        cx, cy, r = object_geometry(obj, size, rng)
        color = COLORS[obj.color] if fill is None else tuple(fill)
        _draw(draw, obj.shape, cx * SUPERSAMPLE, cy * SUPERSAMPLE, r * SUPERSAMPLE, color)
    return image.resize((size, size), Image.BOX)


# ---------------------------------------------------------------- captions
def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def _noun_phrase(words: list[str | None], shape: str | None) -> str:
    words = [w for w in words if w] + [shape or "shape"]
    return f"{_article(words[0])} {' '.join(words)}"


def canonical_clause(obj: ShapeObject) -> str:
    """``a {size} {colour} {shape} at {position}``; unnamed attributes are left out."""
    phrase = _noun_phrase([obj.size, obj.color], obj.shape)
    return f"{phrase} at {obj.position}" if obj.position else phrase


def canonical_caption(objects: Iterable[ShapeObject], rng: random.Random) -> str:
    """The spec's canonical caption: one clause per object, random order, joined by `` and ``."""
    clauses = [canonical_clause(o) for o in objects]
    if not clauses:
        raise ValueError("a caption needs at least one object")
    rng.shuffle(clauses)
    return " and ".join(clauses)


def _preposition(position: str, rng: random.Random) -> str:
    sides = ("left", "right", "top", "bottom")  # "on the left"; but not "on the top left" or "on the center"
    options = ("at", "at the", "in the") + (("on the",) if position in sides else ())
    return rng.choice(options)


def _paraphrase_clause(obj: ShapeObject, rng: random.Random) -> str:
    size = obj.size if rng.random() < 0.7 else None  # dropped sizes
    if rng.random() < 0.25 and obj.color:
        phrase = f"{_noun_phrase([size], obj.shape)} in {obj.color}"  # "a large circle in red"
    else:
        phrase = _noun_phrase([size, obj.color], obj.shape)
    if not obj.position:
        return phrase
    place = rng.randrange(3)
    where = f"{_preposition(obj.position, rng)} {obj.position}"
    if place == 0:
        return f"{phrase} {where}"  # "a red circle in the top left"
    if place == 1:
        return f"{where}, {phrase}"  # "in the top left, a red circle"
    return f"{obj.position}: {phrase}"  # "top left: a red circle"


def paraphrase_caption(objects: Iterable[ShapeObject], rng: random.Random) -> str:
    """A looser caption of the same scene: other prepositions and word orders, sizes sometimes dropped."""
    clauses = [_paraphrase_clause(o, rng) for o in objects]
    if not clauses:
        raise ValueError("a caption needs at least one object")
    rng.shuffle(clauses)
    joiner = rng.choice([" and ", ", ", "; "])
    return joiner.join(clauses)


def make_caption(objects: Iterable[ShapeObject], rng: random.Random, paraphrase_prob: float = 0.0) -> str:
    """The canonical caption, or with probability ``paraphrase_prob`` a paraphrase."""
    objects = list(objects)
    if paraphrase_prob > 0 and rng.random() < paraphrase_prob:
        return paraphrase_caption(objects, rng)
    return canonical_caption(objects, rng)


# ---------------------------------------------------------------- prompt parsing
_WORDS: dict[str, tuple[str, str | None]] = {}
for _c in COLORS:
    _WORDS[_c] = ("color", _c)
for _s in SHAPES:
    _WORDS[_s] = ("shape", _s)
for _n in ("shape", "object", "thing"):
    _WORDS[_n] = ("shape", None)
for _z in SIZES:
    _WORDS[_z] = ("size", _z)
for _p in POSITIONS:
    _WORDS[_p] = ("position", _p)
for _a, _b in (("centre", "center"), ("middle", "center"), ("upper", "top"), ("lower", "bottom")):
    _WORDS[_a] = ("position", _b)
for _v in ("upper", "lower"):
    for _h in ("left", "right"):
        _WORDS[f"{_v} {_h}"] = ("position", f"{'top' if _v == 'upper' else 'bottom'} {_h}")
for _sep in (",", ";", ":", ".", "!", "and"):
    _WORDS[_sep] = ("sep", None)
for _f in ("a", "an", "the", "at", "in", "on", "corner"):
    _WORDS[_f] = ("filler", None)

_GRAMMAR_HINT = ("prompts read like "
                 "'a large red circle at top left and a small blue triangle at bottom right' "
                 f"(colours {', '.join(COLORS)}; shapes {', '.join(SHAPES)}; sizes {', '.join(SIZES)}; "
                 f"positions {', '.join(POSITIONS)})")


def _tokens(text: str) -> list[tuple[str, str | None, str]]:
    words = re.sub(r"([,;:.!])", r" \1 ", text.lower().replace("-", " ")).split()
    out, i = [], 0
    while i < len(words):
        pair = " ".join(words[i:i + 2])
        if i + 1 < len(words) and pair in _WORDS:
            out.append((*_WORDS[pair], pair))
            i += 2
        elif words[i] in _WORDS:
            out.append((*_WORDS[words[i]], words[i]))
            i += 1
        else:
            raise ValueError(f"cannot parse prompt {text!r}: unknown word {words[i]!r}; {_GRAMMAR_HINT}")
    return out


def parse_prompt(text: str) -> list[ShapeObject]:
    """Objects named by a prompt in the canonical grammar or its paraphrases; unnamed attributes are None.

    Attributes before a shape word belong to it (``in the top left, a red circle``);
    attributes after it belong to it until a separator (``a circle in red at top left``).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"cannot parse an empty prompt; {_GRAMMAR_HINT}")
    objects: list[dict] = []
    pending: dict = {}
    current: dict | None = None
    for kind, value, word in _tokens(text):
        if kind == "filler":
            continue
        if kind == "sep":
            current = None
            continue
        if kind == "shape":
            current, pending = {**pending, "shape": value}, {}
            objects.append(current)
            continue
        target = pending if current is None else current
        if kind in target:
            raise ValueError(f"cannot parse prompt {text!r}: {word!r} names a second {kind} for one object")
        target[kind] = value
    if pending:
        raise ValueError(f"cannot parse prompt {text!r}: {sorted(pending.values())} is not attached "
                         f"to a shape word; {_GRAMMAR_HINT}")
    if not objects:
        raise ValueError(f"cannot parse prompt {text!r}: it names no shape; {_GRAMMAR_HINT}")
    return [ShapeObject(**o) for o in objects]


# ---------------------------------------------------------------- noise (for checker robustness)
def add_gaussian_noise(image: Image.Image, sigma: float, gen: np.random.Generator) -> Image.Image:
    """``image`` plus Gaussian noise of std ``sigma`` on the 0..1 scale, clipped and rounded back to uint8."""
    x = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0  # (S, S, 3)
    x = np.clip(x + gen.normal(0.0, sigma, x.shape), 0.0, 1.0)
    return Image.fromarray(np.round(x * 255).astype(np.uint8))


# ---------------------------------------------------------------- checker: pixels to blobs
_PALETTE = np.array(list(COLORS.values()), dtype=np.float64) / 255.0  # (6, 3)
_OTHER = "other"  # a blob of no palette colour
CORE_ALPHA = 0.5  # a pixel belongs to a blob's core above this coverage
OFF_PALETTE = 0.3  # RGB distance (0..1) past which a pixel is no palette colour
SIGNIFICANT = 0.4  # a blob counts when its area is this share of the smallest object the spec can draw
SIZE_SPLIT = 0.315  # r / cell between small (<= 0.2475) and large (>= 0.3825)
_SHAPE_AREA = {"circle": math.pi, "square": 4.0, "triangle": 2.0,  # area / r^2
               **{s: _polygon_area(polygon_points(s, 0.0, 0.0, 1.0)) for s in EXTRA_SHAPES}}


def _as_rgb(image) -> np.ndarray:
    """A ``PIL.Image`` or ``(H, W, 3)`` array (uint8, or float on 0..1) as float64 on 0..1."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    else:
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected a PIL image or an (H, W, 3) array, got shape {arr.shape}")
        arr = arr.astype(np.float64) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float64)
        if arr.size and arr.max() > 2.0:
            raise ValueError("a float image must be on the 0..1 scale (this one looks like 0..255): "
                             "divide it by 255")
    if arr.shape[0] != arr.shape[1] or arr.shape[0] < MIN_SIZE:
        raise ValueError(f"the checker needs a square image of side >= {MIN_SIZE}, "
                         f"got {arr.shape[1]}x{arr.shape[0]}")
    return arr


def _smooth(x: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge padding; cuts pixel noise by ~2.7x. ``(H, W, C)``."""
    p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    x = (p[:-2] + 2 * p[1:-1] + p[2:]) / 4
    return (x[:, :-2] + 2 * x[:, 1:-1] + x[:, 2:]) / 4


def _palette_array(palette: dict[str, tuple[int, int, int]] | None) -> np.ndarray:
    """``(K, 3)`` on 0..1: ``COLORS`` by default, else the given ``{name: (r, g, b)}``."""
    if palette is None:
        return _PALETTE
    if not palette or _OTHER in palette:
        raise ValueError(f"a palette is a non-empty {{name: (r, g, b)}} without the name {_OTHER!r}")
    return np.array(list(palette.values()), dtype=np.float64) / 255.0


def _unmix(rgb: np.ndarray, white: np.ndarray, pal: np.ndarray = _PALETTE
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best palette colour per pixel as ``pixel = white - alpha * (white - colour)``.

    Returns ``(label, alpha, residual)``, each ``(H, W)``; label indexes the rows of ``pal``
    (``COLORS`` by default).
    """
    ink = white - rgb  # (H, W, 3)
    v = white - pal  # (K, 3)
    alpha = np.clip(ink @ v.T / (v * v).sum(1), 0.0, 1.0)  # (H, W, K)
    resid = np.linalg.norm(ink[:, :, None, :] - alpha[..., None] * v, axis=-1)  # (H, W, K)
    label = resid.argmin(-1)  # (H, W)
    pick = np.take_along_axis
    return label, pick(alpha, label[..., None], -1)[..., 0], pick(resid, label[..., None], -1)[..., 0]


def _background(rgb: np.ndarray, smooth: np.ndarray) -> np.ndarray:
    """Mean colour of the near-white pixels (noise clipped at 1 darkens white a little)."""
    near_white = smooth.min(-1) > 0.85
    if near_white.sum() < 16:
        return np.ones(3)
    return rgb[near_white].mean(0)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean ``(H, W)`` mask, each as an ``(N, 2)`` array of (row, col)."""
    seen = np.zeros_like(mask)
    h, w = mask.shape
    out = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        stack, pixels = [start], []
        while stack:
            y, x = stack.pop()
            pixels.append((y, x))
            for yy in range(max(y - 1, 0), min(y + 2, h)):
                for xx in range(max(x - 1, 0), min(x + 2, w)):
                    if mask[yy, xx] and not seen[yy, xx]:
                        seen[yy, xx] = True
                        stack.append((yy, xx))
        out.append(np.array(pixels))
    return out


def _dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    for _ in range(steps):
        p = np.pad(mask, 1)
        mask = np.zeros_like(mask)
        for dy in range(3):
            for dx in range(3):
                mask |= p[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
    return mask


def shape_coverage(shape: str, cx: float, cy: float, r: float, rows: np.ndarray, cols: np.ndarray,
                   n: int = 6) -> np.ndarray:
    """Share of each pixel ``(rows[i], cols[i])`` covered by the spec's shape, by n x n supersampling."""
    offs = (np.arange(n) + 0.5) / n
    x = cols[:, None, None] + offs[None, None, :] - cx  # (N, 1, n)
    y = rows[:, None, None] + offs[None, :, None] - cy  # (N, n, 1)
    if shape == "circle":
        inside = x * x + y * y <= r * r
    elif shape == "square":
        inside = (np.abs(x) <= r) & (np.abs(y) <= r)
    elif shape == "triangle":
        inside = (y >= -r) & (y <= r) & (np.abs(x) <= (y + r) / 2)
    else:
        inside = _inside_polygon(polygon_points(shape, 0.0, 0.0, r), *np.broadcast_arrays(x, y))
    return inside.mean((1, 2))  # (N,)


def _inside_polygon(points: list[tuple[float, float]], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd ray casting: which points (x, y) lie inside the polygon."""
    inside = np.zeros(x.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]):
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < at)
    return inside


@dataclass
class Blob:
    """One connected patch of a single colour and what it looks like."""

    color: str
    mass: float  # covered area in pixels
    cx: float
    cy: float
    r: float
    shape: str | None
    size: str | None
    position: str | None

    def as_object(self) -> ShapeObject:
        color = None if self.color == _OTHER else self.color
        return ShapeObject(self.shape, color, self.size, self.position)


def _fit_blob(color: str, ink_alpha: np.ndarray, region: np.ndarray, cell: float,
              shapes: tuple[str, ...] = SHAPES) -> Blob | None:
    """Shape, size and position of a blob from its coverage map over ``region``."""
    rows, cols = np.nonzero(region)
    a = ink_alpha[rows, cols]  # (N,)
    mass = float(a.sum())
    if mass <= 0:
        return None
    mx = float((a * (cols + 0.5)).sum() / mass)
    my = float((a * (rows + 0.5)).sum() / mass)
    best = None
    for shape in shapes:
        r = math.sqrt(mass / _SHAPE_AREA[shape])
        cy = my - r / 3 if shape == "triangle" else my  # a triangle's centroid sits r/3 below its box centre
        err = float(((a - shape_coverage(shape, mx, cy, r, rows, cols)) ** 2).sum())
        if best is None or err < best[0]:
            best = (err, shape, mx, cy, r)
    _, shape, cx, cy, r = best
    col = min(max(int(cx // cell), 0), 2)
    row = min(max(int(cy // cell), 0), 2)
    size = "large" if r / cell > SIZE_SPLIT else "small"
    return Blob(color, mass, cx, cy, r, shape, size, POSITIONS[3 * row + col])


def _smallest_area(cell: float) -> float:
    """Area in pixels of the smallest object the spec can draw (a small triangle at the lowest jitter)."""
    return _SHAPE_AREA["triangle"] * (SIZE_K["small"] * R_JITTER[0] * cell / 2) ** 2


def _core_components(smooth: np.ndarray, white: np.ndarray, names: list[str], pal: np.ndarray
                     ) -> list[tuple[str, np.ndarray]]:
    """``(colour, pixels)`` for each connected patch of well-covered pixels of one colour (or ``other``)."""
    label, alpha, resid = _unmix(smooth, white, pal)
    core = alpha > CORE_ALPHA
    other = core & (resid > OFF_PALETTE)
    comps = [(name, c) for k, name in enumerate(names) for c in _components(core & ~other & (label == k))]
    return comps + [(_OTHER, c) for c in _components(other)]


def _owner_map(comps: list[tuple[str, np.ndarray]], side: int, smallest: float) -> np.ndarray:
    """``(S, S)`` index of the component owning each core pixel, -1 for none.

    A patch smaller than the smallest object that touches a bigger patch of another
    colour is the mixed edge where two objects meet, or noise on an edge: it owns nothing.
    """
    owner = np.full((side, side), -1)
    for i, (_, c) in enumerate(comps):
        owner[c[:, 0], c[:, 1]] = i
    for i, (color, c) in enumerate(comps):
        near = [j for j in np.unique(owner[_dilate(owner == i, 1)]) if j >= 0 and comps[j][0] != color]
        if len(c) < smallest and any(len(comps[j][1]) > len(c) for j in near):
            owner[owner == i] = -1
    return owner


def find_blobs(image, palette: dict[str, tuple[int, int, int]] | None = None,
               shapes: tuple[str, ...] = SHAPES) -> list[Blob]:
    """Every significant single-colour blob in an image, largest first.

    Reliable from S = 24 up (measured by ``bench/checker_accuracy.py``); at S = 16 small
    objects are only a few pixels wide. ``palette``: the ``{name: (r, g, b)}`` colours to tell
    apart (default ``COLORS``), e.g. the palette plus a colour a fine-tune taught; ``shapes``: the
    shapes to tell apart (default ``SHAPES``), e.g. with one of ``EXTRA_SHAPES`` a fine-tune taught.
    """
    pal = _palette_array(palette)
    names = list(COLORS if palette is None else palette)
    rgb = _as_rgb(image)  # (S, S, 3)
    side = rgb.shape[0]
    cell = side / 3
    smooth = _smooth(rgb)  # labels come from the smoothed image, areas from the raw one
    white = _background(rgb, smooth)
    comps = _core_components(smooth, white, names, pal)
    smallest = _smallest_area(cell)
    owner = _owner_map(comps, side, smallest)
    v = white - pal  # (K, 3)
    ink_alpha = (white - rgb) @ v.T / (v * v).sum(1)  # (S, S, K) unclipped, so noise averages out
    blobs = []
    for i, (color, c) in enumerate(comps):
        mask = owner == i
        if not mask.any():
            continue
        if color == _OTHER:
            if len(c) >= SIGNIFICANT * smallest:
                my, mx = c.mean(0) + 0.5
                row, col = min(int(my // cell), 2), min(int(mx // cell), 2)
                blobs.append(Blob(_OTHER, float(len(c)), mx, my, 0.0, None, None, POSITIONS[3 * row + col]))
            continue
        region = _dilate(mask, 2) & (owner < 0) | mask  # the patch and its anti-aliased rim
        blob = _fit_blob(color, ink_alpha[..., names.index(color)], region, cell, shapes)
        if blob is not None and blob.mass >= SIGNIFICANT * smallest:
            blobs.append(blob)
    return sorted(blobs, key=lambda b: -b.mass)


# ---------------------------------------------------------------- checker: blobs against the scene
_CHECKED = ("color", "shape", "size", "position")


@dataclass
class ObjectCheck:
    """How one expected object was drawn; an attribute is None when the prompt leaves it free."""

    expected: ShapeObject
    found: ShapeObject | None
    color: bool | None
    shape: bool | None
    size: bool | None
    position: bool | None

    @property
    def ok(self) -> bool:
        return self.found is not None and all(getattr(self, a) is not False for a in _CHECKED)

    def to_dict(self) -> dict:
        return {"expected": self.expected.to_dict(), "found": self.found.to_dict() if self.found else None,
                **{a: getattr(self, a) for a in _CHECKED}, "ok": self.ok}


@dataclass
class CheckResult:
    """A checker verdict: per-object attributes, colours that should not be there, extra blobs."""

    objects: list[ObjectCheck]
    stray_colors: list[str] = field(default_factory=list)
    extra_objects: int = 0  # further blobs of a colour that an object already has

    @property
    def correct(self) -> bool:
        return all(o.ok for o in self.objects) and not self.stray_colors and self.extra_objects == 0

    def to_dict(self) -> dict:
        return {"correct": self.correct, "objects": [o.to_dict() for o in self.objects],
                "stray_colors": list(self.stray_colors), "extra_objects": self.extra_objects}


def _match_score(obj: ShapeObject, blob: Blob) -> tuple:
    named = [a for a in ("position", "shape", "size") if getattr(obj, a) is not None]
    hits = sum(getattr(obj, a) == getattr(blob, a) for a in named)
    return hits, blob.mass


def _as_objects(objects) -> list[ShapeObject]:
    if isinstance(objects, str):
        return parse_prompt(objects)
    out = [o if isinstance(o, ShapeObject) else ShapeObject.from_dict(o) for o in objects]
    if not out:
        raise ValueError("check_image needs at least one expected object (or a prompt)")
    return out


def check_image(image, objects) -> CheckResult:
    """Check ``image`` against a scene: ShapeObjects, their dicts, or a prompt string.

    Each object takes the best blob of its colour (by named position, shape, size, then
    area); an object whose colour is missing takes the best blob nobody claimed (so its
    other attributes are still judged).  Blobs left over are stray colours, or extra
    objects when their colour is already claimed.
    """
    objects = _as_objects(objects)
    blobs = find_blobs(image)
    claim: dict[int, int] = {}  # object index -> blob index
    for want_colour in (True, False):
        for i, obj in enumerate(objects):
            if i in claim or (want_colour and obj.color is None):
                continue
            free = [j for j, b in enumerate(blobs) if j not in claim.values()
                    and (not want_colour or b.color == obj.color)]
            if free:
                claim[i] = max(free, key=lambda j: _match_score(obj, blobs[j]))
    checks = []
    for i, obj in enumerate(objects):
        found = blobs[claim[i]].as_object() if i in claim else None
        verdict = {a: None if getattr(obj, a) is None
                   else (found is not None and getattr(found, a) == getattr(obj, a)) for a in _CHECKED}
        checks.append(ObjectCheck(obj, found, **verdict))
    claimed_colours = {blobs[j].color for j in claim.values()}
    left = [b for j, b in enumerate(blobs) if j not in claim.values()]
    stray = sorted({b.color for b in left if b.color not in claimed_colours})
    extra = sum(b.color in claimed_colours for b in left)
    return CheckResult(checks, stray, extra)


def score_image(image, objects) -> dict:
    """``check_image(...).to_dict()``: a JSON-ready verdict."""
    return check_image(image, objects).to_dict()


def attribute_accuracy(results: Iterable[CheckResult]) -> dict:
    """Per-attribute accuracy (over objects naming it), per-object, clean-canvas and full-prompt accuracy."""
    results = list(results)
    if not results:
        raise ValueError("attribute_accuracy needs at least one CheckResult")
    checks = [o for r in results for o in r.objects]
    out = {}
    for a in _CHECKED:
        named = [getattr(o, a) for o in checks if getattr(o, a) is not None]
        out[a] = sum(named) / len(named) if named else None
    out["object"] = sum(o.ok for o in checks) / len(checks)
    out["nothing_else"] = sum(not r.stray_colors and r.extra_objects == 0 for r in results) / len(results)
    out["prompt"] = sum(r.correct for r in results) / len(results)
    out["n_prompts"] = len(results)
    out["n_objects"] = len(checks)
    return out


# ---------------------------------------------------------------- image folder
def write_shapes_folder(out: str | os.PathLike, n: int, size: int = 64, seed: int = 0,
                        include_heldout: bool = False, paraphrase_prob: float = 0.0,
                        n_objects: int | None = None) -> int:
    """Write ``n`` scenes as ``00000.png ...`` plus ``metadata.jsonl``; the same seed gives the same folder.

    Each metadata row is ``{"file_name", "text", "objects": [{"shape", "color", "size", "position"}]}``.
    ``n_objects`` (1, 2 or 3) gives every scene that many objects (default: 1 to 3, uniformly), e.g. a
    folder of 2-object scenes that weighs binding more in a fine-tune.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (got {n!r})")
    if not 0.0 <= paraphrase_prob <= 1.0:
        raise ValueError(f"paraphrase_prob must lie in [0, 1] (got {paraphrase_prob})")
    if n_objects is not None and n_objects not in (1, 2, 3):
        raise ValueError(f"n_objects must be 1, 2 or 3, or None for 1 to 3 (got {n_objects!r})")
    _check_size(size)
    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    with open(os.path.join(out, "metadata.jsonl"), "w", encoding="utf-8") as meta:
        for i in range(n):
            objects = sample_scene(rng, include_heldout=include_heldout, n_objects=n_objects)
            image = render_scene(objects, size, rng)
            name = f"{i:05d}.png"
            image.save(os.path.join(out, name))
            row = {"file_name": name, "text": make_caption(objects, rng, paraphrase_prob),
                   "objects": [o.to_dict() for o in objects]}
            meta.write(json.dumps(row) + "\n")
    return n


def write_extra_colors_folder(out: str | os.PathLike, n: int, size: int = 64, seed: int = 0) -> int:
    """Write ``n`` scenes of 1 or 2 objects in one colour of ``EXTRA_COLORS`` (any shape, size and cell) as
    ``x00000.png ...`` plus ``metadata.jsonl`` with canonical captions; the same seed gives the same folder.

    No palette colour appears, so no held-out pair does; these scenes are for training only (the checker
    knows the palette alone).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (got {n!r})")
    _check_size(size)
    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    with open(os.path.join(out, "metadata.jsonl"), "w", encoding="utf-8") as meta:
        for i in range(n):
            color = rng.choice(list(EXTRA_COLORS))
            cells = rng.sample(POSITIONS, rng.choice([1, 2]))
            objects = [ShapeObject(rng.choice(SHAPES), None, rng.choice(SIZES), cell) for cell in cells]
            name = f"x{i:05d}.png"
            render_scene(objects, size, rng, fill=EXTRA_COLORS[color]).save(os.path.join(out, name))
            text = " and ".join(f"{_noun_phrase([o.size, color], o.shape)} at {o.position}" for o in objects)
            meta.write(json.dumps({"file_name": name, "text": text}) + "\n")
    return n
