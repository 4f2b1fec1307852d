"""The recipe's curve: the teacher's figures against the recipe's minutes, measured on its checkpoints.

    python -m bench.recipe_curve --recipe runs/ship --snapshots runs/ship-snap --every 4000

A recipe's trainers keep their last two checkpoints; ``--snapshots`` is a folder of copies of the others
(the same ``<stage>/checkpoints/checkpoint-<step>`` layout: a ``cp -al`` of each as it appears). Every
checkpoint of the unet and finetune stages whose step is a multiple of ``--every`` (and each stage's last)
has its EMA weights put in the stage's model (the unet stage's export, with its codec, text encoder and
tokenizer; the finetune stage's text encoder is clip2's where the recipe has that stage) and is measured at the bundled card's settings, as the targets are:

- shapes prompts of 1, 2 and 3 objects, and those naming a held-out pair (1 and 2 objects):
  ``latentgen.eval.adherence.evaluate_shapes`` with ``--n`` prompts per group;
- emoji drawn from names the recipe trained on (its held-out ones are not drawn), in OpenMoji and each style
  the recipe added: ``latentgen.eval.emoji.evaluate_emoji`` with ``--emoji-n`` names, top-1 / top-5 / top-20
  of the prompted emoji among every render of its style by pixels.

A checkpoint's recipe minutes are the minutes of the stages before its own plus its stage's minutes times
step / max_steps (the stage's mean pace; a stage still running gives no minutes). The minutes are active
ones, the wall clock less the time the run was stopped or starved, where ``recipe.json`` has them; a stage
begun before the recipe kept them counts its wall clock, and the table says which. Points already measured at the same settings are kept; the results
are ``bench/results/recipe_curve.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

from bench.common import ROOT, machine, read_json, write_results

RESULTS = os.path.join(ROOT, "bench", "results", "recipe_curve")
STAGES = ("unet", "finetune")  # the stages that train the teacher's UNet
SHAPES = ("1_object", "2_objects", "3_objects", "heldout", "heldout_2_objects")
STEP_FIELD = {"unet": "unet_steps", "finetune": "finetune_steps"}


def checkpoints(recipe: str, stage: str, snapshots: str | None) -> dict[int, str]:
    """Step -> folder of every complete checkpoint of ``stage`` in the recipe and in ``snapshots``."""
    found = {}
    for root in filter(None, (recipe, snapshots)):
        folder = os.path.join(root, stage, "checkpoints")
        for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
            m = re.fullmatch(r"checkpoint-(\d+)", name)
            if m and os.path.isfile(os.path.join(folder, name, "trainer_state.json")):
                found.setdefault(int(m.group(1)), os.path.join(folder, name))
    return found


def stage_seconds(state: dict) -> tuple[dict, set]:
    """Each stage's seconds: active ones (``latentgen.train.recipe.ActiveClock``) where the recipe kept them,
    else wall clock; and the stages given in wall clock."""
    active = state.get("active_seconds", {})
    seconds = {**state.get("seconds", {}), **active}
    return seconds, set(seconds) - set(active)


def recipe_minutes(state: dict, stage: str, step: int) -> float | None:
    """The recipe's minutes when ``stage`` reached ``step`` (None until the stage has finished: a stage's
    seconds are added up at the end of each sitting, so a running one's are part of its time)."""
    seconds, _ = stage_seconds(state)
    if stage not in seconds or stage not in state.get("done", {}):
        return None
    from latentgen.train.recipe_presets import STAGES as ORDER

    before = sum(seconds.get(s, 0.0) for s in ORDER[:ORDER.index(stage)])
    return (before + seconds[stage] * step / state["config"][STEP_FIELD[stage]]) / 60


def load_ema(unet, ckpt: str) -> None:
    """The checkpoint's EMA weights (``ema.safetensors``, in ``unet.parameters()`` order) into ``unet``; its
    trained weights where it kept no EMA."""
    import torch
    from safetensors.torch import load_file

    ema = os.path.join(ckpt, "ema.safetensors")
    if not os.path.isfile(ema):
        unet.load_state_dict(load_file(os.path.join(ckpt, "model.safetensors")))
        return
    tensors = load_file(ema)
    params = list(unet.parameters())
    if len(tensors) != len(params):
        raise SystemExit(f"error: {ema} holds {len(tensors)} tensors, the UNet {len(params)}: not this model's")
    with torch.no_grad():
        for i, p in enumerate(params):
            p.copy_(tensors[f"p{i}"])


def style_renders(style: str, size: int):
    """Every emoji of ``style`` as the recipe's data drew it (rendered once per run)."""
    from latentgen.eval.emoji import style_renders as render

    return render(style, size)


def measure(pipe, recipe: str, renders: dict, args) -> dict:
    """The shapes groups' full-prompt accuracy and each style's pixel ranks (``renders``: style -> its
    renders) of one teacher."""
    from latentgen.eval.adherence import evaluate_shapes
    from latentgen.eval.emoji import evaluate_emoji

    shapes = evaluate_shapes(pipe, n=args.n, steps=args.steps, sampler=args.sampler, guidance=args.guidance,
                             groups=SHAPES, progress=True)
    point = {g: shapes[g]["full_prompt_accuracy"] for g in SHAPES}
    held = os.path.join(recipe, "data", "emoji-heldout")
    for style, every in renders.items():
        report, _ = evaluate_emoji(pipe, style=style, n=args.emoji_n, steps=args.steps, guidance=args.guidance,
                                   sampler=args.sampler, exclude=held if os.path.isdir(held) else None,
                                   progress=True, renders=every)
        point[style] = {k: report["pixel"][k] for k in ("top1", "top5", "top20", "median_rank")}
    return point


def markdown(result: dict) -> str:
    styles = result["styles"]
    lines = ["# The recipe's curve", "",
             (f"The teacher of `{result['recipe']}` along its unet and finetune stages, from their checkpoints' "
              f"EMA weights, at {result['settings']['sampler']}, {result['settings']['steps']} steps, guidance "
              f"{result['settings']['guidance']}: full-prompt accuracy of {result['settings']['n']} shapes prompts "
              f"per group, and for {result['settings']['emoji_n']} emoji names the recipe trained on, the share "
              "whose emoji ranks first / in the 5 / 20 nearest of every render of its style by pixels."), "",
             "| stage | step | recipe min | 1 obj | 2 obj | 3 obj | held-out pair | held-out pair, 2 obj | "
             + " | ".join(f"{s} top-1 / 5 / 20" for s in styles) + " |",
             "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(styles)]
    for key in sorted(result["points"], key=lambda k: (STAGES.index(k.split(":")[0]), int(k.split(":")[1]))):
        p = result["points"][key]
        stage, step = key.split(":")
        mins = "-" if p["minutes"] is None else f"{p['minutes']:.0f}"
        cells = [stage, step, mins, *(f"{100 * p[g]:.0f}%" for g in SHAPES)]
        cells += [" / ".join(f"{100 * p[s][k]:.0f}" for k in ("top1", "top5", "top20")) + "%" for s in styles]
        lines.append("| " + " | ".join(cells) + " |")
    walled = result.get("wall_clock_stages")
    lines += ["", "Recipe minutes: each stage's active minutes (the run neither stopped nor starved by another job)"
              + (f", but wall-clock minutes, pauses and shared time included, for {', '.join(walled)} (begun "
                 "before the recipe kept active time)." if walled else "."),
              "", f"Command: `{result['command']}` ({result['machine']}).", ""]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", required=True, help="a `latentgen train recipe` folder whose unet stage finished")
    p.add_argument("--snapshots", default=None, help="a folder of copies of the recipe's older checkpoints")
    p.add_argument("--every", type=int, default=4000, help="measure checkpoints at multiples of this step")
    p.add_argument("--n", type=int, default=100, help="shapes prompts per group")
    p.add_argument("--emoji-n", type=int, default=50, help="emoji names per style")
    p.add_argument("--sampler", default="dpm++2m")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--results", default=RESULTS, help="prefix of the .json and .md written")
    args = p.parse_args(argv)
    if args.every < 1 or args.n < 1 or args.emoji_n < 2:
        p.error("--every and --n must be at least 1, --emoji-n at least 2")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from latentgen import LatentGenPipeline

    with open(os.path.join(args.recipe, "recipe.json"), encoding="utf-8") as f:
        state = json.load(f)
    model = os.path.join(args.recipe, "unet")
    if not os.path.isfile(os.path.join(model, "model_index.json")):
        raise SystemExit(f"error: {model} has no model yet: the curve needs the recipe's unet stage finished")
    styles = ("openmoji", *[s for s in state["config"].get("emoji_styles", "").split(",") if s])
    settings = {k: getattr(args, k) for k in ("n", "emoji_n", "sampler", "steps", "guidance")}
    result = read_json(args.results + ".json", {})
    if result.get("recipe") != args.recipe or result.get("settings") != settings:
        result = {"recipe": args.recipe, "settings": settings, "points": {}}
    result.update(styles=list(styles), machine=machine(),
                  command=" ".join(["python -m bench.recipe_curve", *(sys.argv[1:] if argv is None else argv)]))
    pipe = LatentGenPipeline.from_pretrained(model)
    renders = {style: style_renders(style, pipe.default_size()[1]) for style in styles}
    for stage in STAGES:
        if stage == "finetune" and state["config"].get("clip2_steps"):  # the finetune stage's text encoder
            from latentgen.train.common import load_text_encoder

            pipe.tokenizer, pipe.text_encoder = load_text_encoder(os.path.join(args.recipe, "clip2"))
        found = checkpoints(args.recipe, stage, args.snapshots)
        last = max(found, default=None)
        for step, ckpt in sorted(found.items()):
            key = f"{stage}:{step}"
            if (step % args.every and step != last) or key in result["points"]:
                continue
            print(f"[recipe_curve] {key}: {ckpt}", flush=True)
            load_ema(pipe.unet, ckpt)
            point = measure(pipe, args.recipe, renders, args)
            result["points"][key] = {"minutes": recipe_minutes(state, stage, step), **point}
            write_results(args.results, result, markdown(result))  # each point as soon as it is measured
    for key, p in result["points"].items():  # minutes of a stage that finished after its points were measured
        stage, step = key.split(":")
        p["minutes"] = recipe_minutes(state, stage, int(step))
    result["wall_clock_stages"] = sorted(stage_seconds(state)[1] & set(state.get("done", {})))
    write_results(args.results, result, markdown(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
