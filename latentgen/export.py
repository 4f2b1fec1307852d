"""Writing a model folder: the one export every trainer uses.

A model folder is the diffusers layout (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``), weights as safetensors, each part's ``latentgen_config.json`` (the
preset that made it) where one is known, ``clip/`` (the scorer) when the source has one, and a card
(:mod:`latentgen.modelcard`), and ``prompts.txt``: a sample of the captions the model was trained on, what a
fine-tune's prior preservation holds it to (:mod:`latentgen.train.prior`). A run that trains one part (the VAE, the CLIP) writes that part's folders
in the same layout, with the same card (:func:`export_vae`, :func:`export_clip`). :func:`copy_model`
copies a model folder's parts alone (no checkpoints, logs or caches of a run folder).
"""

from __future__ import annotations

import os
import shutil

from latentgen.modelcard import write_card
from latentgen.models.presets import copy_config, save_config

PARTS = ("unet", "vae", "text_encoder")
KNOWN_PROMPTS_FILE = "prompts.txt"  # a sample of the captions the model was trained on, one per line
KNOWN_PROMPTS = 1000  # how many are kept there
FOLDER_PARTS = ("model_index.json", *PARTS, "tokenizer", "scheduler", KNOWN_PROMPTS_FILE)


def part_dir(folder: str, part: str) -> str:
    """``folder/part`` when it exists (a model folder), else ``folder`` (a part's own run folder)."""
    sub = os.path.join(folder, part)
    return sub if os.path.isdir(sub) else folder


def write_known_prompts(folder: str, captions, seed: int = 0, n: int = KNOWN_PROMPTS) -> None:
    """Write ``n`` of a model's training ``captions`` (distinct, a seeded sample) as ``folder/prompts.txt``."""
    import random

    distinct = sorted({" ".join(c.split()) for c in captions} - {""})
    chosen = random.Random(f"known-prompts:{seed}").sample(distinct, min(n, len(distinct)))
    with open(os.path.join(folder, KNOWN_PROMPTS_FILE), "w", encoding="utf-8") as f:
        f.write("".join(c + "\n" for c in chosen))


def export_model(out: str, pipe, *, configs: dict | None = None, sources: dict | None = None,
                 clip_from: str | None = None, card: dict | None = None, prompts=None,
                 prompts_from: str | None = None) -> str:
    """Save ``pipe`` to ``out`` as a model folder.

    ``configs``: part -> a preset config to save (e.g. the UNet's); ``sources``: part -> the folder whose
    ``latentgen_config.json`` the part keeps (a part trained elsewhere or copied unchanged);
    ``clip_from``: a folder whose ``clip/`` comes along; ``card``: :func:`latentgen.modelcard.write_card`'s
    keyword arguments (``front``, ``title``, ``body``, ``command``, ``record``); ``prompts``: the training
    captions, sampled into ``prompts.txt``, else ``prompts_from``: a model folder whose ``prompts.txt`` is
    kept (a fine-tune or a student knows what its base knew)."""
    pipe.save_pretrained(out, safe_serialization=True)
    if prompts is not None:
        write_known_prompts(out, prompts)
    elif prompts_from and os.path.isfile(os.path.join(prompts_from, KNOWN_PROMPTS_FILE)):
        shutil.copy2(os.path.join(prompts_from, KNOWN_PROMPTS_FILE), os.path.join(out, KNOWN_PROMPTS_FILE))
    for part, src in (sources or {}).items():
        copy_config(part_dir(src, part), os.path.join(out, part))
    for part, cfg in (configs or {}).items():
        save_config(cfg, os.path.join(out, part))
    if clip_from and os.path.isdir(os.path.join(clip_from, "clip")):
        shutil.copytree(os.path.join(clip_from, "clip"), os.path.join(out, "clip"), dirs_exist_ok=True)
    if card:
        write_card(out, **card)
    return out


def export_vae(out: str, vae, config, *, card: dict | None = None) -> str:
    """Save the codec ``vae`` to ``out/vae`` (safetensors and ``config``, its preset), the card in ``out``."""
    folder = os.path.join(out, "vae")
    vae.save_pretrained(folder, safe_serialization=True)
    save_config(config, folder)
    if card:
        write_card(out, **card)
    return folder


def export_clip(out: str, model, tokenizer, config, *, card: dict | None = None) -> str:
    """Save a CLIP to ``out``: ``text_encoder/`` and ``tokenizer/`` (the diffusers parts) and ``clip/`` (the
    scorer, with ``config``, its preset), and the card in ``out``."""
    from latentgen.models.clip import save_clip

    save_clip(model, tokenizer, out)
    save_config(config, os.path.join(out, "clip"))
    if card:
        write_card(out, **card)
    return out


def copy_model(src: str, dst: str, extra: tuple[str, ...] = ()) -> None:
    """Copy the model parts of the model folder ``src`` (:data:`FOLDER_PARTS` and ``extra``, e.g. ``clip``;
    no checkpoints, logs, caches or pickle weights) to a fresh ``dst``."""
    from latentgen.pipeline import check_model_folder

    check_model_folder(src)
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    for part in FOLDER_PARTS + tuple(extra):
        s = os.path.join(src, part)
        if os.path.isdir(s):
            shutil.copytree(s, os.path.join(dst, part), ignore=shutil.ignore_patterns("*.bin", "*.pt"))
        elif os.path.isfile(s):
            shutil.copy2(s, os.path.join(dst, part))
