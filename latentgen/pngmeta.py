"""PNGs that say how they were made: the settings in a ``parameters`` text chunk, in AUTOMATIC1111's form.

The chunk is the text that A1111's PNG Info, ComfyUI and image hosts read::

    a large red circle at center
    Negative prompt: blue
    Steps: 25, Sampler: DPM++ 2M, CFG scale: 4, Seed: 1, Size: 64x64, Model: default

(the ``Negative prompt`` line only when there is one). Settings are passed and read back as a
dict of latentgen's names (``prompt``, ``negative_prompt``, ``steps``, ``sampler``, ``guidance``,
``seed``, ``width``, ``height``, ``model``, ``strength``, ...); samplers go by A1111's names in
the file (``dpm++2m`` is ``DPM++ 2M``), and the model by its folder name, never a path.
:func:`read_png_params` also reads the JSON chunk that older latentgen versions wrote.

Light on purpose (Pillow and json only), so the app and the CLI can read settings back
without importing torch.
"""

from __future__ import annotations

import json
import os
import re

from PIL import Image
from PIL.PngImagePlugin import PngInfo

PARAMS_KEY = "parameters"
NEGATIVE = "Negative prompt:"
# latentgen's sampler names -> A1111's (the names of ``latentgen.diffusion.SAMPLERS``)
A1111_SAMPLERS = {"ddim": "DDIM", "ddpm": "DDPM", "euler": "Euler", "euler_a": "Euler a", "dpm++2m": "DPM++ 2M"}
# latentgen's setting -> (A1111's label, type read back); written in this order, then any other key as it is
A1111_KEYS = {
    "steps": ("Steps", int),
    "sampler": ("Sampler", str),
    "guidance": ("CFG scale", float),
    "seed": ("Seed", int),
    "model": ("Model", str),
    "strength": ("Denoising strength", float),
    "mode": ("Mode", str),
    "init_image": ("Init image", str),
    "batch_size": ("Batch size", int),
}
_LABELS = {label: (key, kind) for key, (label, kind) in A1111_KEYS.items()}
# one `Label: value` of the settings line; a value holding ',', ':' or '"' is JSON-quoted (as A1111 does)
_PARAM = re.compile(r'\s*(\w[\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')


def model_name(model) -> str:
    """A model as PNGs name it: an absolute path by its folder's name (``/.../weights/default`` -> ``default``);
    a name (``default``, ``my-run/final``) as it is."""
    text = os.fspath(model)
    return os.path.basename(os.path.normpath(text)) if os.path.isabs(text) else text


def _read_value(text: str):
    """A setting of no known type: an int or a float when it reads as one, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _value(v) -> str:
    if isinstance(v, float):
        text = str(int(v)) if v.is_integer() else repr(v)
    else:
        text = str(v)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


def format_params(params: dict) -> str:
    """The A1111 ``parameters`` text of latentgen's settings ``params``."""
    p = dict(params)
    lines = [str(p.pop("prompt", ""))]
    negative = p.pop("negative_prompt", "") or ""
    if negative:
        lines.append(f"{NEGATIVE} {negative}")
    if "sampler" in p:
        p["sampler"] = A1111_SAMPLERS.get(p["sampler"], p["sampler"])
    if "model" in p:
        p["model"] = model_name(p["model"])
    width, height = p.pop("width", None), p.pop("height", None)
    items = [(A1111_KEYS[k][0], p.pop(k)) for k in ("steps", "sampler", "guidance", "seed") if k in p]
    if width is not None and height is not None:
        items.append(("Size", f"{width}x{height}"))
    items += [(A1111_KEYS[k][0], p.pop(k)) for k in list(A1111_KEYS) if k in p]
    items += list(p.items())
    if items:
        lines.append(", ".join(f"{label}: {_value(v)}" for label, v in items))
    return "\n".join(lines)


def _parse_settings(line: str) -> dict | None:
    """The settings of an A1111 settings line as latentgen's names; None when ``line`` is not one."""
    matches = list(_PARAM.finditer(line))
    if not matches or "".join(m.group(0) for m in matches).strip() != line.strip():
        return None
    raw = {m.group(1).strip(): m.group(2).strip() for m in matches}
    if not any(label in _LABELS or label == "Size" for label in raw):
        return None
    out = {}
    for label, text in raw.items():
        if text.startswith('"'):
            text = json.loads(text)
        if label == "Size" and re.fullmatch(r"\d+x\d+", text):
            out["width"], out["height"] = (int(n) for n in text.split("x"))
            continue
        key, kind = _LABELS.get(label, (label, _read_value))
        try:
            out[key] = kind(text)
        except ValueError:  # another tool's value of a known setting
            out[key] = text
    samplers = {v: k for k, v in A1111_SAMPLERS.items()}
    if "sampler" in out:
        out["sampler"] = samplers.get(out["sampler"], out["sampler"])
    return out


def parse_params(text: str) -> dict:
    """latentgen's settings from a ``parameters`` text: A1111's form, or the JSON that older versions wrote."""
    if text.lstrip().startswith("{"):
        try:
            params = json.loads(text)
        except json.JSONDecodeError:
            params = None
        if isinstance(params, dict):
            return params
    lines = text.split("\n")
    settings = _parse_settings(lines[-1])
    if settings is not None:
        lines = lines[:-1]
    neg = next((i for i, line in enumerate(lines) if line.startswith(NEGATIVE)), len(lines))
    negative = "\n".join(lines[neg:])[len(NEGATIVE):].removeprefix(" ")
    return {"prompt": "\n".join(lines[:neg]), "negative_prompt": negative, **(settings or {})}


def save_png_with_params(img: Image.Image, path: str | os.PathLike, params: dict) -> str:
    """Write ``img`` as a PNG at ``path`` with ``params`` in its ``parameters`` chunk (A1111's form)."""
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"{path!r} does not end in .png: the settings are stored in a PNG text chunk")
    info = PngInfo()
    info.add_text(PARAMS_KEY, format_params(params))
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    img.save(path, format="PNG", pnginfo=info)
    return path


def read_png_params(path: str | os.PathLike) -> dict:
    """The settings stored by ``save_png_with_params`` (or by A1111, or as older latentgen's JSON);
    ``{}`` for a PNG without them."""
    with Image.open(path) as img:
        text = getattr(img, "text", {}).get(PARAMS_KEY)
    return {} if text is None else parse_params(text)
