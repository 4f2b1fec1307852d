"""Frozen dataclass configs with named presets, saved as JSON beside the weights.

Every model config in latentgen is a frozen dataclass; a module keeps a dict
``PRESETS = {"tiny": ..., "small": ..., "base": ...}``. ``save_config`` writes
``latentgen_config.json`` into a model's folder and ``load_config`` reads it back,
so a folder always says which preset (and which exact numbers) made it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import typing
from typing import Any, TypeVar

from latentgen.fsutil import atomic_write_text

T = TypeVar("T")

CONFIG_NAME = "latentgen_config.json"


def config_to_dict(cfg: Any) -> dict:
    """A JSON-ready dict of a dataclass config, with its class name."""
    d = dataclasses.asdict(cfg)
    d["_class"] = type(cfg).__name__
    return d


def config_from_dict(cls: type[T], d: dict) -> T:
    """Rebuild ``cls`` from a dict, turning lists back into tuples where the field is a tuple."""
    d = {k: v for k, v in d.items() if not k.startswith("_")}
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}; the config was written by another version")
    hints = typing.get_type_hints(cls)
    out = {}
    for k, v in d.items():
        origin = typing.get_origin(hints.get(k))
        out[k] = tuple(v) if (origin is tuple and isinstance(v, list)) else v
    return cls(**out)


def save_config(cfg: Any, folder: str | os.PathLike, name: str = CONFIG_NAME) -> str:
    path = os.path.join(folder, name)
    atomic_write_text(path, json.dumps(config_to_dict(cfg), indent=2))  # creates the folder
    return path


def load_config(cls: type[T], folder: str | os.PathLike, name: str = CONFIG_NAME) -> T:
    with open(os.path.join(folder, name)) as f:
        return config_from_dict(cls, json.load(f))


def copy_config(src_folder: str | os.PathLike, dst_folder: str | os.PathLike, name: str = CONFIG_NAME) -> bool:
    """Copy a part's saved config into another folder holding the same architecture (a fine-tuned or
    distilled copy of its weights); False when ``src_folder`` has none or ``dst_folder`` is missing."""
    src = os.path.join(src_folder, name)
    if not (os.path.isfile(src) and os.path.isdir(dst_folder)):
        return False
    shutil.copyfile(src, os.path.join(dst_folder, name))
    return True


def get_preset(presets: dict[str, T], name: str, kind: str = "model") -> T:
    """Look a preset up by name, with an error that lists the choices."""
    try:
        return presets[name]
    except KeyError:
        raise ValueError(f"unknown {kind} preset {name!r}; choose one of {', '.join(presets)}") from None
