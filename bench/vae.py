"""Benchmark of the VAE latent codec: held-out reconstruction PSNR on shapes and OpenMoji (64 px).

    nice -n 10 python -m bench.vae                 # the recommended preset on both sets
    nice -n 10 python -m bench.vae --choice        # the factor / channel comparison on OpenMoji

Shapes: train on ``write_shapes_folder(seed=0)``, test on a folder drawn with another seed.
OpenMoji: the whole set, split by emoji *group* (an emoji and its skin-tone variants fall on the
same side), so no test image has a near-twin in training. PSNR is the mean per-image PSNR of
``decode(encode(x).mode())`` clamped to [-1, 1] on the test images only. Training time is wall
clock and process CPU time on this machine (shared with other jobs: the wall figure is an upper bound).
Writes ``bench/results/vae.{json,md}`` (or ``vae_choice.{json,md}`` with ``--choice``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

from bench.common import read_json
from latentgen.data.captions import METADATA_FILE
from latentgen.data.emoji import split_emoji_folder, write_emoji_folder
from latentgen.data.shapes import write_shapes_folder
from latentgen.models.vae import get_vae_config
from latentgen.train import vae as train_vae

HERE = os.path.dirname(os.path.abspath(__file__))
WORK = os.path.join(HERE, "_work")
RESULTS = os.path.join(HERE, "results")
TARGETS = {"shapes": 32.0, "openmoji": 26.0}
NOTES = "<!-- notes: kept when the table above is rewritten -->"


# ---------------------------------------------------------------- data
def shapes_split(n_train: int, n_test: int) -> tuple[str, str]:
    train, test = os.path.join(WORK, f"shapes_train-{n_train}"), os.path.join(WORK, f"shapes_test-{n_test}")
    for folder, n, seed in ((train, n_train, 0), (test, n_test, 1)):
        if not os.path.isfile(os.path.join(folder, METADATA_FILE)):
            write_shapes_folder(folder, n, size=64, seed=seed)
    return train, test


def emoji_split(n_test: int, seed: int = 0) -> tuple[str, str]:
    """Split OpenMoji into train/test folders by group (skin-tone modifiers removed); one pair of
    folders per ``(n_test, seed)``, so a split once made is reused only for the same request."""
    every = os.path.join(WORK, "emoji_all")
    train, test = (os.path.join(WORK, f"emoji_{part}-{n_test}-s{seed}") for part in ("train", "test"))
    if not os.path.isfile(os.path.join(every, METADATA_FILE)):
        write_emoji_folder(every, size=64)
    if not os.path.isfile(os.path.join(test, METADATA_FILE)):
        split_emoji_folder(every, train, test, n_test, seed)
    return train, test


# ---------------------------------------------------------------- one run
def run(name: str, preset: str, train: str, test: str, steps: int, args) -> dict:
    out = os.path.join(WORK, f"run_{name}_{preset}" + ("_hflip" if args.hflip else ""))
    cfg = train_vae.VAETrainConfig(
        data=(train,), val_data=(test,), out=out, preset=preset, max_steps=steps, batch_size=args.batch_size,
        lr=args.lr, seed=0, validate_every=args.validate_every, checkpoint_every=250, resume="latest",
        hflip=args.hflip, progress=args.progress,
        ema_decay=args.ema_decay if args.ema_decay and not args.choice else None)  # evaluated with the EMA
    wall, cpu = time.time(), time.process_time()
    summary = train_vae.run(cfg)
    spent = os.path.join(out, "bench_time.json")  # a run resumed to more steps adds to its earlier time
    before = read_json(spent, {"train_s": 0.0, "cpu_s": 0.0})
    cpu_before = before.get("cpu_s")  # None: a sitting's CPU time went unrecorded (see the notes)
    total = {"train_s": before["train_s"] + summary["train_time_s"],
             "cpu_s": None if cpu_before is None else cpu_before + time.process_time() - cpu}
    with open(spent, "w") as f:
        json.dump(total, f)
    if not summary.get("finished"):  # stopped (SIGTERM): its checkpoint and time are kept for the rerun
        raise SystemExit(f"{name}/{preset}: stopped at step {summary.get('step')}; rerun the same command to resume")
    cfg = get_vae_config(preset)
    c, s, _ = cfg.latent_shape
    return {"set": name, "preset": preset, "factor": cfg.downsample_factor, "latent_shape": list(cfg.latent_shape),
            "latent_numel": c * s * s, "unet_tokens": s * s, "steps": summary["steps"],
            "batch_size": args.batch_size, "lr": args.lr, "hflip": bool(args.hflip),
            "ema_decay": None if args.choice else args.ema_decay,
            "psnr_test": round(summary["val_psnr"], 2),
            "n_test": summary["n_val"], "scaling_factor": round(summary["scaling_factor"], 4),
            "latent_mean": round(summary["latent_mean"], 4), "latent_std": round(summary["latent_std"], 4),
            "wall_s_this_call": round(time.time() - wall, 1), "train_time_s": round(total["train_s"], 1),
            "cpu_s": None if total["cpu_s"] is None else round(total["cpu_s"], 1), "target_db": TARGETS.get(name),
            "params_M": round(sum(p.numel() for p in __import__("diffusers").AutoencoderKL
                                  .from_pretrained(summary["vae"]).parameters()) / 1e6, 3),
            "model": os.path.relpath(summary["vae"], os.path.dirname(HERE))}


def write(stem: str, rows: list[dict], header: str, extra: dict):
    """Write the table, keeping rows of other (set, preset) pairs from an earlier or parallel invocation."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{stem}.json")

    def key(r):
        return r["set"], r["preset"], r.get("hflip", False)

    mine = {key(r) for r in rows}
    if os.path.isfile(path):
        with open(path) as f:
            rows = [r for r in json.load(f)["rows"] if key(r) not in mine] + rows
    with open(os.path.join(RESULTS, f"{stem}.json"), "w") as f:
        json.dump({"rows": rows, **extra}, f, indent=2)
    for r in rows:  # UNet compute grows with the latent area (its channel count only touches the end convs)
        r["unet_cost_vs_8x8"] = r["latent_shape"][1] * r["latent_shape"][2] / 64
    cols = ["set", "preset", "hflip", "latent_shape", "latent_numel", "unet_cost_vs_8x8", "steps", "ema_decay",
            "psnr_test", "target_db", "n_test", "scaling_factor", "latent_std", "train_time_s", "cpu_s"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join("x".join(map(str, r[c])) if c == "latent_shape"
                                   else str(r.get(c, False if c == "hflip" else None)) for c in cols)
                     + " |")
    lines += ["", f"machine: {extra['machine']}", "", ("commands (a run resumed to more steps keeps its folder "
              "and adds to its time):"), ""] + sorted({f"- `{r['command']}`" for r in rows}) + [""]
    md = os.path.join(RESULTS, f"{stem}.md")
    if os.path.isfile(md):  # hand-written analysis below the marker survives a rerun
        with open(md) as f:
            old = f.read()
        if NOTES in old:
            lines += [NOTES + old.split(NOTES, 1)[1]]
    with open(md, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--choice", action="store_true", help="compare factor 4/8 and 4/8 latent channels on OpenMoji")
    p.add_argument("--preset", default="small64", help="the preset to benchmark (without --choice)")
    p.add_argument("--candidates", nargs="+", default=["small64", "small64_c8", "small64_f8", "small64_f8c8"])
    p.add_argument("--sets", nargs="+", default=["shapes", "openmoji"], choices=["shapes", "openmoji"])
    p.add_argument("--steps", type=int, default=3000, help="training steps per set")
    p.add_argument("--choice-steps", type=int, default=600, help="the fixed budget of each candidate")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--validate-every", type=int, default=0)
    p.add_argument("--ema-decay", type=float, default=0.999, help="EMA of the weights for the benchmarked runs")
    p.add_argument("--n-shapes", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=256)
    p.add_argument("--hflip", action="store_true",
                   help="train on every image and its mirror image (latentgen train vae --hflip)")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 is fastest (in CPU time and wall) on a machine shared with other jobs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    os.makedirs(WORK, exist_ok=True)
    split = {"shapes": lambda: shapes_split(args.n_shapes, args.n_test), "openmoji": lambda: emoji_split(args.n_test)}
    extra = {"machine": f"{platform.machine()} {os.cpu_count()} CPU threads, torch {torch.__version__}, "
                        f"{args.threads} torch thread(s) (shared with other jobs)"}
    command = "nice -n 10 python -m bench.vae " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = []
    if args.choice:
        train, test = split["openmoji"]()
        for preset in args.candidates:
            rows.append({**run("openmoji", preset, train, test, args.choice_steps, args), "command": command})
            write("vae_choice", rows, f"# VAE choice: {args.choice_steps} steps each on OpenMoji 64 px", extra)
        return rows
    for name in args.sets:
        train, test = split[name]()
        rows.append({**run(name, args.preset, train, test, args.steps, args), "command": command})
        write("vae", rows, "# VAE codec: held-out PSNR at 64 px", extra)
    return rows


if __name__ == "__main__":
    main()
