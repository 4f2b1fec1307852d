"""Every benchmark on the bundled model, one report: ``bench/RESULTS.md`` and a sample sheet.

    nice -n 10 python -m bench.run_all                 # n = 50 prompts per group (about an hour on 2 cores)
    python -m bench.run_all --n 20 --skip samplers     # a shorter run
    python -m bench.run_all --model runs/quick/unet --student-root runs/quick/distill

Sections: quality of the teacher and the 4-step student against the bundled model's targets
(``latentgen.eval.adherence``), the VAE's PSNR and the CLIP's probing (``latentgen.eval``), emoji
fidelity on OpenMoji, trained and held-out names (``bench.emoji``), the distillation table
(``bench.distill``), speed (``bench.speed``), adherence by sampler and steps (``bench.samplers``),
the shapes checker's own accuracy (``bench.checker_accuracy``, kept from its last run unless
``--checker``) and the app under load (``bench.load``, kept from its own run). Each benchmark also
writes its own ``bench/results/*``. With every section skipped (``--skip quality codec emoji distill speed
samplers sheet``) the report is only reassembled from ``bench/results``, keeping its opening paragraph.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS_DIR = os.path.join(HERE, "results")
REPORT = os.path.join(HERE, "RESULTS.md")
SECTIONS = ("quality", "codec", "emoji", "distill", "speed", "samplers", "sheet")
TARGETS = {"1_object": 0.97, "2_objects": 0.90, "heldout": 0.70}
SHEET_PROMPTS = (
    "a large red circle at center", "a small blue square at top left", "a large yellow triangle at bottom right",
    "a large green square at left and a small purple circle at right",
    "a large blue circle at top and a large orange square at bottom",
    "a large purple square at center", "a large orange triangle at top", "a small green circle at bottom left",
)


SHEET_TEXT = ("![samples](results/samples.png)\n\nTop row: the teacher; bottom row: the 4-step student; seed i "
              "for prompt i. The last three prompts name held-out pairs.\n")


def _weights(name: str) -> str:
    from latentgen.pipeline import DEFAULT_MODEL_DIR

    return os.path.join(os.path.dirname(DEFAULT_MODEL_DIR), name)


def _read(name: str) -> str:
    path = os.path.join(RESULTS_DIR, name)
    if not os.path.isfile(path):
        return f"_(no {name}: run its benchmark)_\n"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    # demote the benchmark's own headings one level below this report's sections
    return "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines()) + "\n"


def heldout_by_pair(reports: dict) -> list[str]:
    """The held-out group one pair at a time (objects right / prompts), as markdown lines."""
    have = {label: rep["heldout"]["by_pair"] for label, rep in reports.items() if "by_pair" in rep.get("heldout", {})}
    if not have:
        return []
    pairs = sorted({p for by in have.values() for p in by})
    lines = ["The held-out group by pair (object right, of the prompts naming it). A pair measures composition only "
             "if no training image of the model drew it: the model card's *Held-out pairs* says which did.", "",
             "| model | " + " | ".join(pairs) + " |", "|---|" + "---:|" * len(pairs)]
    for label, by in have.items():
        lines.append(f"| {label} | " + " | ".join(
            f"{100 * by[p]['object']:.1f}% ({round(by[p]['object'] * by[p]['n'])}/{by[p]['n']})" if p in by else ""
            for p in pairs) + " |")
    return lines + [""]


def quality(teacher: str, student: str | None, n: int) -> str:
    from latentgen import LatentGenPipeline
    from latentgen.eval.adherence import evaluate_shapes
    from latentgen.pipeline import read_model_card_defaults

    rows, reports = [], {}
    for label, folder in (("teacher", teacher), ("4-step student", student)):
        if not folder:
            continue
        card = read_model_card_defaults(folder)
        pipe = LatentGenPipeline.from_pretrained(folder)
        rep = evaluate_shapes(pipe, n=n, steps=card.get("num_inference_steps"), sampler=card.get("sampler"),
                              guidance=card.get("guidance_scale"), seed=0, batch_size=8,
                              groups=("1_object", "2_objects", "3_objects", "heldout"))
        reports[label] = rep
        s = rep["settings"]
        rows.append(f"| {label} | {s['sampler']} {s['steps']} steps, guidance {s['guidance']} | "
                    + " | ".join(f"{100 * rep[g]['full_prompt_accuracy']:.1f}%"
                                 for g in ("1_object", "2_objects", "3_objects", "heldout"))
                    + f" | {rep['seconds_per_image']:.3f} |")
    for label, rep in reports.items():  # train.bundle --eval-teacher / --eval-student read these
        with open(os.path.join(RESULTS_DIR, f"quality-{label.split()[-1]}.json"), "w") as f:
            json.dump(rep, f, indent=2)
    lines = [(f"Full-prompt accuracy of the shapes checker, n = {n} prompts per group, each model at its card's "
             "settings (`latentgen eval shapes --model DIR --n N`)."), "",
             "| model | settings | 1 object | 2 objects | 3 objects | held-out pairs | s / image |",
             "|---|---|---:|---:|---:|---:|---:|", *rows,
             "| target | | >= 97% | >= 90% | | >= 70% | |", "", *heldout_by_pair(reports)]
    if "teacher" in reports and "4-step student" in reports:
        gaps = {g: 100 * (reports["teacher"][g]["full_prompt_accuracy"]
                          - reports["4-step student"][g]["full_prompt_accuracy"])
                for g in ("all", "1_object", "2_objects", "3_objects", "heldout")}
        label = {"all": "1-3 objects pooled"}
        within = [label.get(g, g) for g, d in gaps.items() if d <= 3]
        lines += [("Teacher minus student, points (target: the student within 3 points): "
                   + ", ".join(f"{label.get(g, g)} {d:+.1f}" for g, d in gaps.items())
                   + f". Within 3: {', '.join(within) or 'none'}."), ""]
    met = {g: reports["teacher"][g]["full_prompt_accuracy"] >= t for g, t in TARGETS.items()} \
        if "teacher" in reports else {}
    verdicts = ", ".join(f"{g} {'yes' if ok else 'no'}" for g, ok in met.items())
    lines += [f"Targets met: {verdicts}.", ""]
    return "\n".join(lines)


def codec(teacher: str, n: int, emoji_test: str | None = None) -> str:
    """The bundled VAE's PSNR on fresh shapes scenes and on OpenMoji; the bundled CLIP's probing.

    ``emoji_test``: the recipe's ``data/emoji-heldout`` (emoji its models never saw); without it,
    the group-wise split of bench.vae, which a recipe that held nothing out has trained on.
    """
    from diffusers import AutoencoderKL

    from latentgen.data.captions import METADATA_FILE
    from latentgen.data.folder import ImageCaptionDataset
    from latentgen.data.shapes import write_shapes_folder
    from latentgen.eval.psnr import psnr_table, reconstruction_psnr

    work = os.path.join(HERE, "_work")
    shapes = os.path.join(work, f"run_all_shapes_{n}")
    if not os.path.isfile(os.path.join(shapes, METADATA_FILE)):
        write_shapes_folder(shapes, n, size=64, seed=12345)  # scenes no training run drew (seed)
    vae = AutoencoderKL.from_pretrained(os.path.join(teacher, "vae")).eval()
    rows = [{"data": "shapes, fresh scenes", "images": n, "target_db": 32,
             "psnr": reconstruction_psnr(vae, ImageCaptionDataset([shapes], size=64))}]
    if emoji_test:
        label = "OpenMoji, held out by the recipe (never seen)"
    else:
        from bench.vae import emoji_split

        _, emoji_test = emoji_split(256)
        label = "OpenMoji (group-wise split of bench.vae; seen, unless the recipe held them out)"
    emoji = ImageCaptionDataset([emoji_test], size=64)
    rows.append({"data": label, "images": len(emoji), "target_db": 26, "psnr": reconstruction_psnr(vae, emoji)})
    extras = os.path.join(work, "openmoji_extras_64")
    if not os.path.isfile(os.path.join(extras, METADATA_FILE)):
        from latentgen.data.emoji import write_emoji_folder

        write_emoji_folder(extras, size=64, extras=True)
    extras = ImageCaptionDataset([extras], size=64)
    rows.append({"data": "OpenMoji extras: its unnamed glyphs, which no model trains on (never seen)",
                 "images": len(extras), "target_db": 26, "psnr": reconstruction_psnr(vae, extras)})
    result = {"model": teacher, "vae": rows}  # train.bundle --eval-codec reads it
    lines = psnr_table(rows)
    if os.path.isdir(os.path.join(teacher, "clip")):
        from bench.clip import measure, shapes_folders

        _, test = shapes_folders(10, n)
        res = measure(teacher, test, None, n)
        result["clip"] = {"shapes_probing": res["shapes_probing"], "shapes_retrieval": res["shapes_retrieval"]}
        p = res["shapes_probing"]
        lines += ["| CLIP probing (held-out shapes) | accuracy | target |", "|---|---:|---:|"]
        for kind, target in (("color", 95), ("shape", 95), ("size", 90), ("position", 90), ("swap", None)):
            lines.append(f"| {kind} | {100 * p[kind]:.1f}% | {f'>= {target}%' if target else '-'} |")
        r = res["shapes_retrieval"]
        lines += ["", (f"Shapes retrieval among {r['n']}: text-to-image R@1 {100 * r['t2i_r1']:.1f}%, R@5 "
                  f"{100 * r['t2i_r5']:.1f}%; image-to-text R@1 {100 * r['i2t_r1']:.1f}%, R@5 "
                  f"{100 * r['i2t_r5']:.1f}%."), ""]
    with open(os.path.join(RESULTS_DIR, "codec.json"), "w") as f:
        json.dump(result, f, indent=2)
    return "\n".join(lines)


def sheet(teacher: str, student: str | None) -> str:
    from latentgen import LatentGenPipeline
    from latentgen.eval.grid import image_grid
    from latentgen.pipeline import read_model_card_defaults

    images, captions = [], []
    for label, folder in (("teacher", teacher), ("student", student)):
        if not folder:
            continue
        card = read_model_card_defaults(folder)
        pipe = LatentGenPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        gens = [torch.Generator("cpu").manual_seed(i) for i in range(len(SHEET_PROMPTS))]
        images += pipe(list(SHEET_PROMPTS), num_inference_steps=card.get("num_inference_steps", 25),
                       guidance_scale=card.get("guidance_scale", 4.0), sampler=card.get("sampler"),
                       generator=gens).images
        captions += [f"{label}: {p}" for p in SHEET_PROMPTS]
    path = os.path.join(RESULTS_DIR, "samples.png")
    image_grid(images, captions, cols=len(SHEET_PROMPTS), scale=2, caption_lines=5).save(path)
    return SHEET_TEXT


def header(command: str, teacher: str, student: str | None, seconds: dict, ran: bool) -> str:
    """The report's opening paragraph: what this run measured, or, when it only reassembled the
    report from the results files (every section skipped), the previous paragraph plus a note."""
    note = f" Reassembled from bench/results by `{command}`."
    if not ran and os.path.isfile(REPORT):
        with open(REPORT, encoding="utf-8") as f:
            previous = f.read().split("\n\n")
        if len(previous) > 1 and not previous[1].startswith("#"):
            return previous[1].split(" Reassembled from bench/results by")[0] + note
    rel = os.path.dirname(HERE)
    return (f"`{command}`: teacher `{os.path.relpath(teacher, rel)}`, student "
            f"`{student and os.path.relpath(student, rel)}`; {platform.machine()}, {os.cpu_count()} CPU threads, "
            f"torch {torch.__version__}. Seconds per section: {json.dumps(seconds)} (sections not run this time "
            "keep their last results).")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="teacher folder (default: latentgen/weights/default)")
    p.add_argument("--student-root", help="folder of distilled students (default: latentgen/weights)")
    p.add_argument("--distill-root", help="train.distill --out with every round, for the distillation table "
                                          "(default: --student-root)")
    p.add_argument("--n", type=int, default=50, help="prompts per group")
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS)
    p.add_argument("--checker", action="store_true", help="also rerun the checker benchmark")
    p.add_argument("--emoji-test", help="OpenMoji images the model never saw, for the VAE row: a recipe's "
                                        "data/emoji-heldout (default: bench.vae's split, which a recipe's models may have seen)")
    args = p.parse_args(argv)
    teacher = args.model or _weights("default")
    root = args.student_root or os.path.dirname(teacher)
    from bench.distill import find_students

    student = find_students(root).get(4) if os.path.isdir(root) else None
    os.makedirs(RESULTS_DIR, exist_ok=True)
    seconds, parts = {}, {}
    for name in SECTIONS:
        if name in args.skip:
            continue
        t0 = time.time()
        print(f"[run_all] {name}", flush=True)
        if name == "quality":
            parts[name] = quality(teacher, student, args.n)
        elif name == "codec":
            parts[name] = codec(teacher, min(args.n * 5, 1000), args.emoji_test)
        elif name == "emoji":
            from bench import emoji

            held = ["--heldout", args.emoji_test] if args.emoji_test else ["--recipe-heldout", "256"]
            emoji.main(["--model", teacher, "--n", str(args.n), *held])
        elif name == "distill":
            from bench import distill

            # --teacher-vae: a recipe's students keep the decoder they were distilled with; the
            # bundled teacher may carry a later decoder-only fine-tune, so every row decodes with it
            distill.main(["--teacher", teacher, "--student-root", args.distill_root or root,
                          "--n", str(max(2, args.n // 2)), "--teacher-vae"])
        elif name == "speed":
            from bench import speed

            speed.main(["--model", teacher] + (["--student", student] if student else []))
        elif name == "samplers":
            from bench import samplers

            samplers.main(["--model", teacher, "--n", str(max(2, args.n // 2))])
        elif name == "sheet":
            parts[name] = sheet(teacher, student)
        if name in ("quality", "codec"):  # kept, so that a later run that skips them still reports them
            with open(os.path.join(RESULTS_DIR, f"{name}.md"), "w", encoding="utf-8") as f:
                f.write(parts[name])
        seconds[name] = round(time.time() - t0, 1)
    if args.checker:
        from bench import checker_accuracy

        checker_accuracy.main([])
    command = f"python -m bench.run_all {' '.join(sys.argv[1:] if argv is None else argv)}".strip()
    report = [
        "# latentgen benchmark report", "",
        header(command, teacher, student, seconds, ran=bool(seconds) or args.checker), "",
        "## Sample sheet", "", parts.get("sheet", SHEET_TEXT),
        "## Quality of the bundled model", "", parts.get("quality") or _read("quality.md"),
        "## Codec and text encoder", "", parts.get("codec") or _read("codec.md"),
        _read("emoji.md").replace("](emoji-", "](results/emoji-"),
        "## Distillation", "", _read("distill.md"),
        "## Speed", "", _read("speed.md"),
        "## Samplers", "", _read("samplers.md"),
        "## Shapes checker", "", _read("checker.md"),
        "## Load on the app (its own run)", "", _read("load.md"),
        "## Training-time benchmarks (their own runs)", "", _read("vae.md"),
    ]
    with open(REPORT, "w", encoding="utf-8") as f:
        f.write("\n".join(report))
    print(f"wrote {REPORT}")
    return {"seconds": seconds, "report": REPORT}


if __name__ == "__main__":
    main()
