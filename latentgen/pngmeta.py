"""PNGs that say how they were made: the settings go in a ``parameters`` text chunk as JSON.

Light on purpose (Pillow and json only), so the app and the CLI can read settings back
without importing torch.
"""

from __future__ import annotations

import json
import os

from PIL import Image
from PIL.PngImagePlugin import PngInfo

PARAMS_KEY = "parameters"


def save_png_with_params(img: Image.Image, path: str | os.PathLike, params: dict) -> str:
    """Write ``img`` as a PNG at ``path`` with ``params`` (JSON-able) in its ``parameters`` chunk."""
    path = os.fspath(path)
    if not path.lower().endswith(".png"):
        raise ValueError(f"{path!r} does not end in .png: the settings are stored in a PNG text chunk")
    info = PngInfo()
    info.add_text(PARAMS_KEY, json.dumps(params, ensure_ascii=False, sort_keys=True))
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    img.save(path, format="PNG", pnginfo=info)
    return path


def read_png_params(path: str | os.PathLike) -> dict:
    """The settings stored by ``save_png_with_params``; ``{}`` for a PNG without them."""
    with Image.open(path) as img:
        text = getattr(img, "text", {}).get(PARAMS_KEY)
    if text is None:
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError:
        params = None
    if not isinstance(params, dict):
        raise ValueError(f"{os.fspath(path)!r} has a 'parameters' chunk that is not latentgen's JSON "
                         "settings")
    return params
