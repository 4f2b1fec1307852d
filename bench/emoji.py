"""The emoji benchmark: does the model's image of an emoji name look like that emoji, in each style?

    python -m bench.emoji --model latentgen/weights/default --style openmoji --n 100 --recipe-heldout 256
    python -m bench.emoji --style twemoji --n 30 --recipe-heldout 256

For ``--n`` names drawn (seeded) from a style's emoji, the model draws each once at its card's settings
from the data's caption, and the prompted emoji is ranked among every render of the style by pixels
(L2 at 32 x 32) and by EfficientNet-Lite0 features (cosine): ``latentgen.eval.emoji``, the same as
``latentgen eval emoji``. ``--recipe-heldout N`` makes ``train.recipe``'s held-out emoji again (every
OpenMoji emoji at the model's size, split by group with seed 0, N images held out: ``emoji_holdout``,
256 in the ``ship`` preset) under ``bench/_work``: their names are not drawn, and a second run ranks
the model's images of them among themselves (names the model never trained on). ``--heldout DIR``
does the same with a folder of your own.

Each run updates its entries of ``bench/results/emoji.json`` (an entry per style and mode, each with
the command that made it) and writes ``bench/results/emoji.md`` from every entry, with a sample sheet
per entry (``bench/results/emoji-<entry>.png``: each render above the model's image).
"""

from __future__ import annotations

import argparse
import os
import sys

from bench.common import ROOT, read_json, text_model_meta, write_results

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "emoji")
WORK = os.path.join(HERE, "_work")
DISTANCES = (("pixel", "pixels"), ("feature", "features"))


def recipe_heldout(size: int, n_test: int) -> str:
    """``train.recipe``'s held-out emoji (its data stage at seed 0), written once under ``bench/_work``."""
    from latentgen.data.captions import METADATA_FILE
    from latentgen.data.emoji import split_emoji_folder, write_emoji_folder

    every = os.path.join(WORK, f"emoji{size}")
    split = os.path.join(WORK, f"emoji{size}-split{n_test}")
    if not os.path.isfile(os.path.join(every, METADATA_FILE)):
        write_emoji_folder(every + ".tmp", size=size)
        os.replace(every + ".tmp", every)
    if not os.path.isfile(os.path.join(split, "heldout", METADATA_FILE)):
        split_emoji_folder(every, os.path.join(split, "train"), os.path.join(split, "heldout"), n_test, seed=0)
    return os.path.join(split, "heldout")


def run(pipe, card: dict, style: str, n: int, seed: int, source: str | None, heldout: str | None,
        exclude: str | None) -> tuple[dict, object]:
    """One ``evaluate_emoji`` at the card's settings; ``(report, sheet)``."""
    from latentgen.eval.emoji import evaluate_emoji

    return evaluate_emoji(pipe, style=style, n=n, seed=seed, where=source, heldout=heldout, exclude=exclude,
                          steps=card.get("num_inference_steps"), guidance=card.get("guidance_scale"),
                          sampler=card.get("sampler"), progress=True)


def tidy(settings: dict) -> dict:
    """``settings`` with its paths as the repository (relative) or the home folder (``~``) name them."""
    out = dict(settings)
    for k in ("heldout", "exclude", "renders"):
        if out.get(k):
            out[k] = out[k].replace(ROOT + os.sep, "").replace(os.path.expanduser("~") + os.sep, "~" + os.sep)
    return out


def row(key: str, r: dict) -> str:
    """A markdown table row: the entry's ranks by both distances and its Fréchet distance."""
    cells = [key, str(r["n"]), str(r["pool"])]
    for d, _ in DISTANCES:
        s = r[d]
        cells += [f"{100 * s['top1']:.0f}%", f"{100 * s['top5']:.0f}%", f"{100 * s['top20']:.0f}%",
                  f"{s['median_rank']:g}"]
    fd = r["frechet_distance"]
    cells.append("-" if fd is None else f"{fd:.1f}")
    return "| " + " | ".join(cells) + " |"


def markdown(entries: dict, prefix: str) -> str:
    """The report of every entry: the table, what each entry is, the sheets (``<prefix>-<entry>.png``) and
    the commands."""
    lines = ["# Emoji fidelity", "",
             ("Rank of the prompted emoji among every render of the style (a held-out entry: among the held-out "
             "images), by two distances the model does not train: pixels (L2 at 32 x 32 RGB) and "
             "EfficientNet-Lite0 features (cosine). top-k: the share of names whose emoji ranks k-th or better. "
             "Fréchet distance: EfficientNet-Lite0 features of the images against the renders of their names "
             "(few images bias it upward: compare entries of equal n)."), "",
             ("| entry | names | ranked among | pixels top-1 | top-5 | top-20 | median rank | features top-1 | top-5 "
             "| top-20 | median rank | Fréchet distance |"),
             "|---|" + "---:|" * 11]
    lines += [row(key, e["report"]) for key, e in sorted(entries.items())]
    lines.append("")
    for key, e in sorted(entries.items()):
        s, meta = e["report"]["settings"], e["meta"]
        right = [x["name"] for x in e["report"]["names"] if x["pixel_rank"] == 1 and x["feature_rank"] == 1]
        lines += [f"## {key}", "",
                  f"`{meta['model']}` at {s['sampler']}, {s['steps']} steps, guidance {s['guidance']}; seed "
                  f"{s['seed']}; ranked among {s['renders']}"
                  + (f"; {s['excluded_names']} names of `{s['exclude']}` not drawn" if s.get("exclude") else "")
                  + f". First by both distances: {', '.join(right) or 'none'}.", "",
                  f"![{key}]({prefix}-{key}.png)", "",
                  (f"Each render above the model's image. Command: `{meta['command']}` ("
                  f"{meta['machine']})."), ""]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.path.join(ROOT, "latentgen", "weights", "default"),
                   help="model folder (default: the bundled model)")
    p.add_argument("--style", choices=("openmoji", "noto", "twemoji"), default="openmoji")
    p.add_argument("--source", default=None, help="the noto or twemoji source (see `latentgen data emoji`)")
    p.add_argument("--n", type=int, default=100, help="names drawn (each run: the style's and the held-out)")
    p.add_argument("--seed", type=int, default=0)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--recipe-heldout", type=int, default=None, metavar="N",
                       help="train.recipe's N held-out emoji (its emoji_holdout), made again under bench/_work")
    group.add_argument("--heldout", default=None, metavar="DIR", help="an image folder of emoji never trained on")
    p.add_argument("--results", default=RESULTS, help="prefix of the .json, .md and sheets written")
    args = p.parse_args(argv)
    if not 1 <= args.n <= 10_000:
        p.error(f"--n {args.n}: must be from 1 to 10000")
    if args.recipe_heldout is not None and args.recipe_heldout < 1:
        p.error(f"--recipe-heldout {args.recipe_heldout}: must be at least 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    from latentgen import LatentGenPipeline
    from latentgen.data.emoji import open_source
    from latentgen.pipeline import read_model_card_defaults

    open_source(args.style, args.source)  # a missing source fails before the model loads
    meta = text_model_meta("bench.emoji", args.model, argv, ROOT)
    pipe, card = LatentGenPipeline.from_pretrained(args.model), read_model_card_defaults(args.model)
    heldout = args.heldout
    if args.recipe_heldout:
        heldout = recipe_heldout(pipe.default_size()[1], args.recipe_heldout)
    runs = {args.style: (args.style, None, heldout)}  # entry -> (style, held-out folder, folder not drawn)
    if heldout and args.style == "openmoji":
        runs["openmoji-heldout"] = ("openmoji", heldout, None)
    stored = read_json(args.results + ".json", {"entries": {}})
    os.makedirs(os.path.dirname(os.path.abspath(args.results)), exist_ok=True)
    for key, (style, held, exclude) in runs.items():
        report, sheet = run(pipe, card, style, args.n, args.seed, args.source, held, exclude)
        report["settings"] = tidy(report["settings"])
        stored["entries"][key] = {"report": report, "meta": meta}
        sheet.save(f"{args.results}-{key}.png")
    write_results(args.results, stored, markdown(stored["entries"], os.path.basename(args.results)))
    return stored


if __name__ == "__main__":
    main(sys.argv[1:])
