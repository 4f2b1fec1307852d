"""The shapes checker (``docs/shapes.md``): does an image show the scene its prompt names?

:func:`check_image` takes the blobs of :func:`latentgen.eval.blobs.find_blobs`, gives each
object of the scene (ShapeObjects, their dicts, or a prompt string) its best blob, and judges
colour, shape, size and position, plus colours that should not be there and extra objects.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from latentgen.data.shape_captions import parse_prompt
from latentgen.data.shape_spec import ATTRIBUTES, ShapeObject
from latentgen.eval.blobs import Blob, find_blobs

__all__ = ["CheckResult", "ObjectCheck", "add_gaussian_noise", "attribute_accuracy", "check_image",
           "find_blobs", "score_image"]


def add_gaussian_noise(image: Image.Image, sigma: float, gen: np.random.Generator) -> Image.Image:
    """``image`` plus Gaussian noise of std ``sigma`` on the 0..1 scale, clipped and rounded back to uint8."""
    x = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0  # (S, S, 3)
    x = np.clip(x + gen.normal(0.0, sigma, x.shape), 0.0, 1.0)
    return Image.fromarray(np.round(x * 255).astype(np.uint8))


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
        return self.found is not None and all(getattr(self, a) is not False for a in ATTRIBUTES)

    def to_dict(self) -> dict:
        return {"expected": self.expected.to_dict(), "found": self.found.to_dict() if self.found else None,
                **{a: getattr(self, a) for a in ATTRIBUTES}, "ok": self.ok}


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
                   else (found is not None and getattr(found, a) == getattr(obj, a)) for a in ATTRIBUTES}
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
    for a in ATTRIBUTES:
        named = [getattr(o, a) for o in checks if getattr(o, a) is not None]
        out[a] = sum(named) / len(named) if named else None
    out["object"] = sum(o.ok for o in checks) / len(checks)
    out["nothing_else"] = sum(not r.stray_colors and r.extra_objects == 0 for r in results) / len(results)
    out["prompt"] = sum(r.correct for r in results) / len(results)
    out["n_prompts"] = len(results)
    out["n_objects"] = len(checks)
    return out
