"""A model folder's card (``README.md``): YAML front matter with its sampling defaults, then prose.

The front matter is the one place a folder says how to sample it::

    ---
    sampler: dpmpp-2m
    num_inference_steps: 25
    guidance_scale: 4.0
    ---

:func:`read_card_defaults` is what the pipeline, the CLI and the app read; :func:`write_card` is what
every trainer writes (through :mod:`latentgen.export`).
"""

from __future__ import annotations

import json
import os

from latentgen.fsutil import atomic_write_text

CARD = "README.md"
CARD_KEYS = {"sampler": str, "num_inference_steps": int, "guidance_scale": float}


def read_card_defaults(folder: str | os.PathLike, samplers=None) -> dict:
    """The ``sampler``, ``num_inference_steps`` and ``guidance_scale`` lines of the front matter of
    ``folder/README.md`` (only the keys present; ``{}`` without a card). ``samplers``: the known names."""
    path = os.path.join(folder, CARD)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    out = {}
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.split(" #")[0].strip().strip("\"'")
        if not sep or key not in CARD_KEYS:
            continue
        try:
            out[key] = CARD_KEYS[key](value)
        except ValueError:
            raise ValueError(f"{path}: front matter {key}: {value!r} is not a {CARD_KEYS[key].__name__}; "
                             "fix or delete that line") from None
    if samplers is not None and "sampler" in out and out["sampler"] not in samplers:
        raise ValueError(f"{path}: front matter sampler: {out['sampler']!r} is unknown; "
                         f"choose one of {', '.join(samplers)}")
    return out


def card_text(front: dict, title: str, body: list[str], command: str | None = None,
              record: dict | None = None) -> str:
    """A card: front matter (``front``, sampling defaults first; none when empty), a title, prose, the
    command that made the model and the run's saved config."""
    items = (f"{k}: {json.dumps(v) if isinstance(v, (list, tuple)) else v}" for k, v in front.items())
    head = ["---", *items, "---", ""] if front else []  # a part's card (VAE, CLIP): no sampling defaults
    lines = [*head, f"# {title}", "", *body]
    if command:
        lines += ["", "## How it was made", "", "```bash", command, "```"]
    if record:
        lines += ["", "## Training config", "", "```json", json.dumps(record, indent=2), "```"]
    return "\n".join(lines).rstrip() + "\n"


def write_card(folder: str | os.PathLike, front: dict, title: str, body: list[str], command: str | None = None,
               record: dict | None = None) -> str:
    path = os.path.join(folder, CARD)
    atomic_write_text(path, card_text(front, title, body, command, record))
    return path
