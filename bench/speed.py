"""Speed: latentgen against stock diffusers on the same weights, student against teacher, FLOPs.

    nice -n 10 python -m bench.speed                        # the bundled teacher and student
    python -m bench.speed --model runs/quick/unet --student runs/quick/distill/round-4

1. ``LatentGenPipeline`` loads the folder and stock ``diffusers.StableDiffusionPipeline`` is built
   from the very same modules (so only the pipeline code differs); both generate the same prompts
   with the same seeds and settings, alternating call by call in ABBA order (so background load and
   warm caches favour neither); the table gives the median and the fastest seconds per image and
   the largest pixel difference between their images.
2. The teacher with classifier-free guidance (two UNet passes per step) at 50 and 25 steps against
   the 4-step student (one pass per step), in ``LatentGenPipeline`` (``--bf16``: also under bf16 autocast).
3. The UNet's FLOPs per step (``torch.utils.flop_counter`` on one guided step, batch 2) against
   this machine's measured matrix-product peak in fp32 and bf16.

Writes ``bench/results/speed.{json,md}``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

from bench.common import machine, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "speed")
PROMPTS = ("a large red circle at center", "a small blue square at top left and a large yellow triangle at right")


def _bundled(name: str) -> str:
    from latentgen.pipeline import DEFAULT_MODEL_DIR

    return os.path.join(os.path.dirname(DEFAULT_MODEL_DIR), name)


def _call(pipe, i: int, steps: int, guidance: float, bf16: bool = False):
    """One image (prompt and seed ``i``) as a float array, and the seconds it took."""
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    g = torch.Generator("cpu").manual_seed(i)
    t = time.perf_counter()
    with ctx:
        image = pipe(PROMPTS[i % len(PROMPTS)], num_inference_steps=steps, guidance_scale=guidance,
                     generator=g, output_type="np").images
    return image, time.perf_counter() - t


def side_by_side(folder: str, steps: int, guidance: float, n: int) -> dict:
    from diffusers import StableDiffusionPipeline

    from latentgen import LatentGenPipeline

    ours = LatentGenPipeline.from_pretrained(folder)
    # the very same modules in both pipelines: only the pipeline code differs, not where the weights sit
    stock = StableDiffusionPipeline(**ours.components, safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
    for p in (ours, stock):
        p.set_progress_bar_config(disable=True)
        _call(p, 0, 2, guidance)  # warm-up
    times = {"latentgen": [], "diffusers": []}
    diff = 0.0
    for i in range(n):  # ABBA order: neither pipeline always runs first
        if i % 2 == 0:
            a, ta = _call(ours, i, steps, guidance)
            b, tb = _call(stock, i, steps, guidance)
        else:
            b, tb = _call(stock, i, steps, guidance)
            a, ta = _call(ours, i, steps, guidance)
        times["latentgen"].append(ta)
        times["diffusers"].append(tb)
        diff = max(diff, float(abs(a - b).max()))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    return {"model": folder, "steps": steps, "guidance": guidance, "n": n,
            "sampler": type(ours.scheduler).__name__, "latentgen_s": med["latentgen"],
            "diffusers_s": med["diffusers"], "latentgen_vs_diffusers": med["diffusers"] / med["latentgen"],
            "latentgen_min_s": best["latentgen"], "diffusers_min_s": best["diffusers"],
            "max_pixel_diff": diff}


def teacher_vs_student(teacher: str, student: str | None, guidance: float, n: int, bf16: bool) -> list[dict]:
    from latentgen import LatentGenPipeline

    rows = []
    runs = [(teacher, "teacher + CFG", 50, 2), (teacher, "teacher + CFG", 25, 2)]
    if student:
        runs.append((student, "4-step student", 4, 1))
    for folder, label, steps, passes in runs:
        pipe = LatentGenPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        for autocast in (False, True) if bf16 else (False,):
            _call(pipe, 0, 2, guidance, autocast)
            secs = statistics.median(_call(pipe, i, steps, guidance, autocast)[1] for i in range(n))
            rows.append({"model": label, "folder": folder, "steps": steps, "unet_passes": steps * passes,
                         "bf16": autocast, "seconds_per_image": secs})
    base = next(r["seconds_per_image"] for r in rows if r["steps"] == 50 and not r["bf16"])
    for r in rows:
        r["speedup_vs_teacher50"] = base / r["seconds_per_image"]
    return rows


def flops(folder: str, guidance: float) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from bench.bf16_speed import matmul_tflops
    from latentgen import LatentGenPipeline

    pipe = LatentGenPipeline.from_pretrained(folder)
    unet = pipe.unet
    c, s = unet.config.in_channels, unet.config.sample_size
    x = torch.randn(2, c, s, s)  # (2, C, h, w): the unconditional and conditional halves of one guided step
    emb = pipe.encode_prompt(["", PROMPTS[0]], "cpu")  # (2, L, D)
    t = torch.tensor([500, 500])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, t, encoder_hidden_states=emb)
    per_step = counter.get_total_flops()
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=emb)  # warm-up
        reps = []
        for _ in range(5):
            t0 = time.perf_counter()
            unet(x, t, encoder_hidden_states=emb)
            reps.append(time.perf_counter() - t0)
    secs = min(reps)
    peak32, peak16 = matmul_tflops(1024, torch.float32, 5), matmul_tflops(1024, torch.bfloat16, 5)
    achieved = per_step / secs / 1e12
    return {"unet_params_M": sum(p.numel() for p in unet.parameters()) / 1e6,
            "latent": [c, s, s], "gflops_per_guided_step": per_step / 1e9, "seconds_per_guided_step": secs,
            "achieved_tflops_fp32": achieved, "matmul_peak_tflops_fp32": peak32,
            "matmul_peak_tflops_bf16": peak16, "share_of_fp32_peak": achieved / peak32,
            "share_of_bf16_peak": achieved / peak16}


def markdown(res: dict) -> str:
    s, f = res["side_by_side"], res["flops"]
    lines = [f"# Speed ({res['machine']})", "",
             (f"## latentgen against stock diffusers (same folder, {s['sampler']}, {s['steps']} steps, guidance "
             f"{s['guidance']}, batch 1, {s['n']} calls each, ABBA order, the same modules in both)"), "",
             "| pipeline | median s / image | fastest s / image | median relative |", "|---|---:|---:|---:|",
             f"| `LatentGenPipeline` | {s['latentgen_s']:.3f} | {s['latentgen_min_s']:.3f} | 1.00 |",
             (f"| `diffusers.StableDiffusionPipeline` | {s['diffusers_s']:.3f} | "
             f"{s['diffusers_min_s']:.3f} | {s['diffusers_s'] / s['latentgen_s']:.2f} |"), "",
             f"Largest pixel difference between the two pipelines' images (0..1 scale): {s['max_pixel_diff']:.2e}.",
             "", "## Teacher against the 4-step student (`LatentGenPipeline`, batch 1)", "",
             "| model | steps | UNet passes | autocast | s / image | speed-up vs teacher@50 |",
             "|---|---:|---:|---|---:|---:|"]
    for r in res["teacher_vs_student"]:
        lines.append(f"| {r['model']} | {r['steps']} | {r['unet_passes']} | {'bf16' if r['bf16'] else 'fp32'} | "
                     f"{r['seconds_per_image']:.3f} | {r['speedup_vs_teacher50']:.1f}x |")
    lines += ["", "## UNet compute", "",
              (f"{f['unet_params_M']:.1f} M parameters on {'x'.join(map(str, f['latent']))} latents: "
              f"{f['gflops_per_guided_step']:.2f} GFLOP per guided step (batch 2), "
              f"{1000 * f['seconds_per_guided_step']:.1f} ms, i.e. {f['achieved_tflops_fp32'] * 1000:.1f} GFLOP/s: "
              f"{100 * f['share_of_fp32_peak']:.1f}% of the measured fp32 matrix-product peak "
              f"({f['matmul_peak_tflops_fp32'] * 1000:.0f} GFLOP/s, 1024^2) and "
              f"{100 * f['share_of_bf16_peak']:.1f}% of the bf16 peak ({f['matmul_peak_tflops_bf16'] * 1000:.0f} "
              "GFLOP/s)."), "", f"command: `{res['command']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="teacher model folder (default: the bundled one)")
    p.add_argument("--student", default=None, help="4-step student folder (default: the bundled one, if any)")
    p.add_argument("--steps", type=int, default=25, help="steps of the side-by-side comparison")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--n", type=int, default=6, help="images per measurement")
    p.add_argument("--bf16", action="store_true", help="also time bf16 autocast (slow on AVX2-only CPUs)")
    p.add_argument("--results", default=RESULTS)
    args = p.parse_args(argv)
    teacher = args.model or _bundled("default")
    student = args.student or (_bundled("default-4step") if args.model is None else None)
    if student and not os.path.isdir(student):
        student = None
    res = {"machine": machine(),
           "command": "python -m bench.speed " + " ".join(argv if argv is not None else sys.argv[1:])}
    res["side_by_side"] = side_by_side(teacher, args.steps, args.guidance, args.n)
    res["teacher_vs_student"] = teacher_vs_student(teacher, student, args.guidance, args.n, args.bf16)
    res["flops"] = flops(teacher, args.guidance)
    write_results(args.results, res, markdown(res))
    return res


if __name__ == "__main__":
    main()
