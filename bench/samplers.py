"""Shapes adherence against sampling steps, for every sampler, on one model.

    nice -n 10 python -m bench.samplers                         # the bundled teacher
    python -m bench.samplers --model runs/quick/unet --n 25 --steps 4 8 16 32

Every cell is ``latentgen.eval.adherence.evaluate_shapes`` (full-prompt accuracy of the analytic
checker) on the same 1- and 2-object prompts and seeds, at the model's recommended guidance.
Writes ``bench/results/samplers.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import sys

from bench.common import machine, write_results
from latentgen.diffusion import SAMPLERS
from latentgen.eval.adherence import evaluate_shapes
from latentgen.pipeline import (
    DEFAULT_GUIDANCE,
    LatentGenPipeline,
    read_model_card_defaults,
    resolve_model_dir,
)

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "samplers")
GROUPS = ("1_object", "2_objects")


def markdown(res: dict) -> str:
    steps = res["steps"]
    lines = [(f"# Adherence against steps, by sampler (n = {res['n']} prompts per group, guidance "
             f"{res['guidance']}, {res['image_size']} px)"), "",
             (f"Model: `{res['model']}`. Cells: full-prompt accuracy, 1-object / 2-object prompts; "
             "last column: seconds per image at the most steps."), "",
             "| sampler | " + " | ".join(f"{s} steps" for s in steps) + " | s / image |",
             "|---|" + "---:|" * (len(steps) + 1)]
    for name in res["samplers"]:
        cells = res["table"][name]
        row = [f"{100 * cells[str(s)]['1_object']:.0f}% / {100 * cells[str(s)]['2_objects']:.0f}%" for s in steps]
        lines.append(f"| {name} | " + " | ".join(row) + f" | {cells[str(steps[-1])]['seconds_per_image']:.3f} |")
    lines += ["", f"machine: {res['machine']}; command: `{res['command']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: the bundled teacher)")
    p.add_argument("--n", type=int, default=25, help="prompts per group")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    p.add_argument("--guidance", type=float, help="default: the model card's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=RESULTS)
    args = p.parse_args(argv)
    model = resolve_model_dir(args.model)
    guidance = args.guidance if args.guidance is not None else \
        read_model_card_defaults(model).get("guidance_scale", DEFAULT_GUIDANCE)
    pipe = LatentGenPipeline.from_pretrained(model)
    table = {}
    for name in args.samplers:
        table[name] = {}
        for steps in args.steps:
            r = evaluate_shapes(pipe, n=args.n, steps=steps, sampler=name, guidance=guidance, seed=args.seed,
                                batch_size=8, groups=GROUPS)
            table[name][str(steps)] = {g: r[g]["full_prompt_accuracy"] for g in GROUPS}
            table[name][str(steps)]["seconds_per_image"] = r["seconds_per_image"]
            print(name, steps, table[name][str(steps)], flush=True)
    res = {"model": model, "n": args.n, "steps": args.steps, "samplers": args.samplers, "guidance": guidance,
           "seed": args.seed, "image_size": pipe.default_size()[0], "table": table,
           "machine": machine(),
           "command": "python -m bench.samplers " + " ".join(sys.argv[1:] if argv is None else argv)}
    write_results(args.results, res, markdown(res))
    return res


if __name__ == "__main__":
    main()
