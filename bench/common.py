"""What every benchmark shares: the machine line and writing ``<prefix>.json`` + ``<prefix>.md``."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository


def shown_command(module: str, argv=None, cache_flags: tuple[str, ...] = ()) -> str:
    """``python -m module ARGS`` as a reader reruns it from the repository: a path inside the repository
    relative to it, and the flags of ``cache_flags`` (folders of intermediate runs, whose defaults serve as
    well) left out with their values."""
    args, shown = list(sys.argv[1:] if argv is None else argv), []
    while args:
        a = args.pop(0)
        if a in cache_flags:
            args = args[1:]
            continue
        if a.split("=", 1)[0] in cache_flags:
            continue
        flag, eq, value = a.rpartition("=") if a.startswith("--") else ("", "", a)
        if os.path.isabs(value) and os.path.normpath(value).startswith(ROOT + os.sep):
            value = os.path.relpath(value, ROOT)
        shown.append(flag + eq + value)
    return " ".join([f"python -m {module}", *shown])


def machine() -> str:
    """One line naming the machine the figures were measured on."""
    return (f"{platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")


def model_name(path: str) -> str:
    """A bundled model as the repository names it (``latentgen/weights/default``), else the path."""
    parts = os.path.normpath(path).split(os.sep)
    return "/".join(parts[-3:]) if parts[-3:-1] == ["latentgen", "weights"] else path


def read_json(path: str, default: dict) -> dict:
    """The JSON file at ``path``, or ``default`` when there is none."""
    if not os.path.isfile(path):
        return default
    with open(path) as f:
        return json.load(f)


def write_results(prefix: str, result: dict, markdown: str) -> None:
    """``result`` as ``<prefix>.json`` and ``markdown`` as ``<prefix>.md`` (also printed)."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    with open(prefix + ".md", "w", encoding="utf-8") as f:
        f.write(markdown)
    print(markdown)


def text_model_meta(module: str, model: str, argv, root: str, **extra) -> dict:
    """Check ``model`` holds ``text_encoder/`` and ``tokenizer/``; the results' meta: model (relative to
    ``root``), machine, the command that reproduces them and the date, plus ``extra``."""
    for sub in ("text_encoder", "tokenizer"):
        if not os.path.isdir(os.path.join(model, sub)):
            raise SystemExit(f"error: {model} has no {sub}/ folder: give a model folder (--model)")
    return {"model": os.path.relpath(model, root), "machine": machine(), **extra,
            "command": shown_command(module, argv),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}


def add_text_model_arg(p) -> None:
    """``--model``: a folder with ``text_encoder/`` and ``tokenizer/``, by default the bundled model."""
    p.add_argument("--model", default=os.path.join(ROOT, "latentgen", "weights", "default"),
                   help="model folder with text_encoder/ and tokenizer/ (default: the bundled model)")


def footer(meta: dict) -> list[str]:
    """The markdown lines that end a text-encoder benchmark: the machine and the command."""
    return ["", f"machine: {meta['machine']}", "", f"command: `{meta['command']}`", ""]

