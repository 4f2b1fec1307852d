"""The fine-tune's own fast student, for ``bench.finetune``'s teal and star cases.

The fine-tuned teacher's change is added to a student of the base (``latentgen train distill --model TUNED
--from-student STUDENT``: ``latentgen.train.distill_transfer``), refined for ``--student-refine-steps`` on the
case's folder and the fine-tune's prior images (0: the move alone), and the student is measured as
its teacher is: the prompts naming the new word and the original shapes prompts, same n and seeds, at the
student card's sampler, steps and guidance. Speed: seconds per image at batch 1, the median of
``SPEED_IMAGES`` single-image calls (after one warm-up call) with each model's card settings, in this process,
teacher and student taking turns.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

import torch

from bench.common import model_name, read_json
from latentgen.loading import DEFAULT_MODEL_DIR

SPEED_IMAGES = 16
REFINE_BATCH = 16
SPEED_BATCH = 8  # and per image in calls of 8 (3 timed calls after a warm-up)
BUNDLED_STUDENT = os.path.join(os.path.dirname(DEFAULT_MODEL_DIR), "default-4step")


def default_student(model: str) -> str | None:
    """The bundled 4-step student for the bundled teacher; no default for any other base."""
    same = os.path.abspath(model) == os.path.abspath(DEFAULT_MODEL_DIR)
    return BUNDLED_STUDENT if same and os.path.isdir(BUNDLED_STUDENT) else None


def make_student(tuned: str, student: str, out: str, data: str, refine_steps: int) -> dict:
    """``<out>/final``: the transfer, refined for ``refine_steps`` on ``data`` (and the fine-tune's prior images),
    timed (wall seconds; a finished refining run is reused and its time kept)."""
    from latentgen.train.distill import DistillConfig, run

    path = os.path.join(out, "bench_time.json")
    spent = read_json(path, {})
    flags = ["--data", "D", "--refine-steps", str(refine_steps), "--batch-size", str(REFINE_BATCH)] \
        if refine_steps else []
    t0 = time.perf_counter()
    res = run(DistillConfig(model=tuned, from_student=student, out=out, resume="latest", progress=False,
                            **({"data": (data,), "refine_steps": refine_steps, "batch_size": REFINE_BATCH}
                               if refine_steps else {})))
    if "wall_s" not in spent or spent.get("refine_steps") != refine_steps:
        spent = {"wall_s": time.perf_counter() - t0, "refine_steps": refine_steps}
        os.makedirs(out, exist_ok=True)
        with open(path, "w") as f:
            json.dump(spent, f)
    return {"folder": res["final"], "wall_s": spent["wall_s"], "refine": res.get("refine"),
            "command": " ".join(["latentgen train distill --model TUNED --from-student", model_name(student),
                                 *flags, "--out O"])}


def seconds_per_image(models: dict, prompts: list[str], seed: int, batch: int = 1) -> dict:
    """Median wall seconds per image of each of ``models`` (name -> (pipeline, sampling settings)) in calls of
    ``batch`` prompts, the models taking turns on each call so that a change in the machine's load falls on
    both."""
    times = {name: [] for name in models}
    for i in range(0, len(prompts) - batch + 1, batch):
        chunk = prompts[i:i + batch]
        for name, (pipe, s) in models.items():
            t0 = time.perf_counter()
            pipe(chunk, generator=[torch.Generator("cpu").manual_seed(seed + i + j) for j in range(batch)],
                 sampler=s["sampler"], num_inference_steps=s["steps"], guidance_scale=s["guidance"])
            times[name].append((time.perf_counter() - t0) / batch)
    return {name: statistics.median(t[1:]) for name, t in times.items()}  # the first call warms up


def student_case(args, tuned: str, data: str, teacher_pipe, word, s: dict, load, sampling, evaluate) -> dict:
    """The student of the fine-tune in ``tuned`` (``args.student``, refined on ``data``) measured beside its
    teacher."""
    made = make_student(tuned, args.student, os.path.join(tuned, "student"), data, args.student_refine_steps)
    pipe = load(args, made["folder"])
    ss = sampling(argparse.Namespace(model=made["folder"], guidance=None, sample_steps=None))
    prompts = [word.prompt(o) for o in word.objects(SPEED_BATCH * 4, random.Random(args.seed))]
    models = {"teacher": (teacher_pipe, s), "student": (pipe, ss)}
    return {"student": args.student, "made": made, "sampling": ss, "after": evaluate(pipe, word, args, ss),
            "seconds_per_image": seconds_per_image(models, prompts[:SPEED_IMAGES + 1], args.seed),
            f"seconds_per_image_batch{SPEED_BATCH}": seconds_per_image(models, prompts, args.seed, SPEED_BATCH)}


def minutes(wall_s: float) -> str:
    """A table's minutes cell: a transfer takes seconds."""
    return f"{wall_s / 60:.1f}" if wall_s >= 6 else "< 0.1"


def took(wall_s: float) -> str:
    return f"{wall_s / 60:.1f} min" if wall_s >= 60 else f"{wall_s:.0f} s"


def student_row(name: str, t: dict) -> str:
    """The summary table's row: the student against its teacher."""
    st, a = t["student"], t["after"]
    b = st["after"]
    behind = ", ".join(f"{label} {100 * (x - y):+.1f}" for label, x, y in (
        ("new word", a["new_word"]["correct"], b["new_word"]["correct"]),
        ("1 object", a["adherence"]["1_object"], b["adherence"]["1_object"]),
        ("2 objects", a["adherence"]["2_objects"], b["adherence"]["2_objects"])))
    sp, sp8 = st["seconds_per_image"], st.get(f"seconds_per_image_batch{SPEED_BATCH}")
    faster = f"{sp['teacher'] / sp['student']:.1f}x" + (f" ({sp8['teacher'] / sp8['student']:.1f}x at batch "
                                                        f"{SPEED_BATCH})" if sp8 else "")
    return (f"| {name} student ({st['sampling']['steps']} steps) | prompts naming it drawn right | "
            f"teacher {100 * a['new_word']['correct']:.1f}% | {100 * b['new_word']['correct']:.1f}% | points "
            f"behind the teacher: {behind}; {faster} faster per image | "
            f"{minutes(st['made']['wall_s'])} |")


def student_section(t: dict, groups: tuple[str, ...]) -> list[str]:
    """The case section's student row and its note."""
    st = t["student"]
    q, a = st["after"]["new_word"], st["after"]["adherence"]
    cells = [q[k] for k in ("correct", "color", "shape", "size", "position", "one_object")] + [a[g] for g in groups]
    sp, sp8 = st["seconds_per_image"], st.get(f"seconds_per_image_batch{SPEED_BATCH}")
    return ["| student | " + " | ".join(f"{v:.3f}" for v in cells) + " |", "",
            (f"Student: `{st['made']['command']}` ({took(st['made']['wall_s'])}), sampled with "
             f"{st['sampling']}. Seconds per image at batch 1 (median of {SPEED_IMAGES}): teacher "
             f"{sp['teacher']:.3f}, student {sp['student']:.3f} ({sp['teacher'] / sp['student']:.1f}x)"
             + (f"; per image in calls of {SPEED_BATCH}: teacher {sp8['teacher']:.3f}, student {sp8['student']:.3f} "
                f"({sp8['teacher'] / sp8['student']:.1f}x)" if sp8 else "") + "."), ""]
