"""Captions of shapes scenes and the prompt grammar that reads them back (``docs/shapes.md``).

The canonical caption names every attribute of every object (``a large red circle at top left
and a small blue square at center``); paraphrases vary prepositions, word order and drop sizes.
:func:`parse_prompt` reads both back into :class:`~latentgen.data.shape_spec.ShapeObject` s.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

from latentgen.data.shape_spec import COLORS, POSITIONS, SHAPES, SIZES, ShapeObject


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


def extra_color_caption(objects: Iterable[ShapeObject], color: str) -> str:
    """The canonical caption, in list order, of ``objects`` all drawn in ``color``, a colour word outside
    the palette (``EXTRA_COLORS``); the objects' own ``color`` is not used."""
    return " and ".join(f"{_noun_phrase([o.size, color], o.shape)} at {o.position}" for o in objects)


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
