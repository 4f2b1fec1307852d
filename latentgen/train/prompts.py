"""Write a model folder's ``prompts.txt``: a sample of the captions of the image folders it was trained on.

    latentgen train prompts --model runs/X/finetune --data runs/X/data/shapes runs/X/data/emoji

The trainers that export a model write it themselves (:func:`latentgen.export.write_known_prompts`); this
gives one to a model made before they did, or trained elsewhere. A fine-tune's prior preservation draws
the base model's images for these prompts (:mod:`latentgen.train.prior`).
"""

from __future__ import annotations

import argparse
import os

from latentgen.export import KNOWN_PROMPTS, KNOWN_PROMPTS_FILE, write_known_prompts


def folder_captions(folders: list[str]) -> list[str]:
    """Every caption of the image folders (their ``metadata.jsonl`` or caption files)."""
    from latentgen.data.folder import require_usable, scan_folder

    return [it.caption for folder in folders for it in require_usable(scan_folder(folder), folder).items]


def main(argv=None) -> str:
    p = argparse.ArgumentParser(prog="latentgen train prompts", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the model folder to write prompts.txt into")
    p.add_argument("--data", nargs="+", required=True, help="the image folders the model was trained on")
    p.add_argument("--n", type=int, default=KNOWN_PROMPTS, help="how many distinct captions to keep")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not os.path.isfile(os.path.join(args.model, "model_index.json")):
        p.error(f"--model {args.model}: not a model folder (no model_index.json)")
    if args.n < 1:
        p.error(f"--n must be at least 1, got {args.n}")
    try:
        captions = folder_captions(args.data)
    except (OSError, ValueError) as e:
        p.error(str(e))
    write_known_prompts(args.model, captions, seed=args.seed, n=args.n)
    path = os.path.join(args.model, KNOWN_PROMPTS_FILE)
    print(f"wrote {path}: {min(args.n, len(set(captions)))} of {len(captions)} captions")
    return path


if __name__ == "__main__":
    main()
