"""What every benchmark shares: the machine line and writing ``<prefix>.json`` + ``<prefix>.md``."""

from __future__ import annotations

import json
import os
import platform

import torch


def machine() -> str:
    """One line naming the machine the figures were measured on."""
    return (f"{platform.machine()}, {os.cpu_count()} CPU threads, torch {torch.__version__}, "
            f"{torch.get_num_threads()} torch threads, CPU capability {torch.backends.cpu.get_cpu_capability()}")


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
