"""`latentgen generate`: prompt (and optionally an init image) to PNGs that say how they were made.

Every argument that can be checked without the model is checked first (``check_args``);
then the model loads, the prompt's unknown words are named on stderr, and the images are
written with their settings in A1111's ``parameters`` form (:mod:`latentgen.pngmeta`).
"""

from __future__ import annotations

import argparse
import os
import sys

from latentgen.examples import EXAMPLE_PROMPTS
from latentgen.limits import MAX_PROMPT_CHARS, Bound, check_bounds, check_prompt

ONE_BATCH = "all are made in one batch, held in memory together"
BOUNDS = {  # `latentgen eval` shares the steps, guidance and seed bounds
    "--steps": Bound(1, 1000),
    "--n": Bound(1, 64, ONE_BATCH),
    "--height": Bound(8, 2048, "a multiple of the model's VAE factor"),
    "--width": Bound(8, 2048, "a multiple of the model's VAE factor"),
    "--guidance": Bound(0, 30),
    "--strength": Bound(0, 1),
    "--seed": Bound(0, 2**32 - 1),
}
MAX_INIT_PIXELS = 40_000_000  # an --init-image over 40 MP is refused from its header (as `data check` does)
EXAMPLES_HINT = "the example prompts in `latentgen generate --help` and in the README"

HELP = """Write PNGs whose 'parameters' text chunk holds the prompt and every setting.

--out: a path ending in .png is the file for --n 1, and the prefix for more
(out.png -> out-0.png, out-1.png, ...); any other path is a folder (created if
needed) that gets latentgen-<seed>.png per image. Image i uses seed --seed + i,
so any image can be made again alone with its recorded seed and --n 1.
Existing PNG files at those paths are overwritten. Every number (see the ranges
below), the prompts, --out and --init-image are checked before the model loads.
Defaults for --steps, --guidance and --sampler come from the model folder's
README.md front matter (num_inference_steps, guidance_scale, sampler), else 25,
5.0 and the model's saved scheduler. The settings are written in the form of
AUTOMATIC1111's PNG Info; the model is named by its folder's name.

A prompt word the model never learned (its tokenizer has no whole-word token
for it) is named in a warning on stderr: the image will most likely not show it.
Example prompts the bundled model draws (its README.md lists every word it knows):
""" + "".join(f"\n  {p}" for p in EXAMPLE_PROMPTS)


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="make images from a prompt (and optionally an init image)",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
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


def generate_paths(out: str, seeds: list[int]) -> list[str]:
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


def check_args(args) -> list[int]:
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
    check_out(args.out, generate_paths(args.out, seeds))
    return seeds


def settings(args, pipe) -> dict:
    """The steps, guidance and sampler of the flags, else of the model card (else the pipeline's defaults)."""
    from latentgen.loading import sampling_defaults

    card = pipe.card_defaults
    call = sampling_defaults(card, pipe.unet.config.time_cond_proj_dim is not None)
    return {"steps": args.steps if args.steps is not None else call["num_inference_steps"],
            "guidance": args.guidance if args.guidance is not None else call["guidance_scale"],
            "sampler": args.sampler or card.get("sampler")}


def run(args) -> int:
    seeds = check_args(args)
    init = None if args.init_image is None else open_init_image(args.init_image)

    import torch

    from latentgen.diffusion import sampler_name
    from latentgen.loading import resolve_model_dir
    from latentgen.pipeline import LatentGenPipeline
    from latentgen.pngmeta import save_png_with_params
    from latentgen.prompts import unknown_words, unknown_words_message

    model = resolve_model_dir(args.model, trust_pickle=args.trust_pickle)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA GPU is available here; use --device cpu")

    pipe = LatentGenPipeline.from_pretrained(model, trust_pickle=args.trust_pickle).to(device)
    s = settings(args, pipe)
    if unknown := unknown_words(pipe.tokenizer, args.prompt):
        print(f"warning: {unknown_words_message(unknown, EXAMPLES_HINT)}", file=sys.stderr)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    images = pipe(args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=s["steps"],
                  guidance_scale=s["guidance"], generator=generators, height=args.height, width=args.width,
                  num_images_per_prompt=args.n, image=init, strength=args.strength, sampler=s["sampler"]).images
    for img, seed, path in zip(images, seeds, generate_paths(args.out, seeds)):
        params = {"prompt": args.prompt, "negative_prompt": args.negative_prompt or "", "steps": s["steps"],
                  "sampler": s["sampler"] or sampler_name(pipe.scheduler), "guidance": s["guidance"], "seed": seed,
                  "width": img.width, "height": img.height, "model": os.path.basename(os.path.normpath(model))}
        if init is not None:
            params.update(init_image=os.path.basename(args.init_image), strength=args.strength)
        print(save_png_with_params(img, path, params))
    return 0
