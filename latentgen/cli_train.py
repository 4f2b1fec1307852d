"""`latentgen train <name> [flags]` and `latentgen app [flags]`.

``latentgen train unet --out runs/unet ...`` runs ``latentgen.train.unet.main([...])``: every flag
after the trainer's name is the trainer's own (``latentgen train unet --help`` lists them). The
trainer is imported only when it runs, so ``latentgen --help`` stays fast. ``latentgen app``
takes the app's flags (``latentgen.ui.app``) and starts the browser app.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from latentgen.train import TRAINERS

SUMMARIES = {  # one line per trainer for `latentgen train --help` (read without importing the trainers)
    "vae": "the VAE latent codec (AutoencoderKL) on image folders",
    "clip": "the CLIP text encoder (and image tower) on image-caption pairs",
    "unet": "the conditional UNet in a frozen VAE's latent space",
    "finetune": "LoRA or full fine-tuning of a model on your own images",
    "distill": "guided, then progressive distillation to a few-step student",
    "recipe": "every stage, from data to a model folder, in one run",
    "bundle": "the bundled model folders from a recipe run",
    "prompts": "a model folder's prompts.txt (what fine-tunes preserve) from its training folders",
}


def add_train(sub) -> None:
    listing = "\n".join(f"  {name:<9} {SUMMARIES.get(name, '')}" for name in TRAINERS)
    p = sub.add_parser("train", help="train a model (vae, clip, unet, finetune, distill, recipe, bundle, prompts)",
                       description=f"Run a trainer; its flags follow its name.\n\ntrainers:\n{listing}",
                       epilog="`latentgen train NAME --help` lists that trainer's flags.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trainer", choices=TRAINERS, metavar="NAME", help="one of: " + ", ".join(TRAINERS))
    p.add_argument("trainer_args", nargs=argparse.REMAINDER, metavar="...", help="the trainer's flags")


def run_train(args) -> int:
    module = importlib.import_module(f"latentgen.train.{args.trainer}")
    argv0 = sys.argv[0]
    sys.argv[0] = f"latentgen train {args.trainer}"  # the trainer's usage line names the command
    try:
        module.main(list(args.trainer_args))
    finally:
        sys.argv[0] = argv0
    return 0


def add_app(sub) -> None:
    from latentgen.ui.app import DESCRIPTION, add_arguments

    p = sub.add_parser("app", help="start the browser app (Generate, Edit, Fine-tune, Distill, HTTP API)",
                       description=DESCRIPTION, allow_abbrev=False,
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p)


def run_app(args) -> int:
    from latentgen.ui.app import check_args, serve_args

    serve_args(check_args(args))
    return 0
