"""The shapes benchmark's scenes (``docs/shapes.md``): vocabulary, held-out pairs, sampling and rendering.

A scene is 1 to 3 coloured shapes on a 3 x 3 grid of a white square canvas. Captions and the
prompt grammar are in :mod:`latentgen.data.shape_captions`, folders of scenes in
:mod:`latentgen.data.shapes`, the checker that reads a scene back from pixels in
:mod:`latentgen.eval.shapes`. Uses Pillow and the standard library only.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections.abc import Iterable
from dataclasses import dataclass

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
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "position")  # of an object, in the order checked
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    {("purple", "square"), ("orange", "triangle"), ("green", "circle")}
)
# training-only colours outside the palette (words of the tokenizer from OpenMoji's names), each drawn
# with every shape: data in which colour and shape vary independently
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
    for colour, shape in itertools.pairwise(words):
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


def check_size(size: int) -> None:
    """Raise ValueError unless ``size`` is an int canvas side the spec can draw (``MIN_SIZE`` or more)."""
    if not isinstance(size, int) or size < MIN_SIZE:
        raise ValueError(f"image size must be an int >= {MIN_SIZE} (got {size!r}); "
                         "the spec uses 32, 64, 128, ...")


def render_scene(objects: Iterable[ShapeObject], size: int, rng: random.Random,
                 fill: tuple[int, int, int] | None = None) -> Image.Image:
    """Draw ``objects`` at 4x on white, in list order, then reduce to ``size`` with ``Image.BOX``.

    ``fill``: draw every object in this RGB colour instead of its own, for a colour outside the
    palette (a new colour word to fine-tune on); the objects' ``color`` may then be None.
    """
    check_size(size)
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
