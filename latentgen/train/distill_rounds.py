"""The rounds of a distillation: which stages run, the ``done`` record a finished one leaves, and the summary.

A finished stage or round leaves ``<out>/<name>/distill_round.json``: its run record (the config, with
what the stage derived from it), its losses and its time. Run again, the trainer reuses the stage when the
record matches (:func:`finished_round`), so a stopped distillation continues where it was.
"""

from __future__ import annotations

import json
import os

from latentgen.train.config import TrainerError

DONE_FILE = "distill_round.json"


def plan(teacher_steps: int, min_steps: int, skip_stage1: bool) -> list[tuple[str, int, int]]:
    """(folder name, teacher steps, student steps) for stage 1 (unless the teacher is already a
    guidance-conditioned student, or students stay two-pass) and each halving."""
    stages = [] if skip_stage1 else [("stage1", teacher_steps, teacher_steps)]
    n = teacher_steps
    while n > min_steps:
        stages.append((f"round-{n // 2}", n, n // 2))
        n //= 2
    return stages


def finished_round(folder: str, record: dict, may_differ: tuple[str, ...]) -> dict | None:
    """The ``done`` record of a finished round in ``folder`` (None if unfinished); an error if its settings
    differ in a key outside ``may_differ``."""
    path = os.path.join(folder, DONE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        done = json.load(f)
    saved, now = done["run"], json.loads(json.dumps(record))
    if "config_version" not in saved:
        raise TrainerError(f"{folder} was finished by an older latentgen whose settings this one cannot compare: "
                           "choose a new --out")
    diff = sorted(k for k in set(saved) | set(now) if k not in may_differ and saved.get(k) != now.get(k))
    if diff:
        raise TrainerError(f"{folder} was finished with other settings ({', '.join(diff)}: "
                           f"{ {k: saved.get(k) for k in diff} } then, { {k: now.get(k) for k in diff} } now); "
                           "rerun with the original settings, or choose a new --out")
    return done


def logged_losses(folder: str) -> list[float]:
    path = os.path.join(folder, "logs", "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def print_summary(records: list[dict], final: str):
    print("\ndistillation summary")
    print(f"{'stage':<12}{'steps':>6}{'trained':>9}{'loss first':>12}{'loss last':>11}{'seconds':>9}")
    fmt = lambda x: "-" if x is None else f"{x:.4g}"
    for r in records:
        print(f"{r['run']['stage']:<12}{r['student_steps']:>6}{r['steps_trained']:>9}"
              f"{fmt(r['loss_first']):>12}{fmt(r['loss_last']):>11}{r['seconds']:>9}"
              + ("  (reused)" if r.get("reused") else ""))
    print(f"final model ({records[-1]['student_steps']} steps): {final}")
