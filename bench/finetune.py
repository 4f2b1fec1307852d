"""Benchmark of fine-tuning on custom images: a new colour, a new shape, a new style, and OpenMoji.

    python -m bench.finetune                                   # the bundled model, the trainer's defaults
    python -m bench.finetune --case teal --case star --n 100 --flags "--prior-loss-weight 2"

*teal* (a new colour) and *star* (a new shape word): 40 one-object shapes scenes, in teal (RGB 0, 150,
150, outside the shapes palette) drawn as the spec's shapes, or as a five-pointed star
(``latentgen.data.shapes.EXTRA_SHAPES``) in the palette's colours, captioned canonically
(``a large teal circle at center``, ``a small red star at top``). Before and after fine-tuning, ``--n``
seeded prompts of that form are drawn and judged with the checker's blob finder
(``latentgen.eval.shapes.find_blobs``), the new colour added to its palette or the new shape to its
shapes: a sample is right when it holds one object of the right colour, shape, size and position. The
model's adherence on the original shapes prompts (``evaluate_shapes``, 1- and 2-object groups, same n
and seeds) shows what the fine-tune cost.
*noto*: a real style the model never saw: ``--style-images`` Noto Color Emoji captioned ``<name>, noto
style``, scored by retrieval among the style's renders, a Fréchet distance and a style share before and
after (``bench.finetune_style``).
For teal and star, the fine-tune's own fast student (``--student``, by default the bundled 4-step student
moved by what the fine-tune changed: ``latentgen train distill --from-student``) is measured beside it, with
its speed (``bench.finetune_student``).
*emoji*: fine-tune on the OpenMoji training split (``bench.vae.emoji_split``, by emoji group) and
compare the Fréchet distance (``latentgen.eval.fid``) between images generated for ``--n``
held-out emoji names and the images of those emoji, before and after; a sample sheet shows a few.

The fine-tune is the documented trainer, ``latentgen.train.finetune.run`` in this process, its
``FinetuneConfig`` given only what is set here (``--lora-rank``, ``--seed``, and ``--steps``, ``--lr``,
``--flags`` when set, read by the trainer's own flag parser), so the trainer's defaults are what is
measured; its wall and CPU seconds include the codec check, decoder tuning and prior images. A killed benchmark resumes with the same command (``--resume latest``).
Writes ``bench/results/finetune.{json,md}`` and ``finetune_emoji.png`` (``--results`` to write
elsewhere); a case run alone keeps the other cases' earlier results.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import random
import shlex
import statistics
import time
from dataclasses import dataclass

import torch
from PIL import Image

from bench.common import machine, model_name, read_json, shown_command, write_results
from bench.finetune_student import default_student, student_case, student_row, student_section
from bench.finetune_style import style_case, style_markdown
from bench.vae import emoji_split
from latentgen.data import shapes
from latentgen.data.captions import METADATA_FILE
from latentgen.eval.adherence import evaluate_shapes
from latentgen.eval.shapes import find_blobs
from latentgen.lora import LORA_FILE
from latentgen.pipeline import (
    LatentGenPipeline,
    read_model_card_defaults,
    resolve_model_dir,
    sampling_defaults,
)
from latentgen.train import finetune as train_finetune
from latentgen.train.config import config_from_args, parser_for

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "finetune")
WORK = os.path.join(HERE, "_work", "finetune")
N_NEW_WORD_IMAGES = 40
ADHERENCE_GROUPS = ("1_object", "2_objects")
SHEET_NAMES = 8


# ---------------------------------------------------------------- new-word data
@dataclass(frozen=True)
class NewWord:
    """A word the base model never drew: a new colour (``fill``, named ``word``) in the spec's shapes, or a
    new shape (one of ``shapes.EXTRA_SHAPES``, named ``word``) in the spec's colours."""

    word: str
    fill: tuple[int, int, int] | None = None  # a new colour's RGB; None: ``word`` is a new shape

    @property
    def palette(self) -> dict:
        return {**shapes.COLORS, self.word: self.fill} if self.fill else dict(shapes.COLORS)

    @property
    def shapes(self) -> tuple[str, ...]:
        return shapes.SHAPES if self.fill else (*shapes.SHAPES, self.word)

    def objects(self, n: int, rng: random.Random) -> list[shapes.ShapeObject]:
        """``n`` one-object scenes (size, position and the known attribute drawn by ``sample_scene``)."""
        objs = [shapes.sample_scene(rng, include_heldout=True, n_objects=1)[0] for _ in range(n)]
        new = {"color": None} if self.fill else {"shape": self.word}
        return [dataclasses.replace(o, **new) for o in objs]

    def prompt(self, obj: shapes.ShapeObject) -> str:
        """The canonical caption with the new word: ``a large teal circle at center``, ``a small red star at top``."""
        return f"a {obj.size} {obj.color or self.word} {obj.shape} at {obj.position}"

    def render(self, obj: shapes.ShapeObject, size: int, rng: random.Random) -> Image.Image:
        return shapes.render_scene([obj], size, rng, fill=self.fill)

    def verdict(self, image, obj: shapes.ShapeObject) -> dict:
        """Per attribute, and ``correct`` (all of them): one object, of the right colour (nearer the new colour
        than every palette colour), shape (best fit among the spec's and the new one), size and position."""
        blobs = find_blobs(image, palette=self.palette, shapes=self.shapes)
        big = blobs[0] if blobs else None
        v = {"one_object": len(blobs) == 1,
             **{a: big is not None and getattr(big, a) == (getattr(obj, a) or self.word)
                for a in shapes.ATTRIBUTES}}
        return {**v, "correct": all(v.values())}


NEW_WORDS = {"teal": NewWord("teal", fill=(0, 150, 150)), "star": NewWord("star")}


def write_new_word_folder(word: NewWord, out: str, size: int, seed: int) -> str:
    """``N_NEW_WORD_IMAGES`` renders of ``word`` and their captions as an image folder (``metadata.jsonl``)."""
    if os.path.isfile(os.path.join(out, METADATA_FILE)):
        return out
    os.makedirs(out, exist_ok=True)
    rng = random.Random(f"bench-finetune-{word.word}-train:{seed}")
    with open(os.path.join(out, METADATA_FILE + ".tmp"), "w") as meta:
        for i, obj in enumerate(word.objects(N_NEW_WORD_IMAGES, rng)):
            word.render(obj, size, rng).save(os.path.join(out, f"{i:05d}.png"))
            meta.write(json.dumps({"file_name": f"{i:05d}.png", "text": word.prompt(obj)}) + "\n")
    os.replace(os.path.join(out, METADATA_FILE + ".tmp"), os.path.join(out, METADATA_FILE))
    return out


# ---------------------------------------------------------------- generation and evaluation
def sampling(args) -> dict:
    """Sampler, steps and guidance: the flags, else the model card's, else the pipeline's defaults
    (:func:`latentgen.loading.sampling_defaults`, which give a student without a card 4 steps)."""
    card = read_model_card_defaults(args.model)
    with open(os.path.join(args.model, "unet", "config.json")) as f:
        student = json.load(f).get("time_cond_proj_dim") is not None
    call = sampling_defaults(card, student)
    guidance = call["guidance_scale"] if args.guidance is None else args.guidance
    return {"sampler": card.get("sampler"), "guidance": guidance,
            "steps": args.sample_steps or call["num_inference_steps"]}


def generate(pipe, prompts: list[str], seed: int, s: dict, batch_size: int = 8) -> list:
    """One image per prompt; image ``i`` is seeded ``seed + i`` (as ``evaluate_shapes`` does)."""
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        gens = [torch.Generator("cpu").manual_seed(seed + start + i) for i in range(len(chunk))]
        images += pipe(chunk, generator=gens, sampler=s["sampler"], num_inference_steps=s["steps"],
                       guidance_scale=s["guidance"]).images
    return images


def evaluate_new_word(pipe, word: NewWord, n: int, seed: int, s: dict) -> dict:
    """Share of ``n`` seeded prompts naming ``word`` drawn right (``correct``), per attribute, and drawn right
    per size asked for (``by_size``: small objects are where a 64 px model loses detail first)."""
    objects = word.objects(n, random.Random(f"bench-finetune-{word.word}-eval:{seed}"))
    images = generate(pipe, [word.prompt(o) for o in objects], seed, s)
    verdicts = [word.verdict(img, o) for img, o in zip(images, objects)]
    sizes = sorted({o.size for o in objects})
    by_size = {z: statistics.mean(v["correct"] for v, o in zip(verdicts, objects) if o.size == z) for z in sizes}
    return {k: sum(v[k] for v in verdicts) / n for k in verdicts[0]} | {"n": n, "by_size": by_size}


def evaluate_adherence(pipe, args, s: dict) -> dict:
    """Full-prompt accuracy on the original shapes prompts per group (the whole report under ``report``)."""
    report = evaluate_shapes(pipe, n=args.n, steps=s["steps"], sampler=s["sampler"], guidance=s["guidance"],
                             seed=args.seed, groups=ADHERENCE_GROUPS)
    return {**{g: report[g]["full_prompt_accuracy"] for g in ADHERENCE_GROUPS}, "report": report}


def evaluate(pipe, word: NewWord, args, s: dict) -> dict:
    """The prompts naming the new word, and the original shapes prompts."""
    return {"new_word": evaluate_new_word(pipe, word, args.n, args.seed, s),
            "adherence": evaluate_adherence(pipe, args, s)}


# ---------------------------------------------------------------- fine-tuning
def trainer_fields(args) -> dict:
    """The fine-tune's settings given here (besides model, data and out): only those set, so the trainer's
    own defaults are what is measured unless one says otherwise."""
    fields = {"seed": args.seed} | ({"lora_rank": args.lora_rank} if args.lora_rank is not None else {})
    fields |= {"max_steps": args.steps} if args.steps else {}
    fields |= {"lr": args.lr} if args.lr else {}
    fields |= {"train_text_encoder": True} if args.train_text_encoder else {}
    return fields


def trainer_flags(args) -> list[str]:
    """``trainer_fields`` as the trainer's flags (``--lora-rank 8 --seed 0 ...``), then ``--flags``: what the
    results show, and what names the run folder."""
    flags = []
    for name, value in trainer_fields(args).items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags + shlex.split(args.flags or "")


def trainer_config(data: str, out: str, args) -> train_finetune.FinetuneConfig:
    """The fine-tune's config, resumed from ``out``: ``trainer_fields``, then what ``--flags`` sets, read by
    the trainer's own parser (so they win, as later flags do on a command line)."""
    cls = train_finetune.FinetuneConfig
    p = parser_for(cls, "bench.finetune --flags")
    argv = ["--model", args.model, "--data", data, "--out", out, *shlex.split(args.flags or "")]
    given = vars(p.parse_args(argv))
    try:
        return config_from_args(cls, {**trainer_fields(args), "resume": "latest", "progress": args.progress,
                                      **given})
    except ValueError as e:
        p.error(str(e))
        raise  # unreachable: p.error exits


def run_dir(case: str, args) -> str:
    """The case's run folder, one per base model and whole trainer config, the trainer's defaults included
    (a killed run resumes there; a finished one is reused only while the trainer would run it the same)."""
    settings = dataclasses.asdict(trainer_config("-", "-", args))
    settings = {k: v for k, v in settings.items() if k not in ("out", "data", "resume", "progress")}
    key = json.dumps([os.path.abspath(args.model), settings], sort_keys=True, default=str)
    return os.path.join(args.work, f"{case}_{hashlib.sha1(key.encode()).hexdigest()[:10]}")


def finetune(data: str, out: str, args) -> dict:
    """``latentgen.train.finetune.run`` in process, resumed: steps, and wall and CPU seconds summed over
    sittings (a sitting killed before its end is lost; a finished run is not rerun)."""
    path = os.path.join(out, "bench_time.json")
    spent = read_json(path, None)
    if spent is not None:
        return spent
    cfg = trainer_config(data, out, args)
    wall, cpu = time.perf_counter(), time.process_time()
    res = train_finetune.run(cfg)
    if not res["finished"]:
        raise SystemExit(f"the fine-tune stopped at step {res['step']}: run the same command again to resume")
    spent = {"steps": res["step"], "wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
             "flags": trainer_flags(args)}
    with open(path, "w") as f:
        json.dump(spent, f)
    return spent


def load(args, tuned: str | None = None):
    """The base pipeline, or the fine-tune in ``tuned``: a model folder (full, or the base with a tuned
    decoder) with the LoRA weights beside it fused, or LoRA weights fused on the base (as the app loads them:
    the adapters' products added to the weights, so a step costs what the base's does)."""
    folder = tuned if tuned and os.path.isfile(os.path.join(tuned, "model_index.json")) else args.model
    pipe = LatentGenPipeline.from_pretrained(folder).to(args.device)
    if tuned and os.path.isfile(os.path.join(tuned, LORA_FILE)):
        pipe.load_lora_weights(tuned)
        pipe.fuse_lora()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------- the cases
def before(pipe, word: NewWord, args, s: dict) -> dict:
    """The base model's figures, computed once per model, word, n and seed (kept in the work folder)."""
    key = hashlib.sha1(json.dumps([os.path.abspath(args.model), word.word, args.n, args.seed, s]).encode())
    path = os.path.join(args.work, f"before_{word.word}_{key.hexdigest()[:10]}.json")
    res = read_json(path, None)
    if res is None:
        res = evaluate(pipe, word, args, s)
        os.makedirs(args.work, exist_ok=True)
        with open(path, "w") as f:
            json.dump(res, f)
    return res


def new_word_case(name: str, args, s: dict) -> dict:
    word = NEW_WORDS[name]
    pipe = load(args)
    size = pipe.default_size()[0]
    data = write_new_word_folder(word, os.path.join(args.work, f"{name}_data_{size}px_seed{args.seed}"), size,
                                 args.seed)
    base = before(pipe, word, args, s)
    out = run_dir(name, args)
    spent = finetune(data, out, args)
    tuned = load(args, out)
    res = {"word": name, "kind": "colour" if word.fill else "shape", "images": N_NEW_WORD_IMAGES,
           "image_size": size, "run": out, "finetune": spent, "before": base,
           "after": evaluate(tuned, word, args, s)}
    if args.student:
        res["student"] = student_case(args, out, data, tuned, word, s, load, sampling, evaluate)
    return res


def heldout_emoji(test: str, n: int, seed: int, size: int) -> list[tuple[str, Image.Image]]:
    """``n`` seeded (name, image) pairs of the held-out split, resized as the trainer resizes images."""
    from latentgen.data.folder import scan_folder
    from latentgen.data.images import load_rgb, resize_center_crop

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
def summary(res: dict) -> list[str]:
    """One row per case: what it teaches before -> after, what it cost, and the fine-tune's minutes."""
    rows = []
    for name in NEW_WORDS:
        if name in res:
            t = res[name]
            b, a = t["before"], t["after"]
            cost = ", ".join(f"{g.replace('_', ' ')} {100 * (b['adherence'][g] - a['adherence'][g]):+.1f}"
                             for g in ADHERENCE_GROUPS)
            rows.append(f"| {name} (new {t['kind']}) | prompts naming it drawn right | "
                        f"{100 * b['new_word']['correct']:.1f}% | {100 * a['new_word']['correct']:.1f}% | "
                        f"points lost on shapes prompts: {cost} | {t['finetune']['wall_s'] / 60:.1f} |")
            rows += [student_row(name, t)] if "student" in t else []
    if "noto" in res:
        e = res["noto"]
        b, a = e["before"], e["after"]
        rows.append(f"| noto (new style) | style share / feature top-5, names not in the folder | "
                    f"{b['new']['style_share']:.2f} / {100 * b['new']['feature']['top5']:.0f}% | "
                    f"{a['new']['style_share']:.2f} / {100 * a['new']['feature']['top5']:.0f}% | bare names, "
                    f"OpenMoji pixel top-5: {100 * b['bare']['pixel']['top5']:.0f}% -> "
                    f"{100 * a['bare']['pixel']['top5']:.0f}% | {e['finetune']['wall_s'] / 60:.1f} |")
    if "emoji" in res:
        e = res["emoji"]
        rows.append(f"| emoji (OpenMoji split) | Fréchet distance to held-out names | "
                    f"{e['before']['frechet_distance']:.1f} | {e['after']['frechet_distance']:.1f} | - | "
                    f"{e['finetune']['wall_s'] / 60:.1f} |")
    if not rows:
        return []
    return ["| case | measure | before | after | cost | fine-tune minutes (2 CPU cores) |",
            "|---|---|---:|---:|---|---:|", *rows, ""]


def markdown(res: dict) -> str:
    lines = ["# Fine-tuning on custom images", "", *summary(res)]
    for name in NEW_WORDS:
        if name in res:
            lines += _new_word_section(res[name])
    if "noto" in res:
        lines += style_markdown(res["noto"]) + _footer(res["noto"])
    if "emoji" in res:
        e = res["emoji"]
        lines += [f"## emoji: OpenMoji ({e['n_heldout']} held-out names at {e['image_size']} px)", "",
                  "| model | Fréchet distance to the held-out images |", "|---|---:|",
                  f"| before | {e['before']['frechet_distance']:.2f} |",
                  f"| after | {e['after']['frechet_distance']:.2f} |", "",
                  f"Sample sheet (rows: real, before, after): `{e['sheet']}`", ""] + _footer(e)
    return "\n".join(lines)


def _new_word_section(t: dict) -> list[str]:
    lines = [(f"## {t['word']}: a new {t['kind']} ({t['images']} images at {t['image_size']} px; {t['n']} "
              f"prompts naming it, {t['n']} shapes prompts per group)"), "",
             (f"| model | {t['word']} prompts right | colour | shape | size | position | one object "
              "| shapes: 1 object | shapes: 2 objects |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for when in ("before", "after"):
        q, a = t[when]["new_word"], t[when]["adherence"]
        cells = [q[k] for k in ("correct", "color", "shape", "size", "position", "one_object")]
        cells += [a[g] for g in ADHERENCE_GROUPS]
        lines.append(f"| {when} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    cost = [t["before"]["adherence"][g] - t["after"]["adherence"][g] for g in ADHERENCE_GROUPS]
    lines += student_section(t, ADHERENCE_GROUPS)[:1] if "student" in t else []
    if by_size := t["after"]["new_word"].get("by_size"):
        lines += ["", f"{t['word']} prompts drawn right after, by the size asked for: " + ", ".join(
            f"{z} {100 * v:.0f}%" for z, v in by_size.items())]
    lines += ["", "Points lost on the original prompts (negative: gained): " + ", ".join(
        f"{g} {100 * c:.1f}" for g, c in zip(ADHERENCE_GROUPS, cost)), ""]
    lines += student_section(t, ADHERENCE_GROUPS)[2:] if "student" in t else []
    return lines + _footer(t)


def _footer(case: dict) -> list[str]:
    f, cfg = case["finetune"], case["settings"]
    done = (f"Fine-tune (`python -m train.finetune --model M --data D --out O {' '.join(f.get('flags', []))}`, "
            f"{f['steps']} steps): {f['wall_s']:.1f} s wall ({f['wall_s'] / 60:.1f} min), {f['cpu_s']:.1f} s CPU, "
            f"codec and prior images included. Sampling: {cfg['sampling']}. Model: `{model_name(cfg['model'])}`.")
    return [done, "", f"machine: {case['machine']}", "", f"command: `{case['command']}`", ""]


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
    p.add_argument("--case", choices=[*NEW_WORDS, "noto", "emoji", "all"], action="append",
                   help="repeatable (default: all): teal (a new colour), star (a new shape), noto (a new style: "
                   "Noto Color Emoji), emoji (OpenMoji)")
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the trainer's)")
    p.add_argument("--n", type=int, default=100,
                   help="teal prompts, shapes prompts per group, held-out emoji names")
    p.add_argument("--lora-rank", type=int, help="0 = full fine-tuning of the UNet (default: the trainer's)")
    p.add_argument("--train-text-encoder", action="store_true")
    p.add_argument("--flags", default="", help="more trainer flags (latentgen train finetune), e.g. "
                   "\"--prior-loss-weight 2\"")
    p.add_argument("--lr", type=float, help="default: the trainer's")
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--sample-steps", type=int, help="sampling steps (default: the model card's, else 25)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model card's, else 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--student", help="teal and star: a student of the base whose move by the fine-tune is "
                   "measured beside it (default: the bundled 4-step student for the bundled model; 'none': no "
                   "student)")
    p.add_argument("--student-refine-steps", type=int, default=0,
                   help="steps the moved student is refined for on the case's folder (0: the move alone)")
    p.add_argument("--style-images", type=int, default=300, help="Noto emoji in the noto case's folder")
    p.add_argument("--style-source", help="the noto case's source (a folder of Noto PNGs; default: the font)")
    p.add_argument("--heldout-names", action=argparse.BooleanOptionalAction, default=True,
                   help="leave the recipe's held-out emoji names out of the noto case (made once in bench/_work)")
    p.add_argument("--emoji-test-groups", type=int, default=256,
                   help="held-out emoji groups of bench.vae's split (made once in bench/_work, then reused)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--work", default=WORK, help="folder of the teal data and the fine-tuning runs")
    p.add_argument("--results", default=RESULTS, help="path prefix of the .json, .md and sheet results")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    if args.n < 2 or (args.steps is not None and args.steps < 1) or (args.lora_rank or 0) < 0:
        raise SystemExit("error: --n must be >= 2 (the Fréchet distance needs two images), --steps >= 1, "
                         "--lora-rank >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = resolve_model_dir(args.model)
    args.student = None if args.student == "none" else args.student or default_student(args.model)
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    s = sampling(args)
    meta = {"n": args.n, "machine": f"{machine()}, {args.device}",
            "command": shown_command("bench.finetune", argv, cache_flags=("--work",)),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "settings": {"model": args.model, "flags": trainer_flags(args), "seed": args.seed, "sampling": s}}
    chosen = set(args.case or ["all"])
    cases = {}
    for name in [*NEW_WORDS, "noto", "emoji"]:
        if name in chosen or "all" in chosen:
            res = (emoji_case(args, s) if name == "emoji" else style_case(args, s) if name == "noto"
                   else new_word_case(name, args, s))
            cases[name] = {**res, **meta}
            write(args, cases)
    return cases


if __name__ == "__main__":
    main()
