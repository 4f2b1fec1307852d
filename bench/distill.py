"""Benchmark of distillation: adherence, image quality and speed of a teacher and its students, one table.

    nice -n 10 python -m bench.distill --teacher runs/unet --student-root runs/distill --n 100

Rows (in the spirit of Meng et al. 2023, Table 1, and Salimans & Ho 2022, Fig. 4): the teacher
with classifier-free guidance (two UNet passes per step) at 50 and 25 DDIM steps; the same
teacher at 8, 4, 2 and 1 DDIM steps; the students of ``python -m train.distill`` at 8, 4, 2
and 1 steps (one pass per step; two with ``--two-pass``). Every row uses DDIM, the same
guidance scale, prompts and seeds.

Columns: shapes adherence (full-prompt accuracy, ``latentgen.eval.adherence.evaluate_shapes``)
over all 1-3 object prompts, the 2-object prompts and the held-out colour-shape pairs; the
Fréchet distance (EfficientNet-Lite0 features, ``latentgen.eval.fid``) between all the row's
images and exact renders of the same scenes (``render_scene``); seconds per image (generation
only, after a warm-up call, batches of 8) and the speed-up over the 50-step teacher.
Writes ``bench/results/distill.{json,md}`` (``--results`` to write elsewhere).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random

import torch

from bench.common import write_results
from latentgen.eval.adherence import GROUPS, evaluate_shapes, shapes_eval_set
from latentgen.pipeline import DEFAULT_GUIDANCE, LatentGenPipeline, read_model_card_defaults

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "distill")
EVAL_GROUPS = ("1_object", "2_objects", "3_objects", "heldout")
TEACHER_ROWS = (("teacher + CFG", 50), ("teacher + CFG", 25), ("teacher + CFG", 8), ("teacher + CFG", 4),
                ("teacher + CFG", 2), ("teacher + CFG", 1))
STUDENT_STEPS = (8, 4, 2, 1)


def find_students(root: str) -> dict[int, str]:
    """Step count -> model folder of each distilled student in ``root`` (and ``root`` itself): a
    guidance-conditioned UNet, or a ``train.distill --two-pass`` round (a plain UNet, sampled with CFG)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--student-root {root!r} is not a folder: give train.distill's --out")
    found = {}
    for name in sorted(os.listdir(root)) + [""]:
        folder = os.path.join(root, name)
        cfg = os.path.join(folder, "unet", "config.json")
        if not os.path.isfile(cfg) or not os.path.isfile(os.path.join(folder, "model_index.json")):
            continue
        with open(cfg) as f:
            conditioned = json.load(f).get("time_cond_proj_dim") is not None
        two_pass = False
        if os.path.isfile(os.path.join(folder, "run_config.json")):
            with open(os.path.join(folder, "run_config.json")) as f:
                two_pass = bool(json.load(f).get("two_pass"))
        if not (conditioned or two_pass):
            continue
        steps = read_model_card_defaults(folder).get("num_inference_steps")
        if steps is not None and (steps not in found or name.startswith("round-")):
            found[steps] = folder
    return found


class _Recorder:
    """Calls the pipeline and keeps the images it returns (evaluate_shapes only hands back scores)."""

    def __init__(self, pipe):
        self.pipe, self.images = pipe, []

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def __call__(self, *args, **kwargs):
        out = self.pipe(*args, **kwargs)
        self.images += list(out.images)
        return out


def real_renders(n: int, seed: int, size: int) -> list:
    """Exact renders of the evaluated scenes (the same prompts as evaluate_shapes draws)."""
    from latentgen.data.shapes import render_scene

    images = []
    for g in EVAL_GROUPS:
        for i, (_, objects) in enumerate(shapes_eval_set(n, seed, *GROUPS[g])):
            images.append(render_scene(objects, size, random.Random(f"{seed}:{g}:{i}")))
    return images


def measure(pipe, label: str, steps: int, passes: int, guidance: float, args, real_feats) -> dict:
    from latentgen.eval.fid import frechet_distance, image_features

    pipe(["a red circle"], num_inference_steps=1, guidance_scale=guidance, output_type="np")  # warm-up
    rec = _Recorder(pipe)
    report = evaluate_shapes(rec, n=args.n, steps=steps, sampler="ddim", guidance=guidance, seed=args.seed,
                             batch_size=8, groups=EVAL_GROUPS)
    fd = frechet_distance(image_features(rec.images, device=args.device), real_feats)
    row = {"model": label, "steps": steps, "unet_passes": passes * steps,
           "adherence_all": report["all"]["full_prompt_accuracy"],
           "adherence_2_objects": report["2_objects"]["full_prompt_accuracy"],
           "adherence_heldout": report["heldout"]["full_prompt_accuracy"],
           "frechet_distance": fd, "seconds_per_image": report["seconds_per_image"], "report": report}
    print(f"{label:<16}{steps:>4} steps  all {row['adherence_all']:.3f}  "
          f"2-obj {row['adherence_2_objects']:.3f}  held-out {row['adherence_heldout']:.3f}  FD {fd:.2f}  "
          f"{row['seconds_per_image']:.4f} s/img", flush=True)
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    base = next((r["seconds_per_image"] for r in rows
                 if r["model"].startswith("teacher") and r["steps"] == 50), None)
    lines = [(f"# Distillation: teacher vs students (n = {meta['n']} prompts per group, guidance "
             f"{meta['guidance']}, DDIM, {meta['device']})"), "",
             ("| model | steps | UNet passes | adherence: all | 2 objects | held-out pairs | Fréchet dist. "
             "| s / image | speed-up vs teacher@50 |"), "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        speed = f"{base / r['seconds_per_image']:.1f}x" if base else "-"
        lines.append(f"| {r['model']} | {r['steps']} | {r['unet_passes']} | {r['adherence_all']:.3f} | "
                     f"{r['adherence_2_objects']:.3f} | {r['adherence_heldout']:.3f} | "
                     f"{r['frechet_distance']:.2f} | "
                     f"{r['seconds_per_image']:.4f} | {speed} |")
    where = f"Teacher: `{meta['teacher']}`; students: `{meta['student_root']}`."
    if meta.get("teacher_vae"):
        where += " Every row decodes with the teacher's VAE (`--teacher-vae`)."
    lines += ["", f"{where} {meta['note']}".rstrip(), ""]
    return "\n".join(lines)


def targets(rows: list[dict]) -> dict:
    """Issue 6's target: the 4-step student within 3 points of the 50-step teacher, >= 10x faster."""
    def get(model, steps):
        return next((r for r in rows if r["model"].startswith(model) and r["steps"] == steps), None)

    t50, s4, d4 = get("teacher", 50), get("student", 4), get("teacher", 4)
    if not (t50 and s4):
        return {}
    gap = 100 * (t50["adherence_all"] - s4["adherence_all"])
    speedup = t50["seconds_per_image"] / s4["seconds_per_image"]
    return {"student4_adherence_gap_points": gap, "student4_speedup": speedup,
            "teacher_ddim4_adherence_gap_points": d4 and 100 * (t50["adherence_all"] - d4["adherence_all"]),
            "teacher50_adherence": t50["adherence_all"],
            # a teacher that draws nothing right (e.g. random weights) makes the comparison empty
            "met": (gap <= 3 and speedup >= 10) if t50["adherence_all"] > 0 else None}


def share_vae(teacher, student, where: str) -> None:
    """Give ``student`` the teacher's VAE; refuse one whose latent space differs (channels, scale)."""
    a, b = teacher.vae.config, student.vae.config
    if (a.latent_channels, a.scaling_factor) != (b.latent_channels, b.scaling_factor):
        raise SystemExit(f"error: --teacher-vae: the student in {where} has latents of {b.latent_channels} "
                         f"channels scaled by {b.scaling_factor}, the teacher {a.latent_channels} by "
                         f"{a.scaling_factor}; the teacher's decoder cannot read them (drop --teacher-vae)")
    student.register_modules(vae=teacher.vae)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True, metavar="DIR", help="the guided teacher's model folder")
    p.add_argument("--student-root", required=True, metavar="DIR", help="train.distill's --out")
    p.add_argument("--n", type=int, default=100, help="prompts per group (4 groups)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, help="guidance scale (default: the teacher's card, else 5)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--results", default=RESULTS, help="path prefix of the .json and .md results")
    p.add_argument("--note", default="", help="a sentence added under the table")
    p.add_argument("--teacher-vae", action="store_true",
                   help="decode the students' latents with the teacher's VAE, so that rows differ only in "
                        "their UNets (for a teacher whose decoder was fine-tuned after distillation, such as "
                        "the bundled one: train.vae --decoder-only)")
    args = p.parse_args(argv)
    if args.n < 2:
        raise SystemExit("error: --n must be >= 2 (the Fréchet distance needs at least two images)")
    from latentgen.eval.fid import image_features

    students = find_students(args.student_root)
    missing = [s for s in STUDENT_STEPS if s not in students]
    if len(missing) == len(STUDENT_STEPS):
        raise SystemExit(f"error: no distilled student folders in {args.student_root} (looked for model "
                         f"cards with num_inference_steps in {STUDENT_STEPS}): run train.distill first")
    teacher = LatentGenPipeline.from_pretrained(args.teacher).to(args.device)
    teacher.set_progress_bar_config(disable=True)
    guidance = args.guidance if args.guidance is not None else \
        read_model_card_defaults(args.teacher).get("guidance_scale", DEFAULT_GUIDANCE)
    size = teacher.default_size()[0]
    real_feats = image_features(real_renders(args.n, args.seed, size), device=args.device)

    passes = 2 if guidance > 1 else 1  # classifier-free guidance: an unconditional and a conditional pass
    rows = [measure(teacher, label, steps, passes, guidance, args, real_feats)
            for label, steps in TEACHER_ROWS]
    for steps in STUDENT_STEPS:
        if steps in students:
            student = LatentGenPipeline.from_pretrained(students[steps]).to(args.device)
            student.set_progress_bar_config(disable=True)
            if args.teacher_vae:
                share_vae(teacher, student, students[steps])
            one_pass = student.unet.config.time_cond_proj_dim is not None  # else a --two-pass student: CFG
            rows.append(measure(student, "student", steps, 1 if one_pass else passes, guidance, args, real_feats))
    meta = {"n": args.n, "seed": args.seed, "guidance": guidance, "device": args.device,
            "torch_threads": torch.get_num_threads(), "teacher": args.teacher,
            "student_root": args.student_root, "teacher_vae": args.teacher_vae,
            "students": {str(k): v for k, v in students.items()}, "missing_students": missing,
            "image_size": size, "platform": platform.platform(), "torch": torch.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "note": args.note}
    result = {"meta": meta, "rows": rows, "targets": targets(rows)}
    write_results(args.results, result, markdown(rows, meta))
    if result["targets"]:
        print("targets:", json.dumps(result["targets"]))
    return result


if __name__ == "__main__":
    main()
