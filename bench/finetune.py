"""Benchmark of fine-tuning on custom images: a colour the model never saw (teal), and OpenMoji.

    nice -n 10 python -m bench.finetune                                  # the bundled model, both cases
    python -m bench.finetune --model runs/recipe/unet --case teal --steps 300 --lora-rank 8 --n 50

*teal*: 40 one-object shapes scenes drawn in teal (RGB 0, 150, 150), which is not in the shapes
palette, captioned ``a {size} teal {shape} at {position}``. Before and after fine-tuning, ``--n``
seeded prompts of that form are drawn and judged: a sample is right when it holds one object, of
the right shape, size and position, and closer to teal than to every palette colour: the
checker's own blob finder (``latentgen.data.shapes.find_blobs``) with teal added to its palette
(white mixed in at the rim does not count, and a colour off all of them by more than
``OFF_PALETTE`` is none). The model's adherence on the original shapes prompts (``evaluate_shapes``, 1- and 2-object
groups, same n and seeds) shows what the fine-tune cost.
*emoji*: fine-tune on the OpenMoji training split (``bench.vae.emoji_split``, by emoji group) and
compare the Fréchet distance (``latentgen.eval.fid``) between images generated for ``--n``
held-out emoji names and the images of those emoji, before and after; a sample sheet shows a few.

Both cases run ``train.finetune.main`` in this process with ``--resume latest`` (a killed benchmark
continues with the same command) and time it: wall and process CPU seconds, summed over sittings.
Writes ``bench/results/finetune.{json,md}`` and ``finetune_emoji.png`` (``--results`` to write
elsewhere); a case run alone keeps the other case's earlier results.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import random
import sys
import time

import torch
from PIL import Image

from bench.common import machine, read_json, write_results
from bench.vae import emoji_split
from latentgen.data import shapes
from latentgen.eval.adherence import evaluate_shapes
from latentgen.pipeline import (
    DEFAULT_GUIDANCE,
    DEFAULT_STEPS,
    LatentGenPipeline,
    read_model_card_defaults,
    resolve_model_dir,
)
from train import finetune as train_finetune

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "finetune")
WORK = os.path.join(HERE, "_work", "finetune")
TEAL = (0, 150, 150)
REFERENCE = {**shapes.COLORS, "teal": TEAL}  # the palette plus teal, for the colour verdict only
N_TEAL_IMAGES = 40
ADHERENCE_GROUPS = ("1_object", "2_objects")
SHEET_NAMES = 8


# ---------------------------------------------------------------- teal data
def teal_objects(n: int, rng: random.Random) -> list[shapes.ShapeObject]:
    """``n`` one-object scenes, shape, size and position drawn by ``sample_scene``; colour None."""
    return [dataclasses.replace(shapes.sample_scene(rng, include_heldout=True, n_objects=1)[0], color=None)
            for _ in range(n)]


def teal_prompt(obj: shapes.ShapeObject) -> str:
    """The canonical caption with teal as the colour: ``a large teal circle at center``."""
    return f"a {obj.size} teal {obj.shape} at {obj.position}"


def write_teal_folder(out: str, size: int, seed: int) -> str:
    """``N_TEAL_IMAGES`` teal renders and their captions as an image folder (``metadata.jsonl``)."""
    if os.path.isfile(os.path.join(out, "metadata.jsonl")):
        return out
    os.makedirs(out, exist_ok=True)
    rng = random.Random(f"bench-finetune-teal-train:{seed}")
    with open(os.path.join(out, "metadata.jsonl.tmp"), "w") as meta:
        for i, obj in enumerate(teal_objects(N_TEAL_IMAGES, rng)):
            shapes.render_scene([obj], size, rng, fill=TEAL).save(os.path.join(out, f"{i:05d}.png"))
            meta.write(json.dumps({"file_name": f"{i:05d}.png", "text": teal_prompt(obj)}) + "\n")
    os.replace(os.path.join(out, "metadata.jsonl.tmp"), os.path.join(out, "metadata.jsonl"))
    return out


# ---------------------------------------------------------------- teal checker
def measure_object(image) -> dict:
    """The checker's blobs over ``REFERENCE`` (the palette plus teal): how many, and the largest one's
    colour, shape, size and position."""
    blobs = shapes.find_blobs(image, palette=REFERENCE)
    found = {"n_objects": len(blobs), "color": None, "shape": None, "size": None, "position": None}
    if blobs:
        big = blobs[0]
        found.update(color=big.color, shape=big.shape, size=big.size, position=big.position)
    return found


def teal_verdict(found: dict, obj: shapes.ShapeObject) -> dict:
    """Per attribute, and ``correct`` (all of them): one object, teal, right shape, size and position."""
    v = {"one_object": found["n_objects"] == 1, "teal": found["color"] == "teal",
         **{a: found[a] == getattr(obj, a) for a in ("shape", "size", "position")}}
    return {**v, "correct": all(v.values())}


# ---------------------------------------------------------------- generation and evaluation
def sampling(args) -> dict:
    """Sampler, steps and guidance: the flags, else the model card's, else the pipeline's defaults."""
    card = read_model_card_defaults(args.model)
    guidance = card.get("guidance_scale", DEFAULT_GUIDANCE) if args.guidance is None else args.guidance
    return {"sampler": card.get("sampler"), "guidance": guidance,
            "steps": args.sample_steps or card.get("num_inference_steps", DEFAULT_STEPS)}


def generate(pipe, prompts: list[str], seed: int, s: dict, batch_size: int = 8) -> list:
    """One image per prompt; image ``i`` is seeded ``seed + i`` (as ``evaluate_shapes`` does)."""
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        gens = [torch.Generator("cpu").manual_seed(seed + start + i) for i in range(len(chunk))]
        images += pipe(chunk, generator=gens, sampler=s["sampler"], num_inference_steps=s["steps"],
                       guidance_scale=s["guidance"]).images
    return images


def evaluate_teal(pipe, n: int, seed: int, s: dict) -> dict:
    """Share of ``n`` seeded teal prompts drawn right (``correct``) and per attribute."""
    objects = teal_objects(n, random.Random(f"bench-finetune-teal-eval:{seed}"))
    images = generate(pipe, [teal_prompt(o) for o in objects], seed, s)
    verdicts = [teal_verdict(measure_object(img), o) for img, o in zip(images, objects)]
    return {k: sum(v[k] for v in verdicts) / n for k in verdicts[0]} | {"n": n}


def evaluate_adherence(pipe, args, s: dict) -> dict:
    """Full-prompt accuracy on the original shapes prompts per group (the whole report under ``report``)."""
    report = evaluate_shapes(pipe, n=args.n, steps=s["steps"], sampler=s["sampler"], guidance=s["guidance"],
                             seed=args.seed, groups=ADHERENCE_GROUPS)
    return {**{g: report[g]["full_prompt_accuracy"] for g in ADHERENCE_GROUPS}, "report": report}


def evaluate(pipe, args, s: dict) -> dict:
    """The teal prompts and the original shapes prompts."""
    return {"teal": evaluate_teal(pipe, args.n, args.seed, s), "adherence": evaluate_adherence(pipe, args, s)}


# ---------------------------------------------------------------- fine-tuning
def run_dir(case: str, args) -> str:
    """The case's run folder, one per base model, rank and seed (more ``--steps`` later resume it)."""
    digest = hashlib.sha1(os.path.abspath(args.model).encode()).hexdigest()[:8]
    te = "_te" if args.train_text_encoder else ""
    return os.path.join(args.work, f"{case}_{os.path.basename(os.path.normpath(args.model))}_{digest}_"
                                   f"r{args.lora_rank}{te}_seed{args.seed}")


def finetune(data: str, out: str, args) -> dict:
    """``train.finetune.main`` in process with ``--resume latest``; the steps done, and wall and CPU seconds
    summed over sittings (a sitting killed before its end is lost; a run at ``--steps`` is not rerun)."""
    path = os.path.join(out, "bench_time.json")
    spent = read_json(path, {"steps": 0, "wall_s": 0.0, "cpu_s": 0.0})
    if spent["steps"] >= args.steps:
        return spent
    argv = ["--model", args.model, "--data", data, "--out", out, "--lora-rank", str(args.lora_rank),
            "--max-steps", str(args.steps), "--batch-size", str(args.batch_size), "--seed", str(args.seed),
            "--checkpoint-every", str(args.checkpoint_every), "--resume", "latest"]
    argv += (["--lr", str(args.lr)] if args.lr else []) + (["--no-progress"] if not args.progress else [])
    argv += ["--train-text-encoder"] if args.train_text_encoder else []
    wall, cpu = time.perf_counter(), time.process_time()
    res = train_finetune.main(argv)
    if not res["finished"]:
        raise SystemExit(f"the fine-tune stopped at step {res['step']}: run the same command again to resume")
    spent = {"steps": res["step"], "wall_s": spent["wall_s"] + time.perf_counter() - wall,
             "cpu_s": spent["cpu_s"] + time.process_time() - cpu}
    with open(path, "w") as f:
        json.dump(spent, f)
    return spent


def load(args, tuned: str | None = None):
    """The base pipeline, with the fine-tune in ``tuned`` applied (LoRA weights, or a full model folder)."""
    full = tuned is not None and args.lora_rank == 0
    pipe = LatentGenPipeline.from_pretrained(tuned if full else args.model).to(args.device)
    if tuned is not None and not full:
        pipe.load_lora_weights(tuned)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------- the two cases
def teal_case(args, s: dict) -> dict:
    pipe = load(args)
    size = pipe.default_size()[0]
    data = write_teal_folder(os.path.join(args.work, f"teal_data_{size}px_seed{args.seed}"), size, args.seed)
    before = evaluate(pipe, args, s)
    out = run_dir("teal", args)
    spent = finetune(data, out, args)
    after = evaluate(load(args, out), args, s)
    return {"images": N_TEAL_IMAGES, "image_size": size, "run": out, "finetune": spent,
            "before": before, "after": after}


def heldout_emoji(test: str, n: int, seed: int, size: int) -> list[tuple[str, Image.Image]]:
    """``n`` seeded (name, image) pairs of the held-out split, resized as the trainer resizes images."""
    from latentgen.data.folder import load_rgb, resize_center_crop, scan_folder

    items = scan_folder(test).items
    items = random.Random(f"bench-finetune-emoji:{seed}").sample(items, min(n, len(items)))
    return [(it.caption, resize_center_crop(load_rgb(it.path), size)) for it in items]


def emoji_case(args, s: dict) -> dict:
    from latentgen.eval.fid import fid_between
    from latentgen.eval.grid import image_grid

    pipe = load(args)
    size = pipe.default_size()[0]
    train, test = emoji_split(args.emoji_test_groups)
    names, real = zip(*heldout_emoji(test, args.n, args.seed, size))
    before = generate(pipe, list(names), args.seed, s)
    out = run_dir("emoji", args)
    spent = finetune(train, out, args)
    after = generate(load(args, out), list(names), args.seed, s)
    k = min(SHEET_NAMES, len(names))
    captions = [f"{row}: {name}" for row in ("real", "before", "after") for name in names[:k]]
    sheet = image_grid([*real[:k], *before[:k], *after[:k]], captions, cols=k, scale=max(1, 96 // size))
    sheet.save(args.results + "_emoji.png")
    return {"train": train, "test": test, "n_heldout": len(names), "image_size": size, "run": out,
            "finetune": spent, "sheet": os.path.basename(args.results) + "_emoji.png",
            "before": {"frechet_distance": fid_between(before, real, device=args.device)},
            "after": {"frechet_distance": fid_between(after, real, device=args.device)}}


# ---------------------------------------------------------------- results
def markdown(res: dict) -> str:
    lines = ["# Fine-tuning on custom images", ""]
    if "teal" in res:
        t = res["teal"]
        lines += [(f"## teal: a new colour ({t['images']} images at {t['image_size']} px; {t['n']} teal "
                   f"prompts, {t['n']} shapes prompts per group)"), "",
                  ("| model | teal prompts right | teal | shape | size | position | one object "
                   "| shapes: 1 object | shapes: 2 objects |"),
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for when in ("before", "after"):
            q, a = t[when]["teal"], t[when]["adherence"]
            cells = [q[k] for k in ("correct", "teal", "shape", "size", "position", "one_object")]
            cells += [a[g] for g in ADHERENCE_GROUPS]
            lines.append(f"| {when} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
        lines += [""] + _footer(t)
    if "emoji" in res:
        e = res["emoji"]
        lines += [f"## emoji: OpenMoji ({e['n_heldout']} held-out names at {e['image_size']} px)", "",
                  "| model | Fréchet distance to the held-out images |", "|---|---:|",
                  f"| before | {e['before']['frechet_distance']:.2f} |",
                  f"| after | {e['after']['frechet_distance']:.2f} |", "",
                  f"Sample sheet (rows: real, before, after): `{e['sheet']}`", ""] + _footer(e)
    return "\n".join(lines)


def _footer(case: dict) -> list[str]:
    f, cfg = case["finetune"], case["settings"]
    kind = "full UNet" if cfg["lora_rank"] == 0 else f"LoRA rank {cfg['lora_rank']}"
    done = (f"Fine-tune ({kind}, {f['steps']} steps, batch {cfg['batch_size']}): {f['wall_s']:.1f} s wall, "
            f"{f['cpu_s']:.1f} s CPU. Sampling: {cfg['sampling']}. Model: `{cfg['model']}`.")
    return [done, "", f"machine: {case['machine']}", "", f"command: `{case['command']}` ({case['date']})", ""]


def write(args, cases: dict) -> dict:
    """Merge ``cases`` into the results (a case not run keeps its earlier entry) and write both files."""
    path = args.results + ".json"
    res = read_json(path, {})
    res.update(cases)
    write_results(args.results, res, markdown(res))
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="base model folder (default: the bundled one)")
    p.add_argument("--case", choices=["teal", "emoji", "both"], default="both")
    p.add_argument("--steps", type=int, default=500, help="fine-tuning steps")
    p.add_argument("--n", type=int, default=100,
                   help="teal prompts, shapes prompts per group, held-out emoji names")
    p.add_argument("--lora-rank", type=int, default=8, help="0 = full fine-tuning of the UNet")
    p.add_argument("--train-text-encoder", action="store_true")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, help="default: the trainer's (1e-4 LoRA, 2e-5 full)")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--sample-steps", type=int, help="sampling steps (default: the model card's, else 25)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model card's, else 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--emoji-test-groups", type=int, default=256,
                   help="held-out emoji groups of bench.vae's split (made once in bench/_work, then reused)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--work", default=WORK, help="folder of the teal data and the fine-tuning runs")
    p.add_argument("--results", default=RESULTS, help="path prefix of the .json, .md and sheet results")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    if args.n < 2 or args.steps < 1 or args.lora_rank < 0:
        raise SystemExit("error: --n must be >= 2 (the Fréchet distance needs two images), --steps >= 1, "
                         "--lora-rank >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = resolve_model_dir(args.model)
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    s = sampling(args)
    meta = {"n": args.n, "machine": f"{machine()}, {args.device}",
            "command": "python -m bench.finetune " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "settings": {"model": args.model, "lora_rank": args.lora_rank, "batch_size": args.batch_size,
                         "lr": args.lr, "train_text_encoder": args.train_text_encoder, "seed": args.seed,
                         "sampling": s}}
    cases = {}
    for name, fn in (("teal", teal_case), ("emoji", emoji_case)):
        if args.case in (name, "both"):
            cases[name] = {**fn(args, s), **meta}
            write(args, cases)
    return cases


if __name__ == "__main__":
    main()
