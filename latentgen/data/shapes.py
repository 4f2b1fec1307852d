"""The shapes data set (``docs/shapes.md``): folders of rendered scenes with their captions.

A scene is 1 to 3 coloured shapes on a 3 x 3 grid of a white square canvas. The scenes
(vocabulary, sampling, rendering) are :mod:`latentgen.data.shape_spec`'s, the captions and the
prompt grammar :mod:`latentgen.data.shape_captions`'; both are importable from here. The
checker that reads a scene back from an image is :mod:`latentgen.eval.shapes`.
"""

from __future__ import annotations

import json
import os
import random

from latentgen.data.captions import METADATA_FILE
from latentgen.data.images import DEFAULT_SIZE
from latentgen.data.shape_captions import (
    canonical_caption,
    canonical_clause,
    extra_color_caption,
    make_caption,
    paraphrase_caption,
    parse_prompt,
)
from latentgen.data.shape_spec import (
    ATTRIBUTES,
    COLORS,
    EXTRA_COLORS,
    EXTRA_SHAPES,
    HELDOUT_PAIRS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapeObject,
    check_size,
    names_heldout_pair,
    render_scene,
    sample_scene,
)

__all__ = [
    "ATTRIBUTES", "COLORS", "EXTRA_COLORS", "EXTRA_SHAPES", "HELDOUT_PAIRS", "POSITIONS", "SHAPES", "SIZES",
    "ShapeObject",
    "canonical_caption", "canonical_clause", "make_caption", "names_heldout_pair", "paraphrase_caption",
    "parse_prompt", "render_scene", "sample_scene", "write_extra_colors_folder", "write_shapes_folder",
]


def write_shapes_folder(out: str | os.PathLike, n: int, size: int = DEFAULT_SIZE, seed: int = 0,
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
    check_size(size)
    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    with open(os.path.join(out, METADATA_FILE), "w", encoding="utf-8") as meta:
        for i in range(n):
            objects = sample_scene(rng, include_heldout=include_heldout, n_objects=n_objects)
            image = render_scene(objects, size, rng)
            name = f"{i:05d}.png"
            image.save(os.path.join(out, name))
            row = {"file_name": name, "text": make_caption(objects, rng, paraphrase_prob),
                   "objects": [o.to_dict() for o in objects]}
            meta.write(json.dumps(row) + "\n")
    return n


def write_extra_colors_folder(out: str | os.PathLike, n: int, size: int = DEFAULT_SIZE, seed: int = 0) -> int:
    """Write ``n`` scenes of 1 or 2 objects in one colour of ``EXTRA_COLORS`` (any shape, size and cell) as
    ``x00000.png ...`` plus ``metadata.jsonl`` with canonical captions; the same seed gives the same folder.

    No palette colour appears, so no held-out pair does; these scenes are for training only (the checker
    knows the palette alone).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int (got {n!r})")
    check_size(size)
    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    with open(os.path.join(out, METADATA_FILE), "w", encoding="utf-8") as meta:
        for i in range(n):
            color = rng.choice(list(EXTRA_COLORS))
            cells = rng.sample(POSITIONS, rng.choice([1, 2]))
            objects = [ShapeObject(rng.choice(SHAPES), None, rng.choice(SIZES), cell) for cell in cells]
            name = f"x{i:05d}.png"
            render_scene(objects, size, rng, fill=EXTRA_COLORS[color]).save(os.path.join(out, name))
            meta.write(json.dumps({"file_name": name, "text": extra_color_caption(objects, color)}) + "\n")
    return n
