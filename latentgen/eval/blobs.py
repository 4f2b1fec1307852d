"""The shapes checker's first half: every single-colour blob in an image and what it looks like.

Pixels are unmixed against the palette colours (``pixel = white - alpha * (white - colour)``),
blobs are found by connected components, and each blob's shape is the template (circle, square,
triangle, or an extra shape asked for) that best explains its coverage map, with the size and
grid cell that follow from it. No learning; numpy only. :mod:`latentgen.eval.shapes` matches
the blobs against a scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from latentgen.data.shape_spec import (
    COLORS,
    EXTRA_SHAPES,
    MIN_SIZE,
    POSITIONS,
    R_JITTER,
    SHAPES,
    SIZE_K,
    ShapeObject,
    polygon_points,
)


def _polygon_area(points: list[tuple[float, float]]) -> float:
    """Shoelace formula."""
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1]))) / 2


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
