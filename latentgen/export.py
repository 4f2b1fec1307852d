"""Writing a model folder: the one export every trainer uses.

A model folder is the diffusers layout (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``, ``scheduler/``), weights as safetensors, each part's ``latentgen_config.json`` (the
preset that made it) where one is known, ``clip/`` (the scorer) when the source has one, and a card
(:mod:`latentgen.modelcard`). A run that trains one part (the VAE, the CLIP) writes that part's folders
in the same layout, with the same card (:func:`export_vae`, :func:`export_clip`). :func:`copy_model`
copies a model folder's parts alone (no checkpoints, logs or caches of a run folder).
"""

from __future__ import annotations

import os
import shutil

from latentgen.modelcard import write_card
from latentgen.models.presets import copy_config, save_config

PARTS = ("unet", "vae", "text_encoder")
FOLDER_PARTS = ("model_index.json", *PARTS, "tokenizer", "scheduler")


def part_dir(folder: str, part: str) -> str:
    """``folder/part`` when it exists (a model folder), else ``folder`` (a part's own run folder)."""
    sub = os.path.join(folder, part)
    return sub if os.path.isdir(sub) else folder


def export_model(out: str, pipe, *, configs: dict | None = None, sources: dict | None = None,
                 clip_from: str | None = None, card: dict | None = None) -> str:
    """Save ``pipe`` to ``out`` as a model folder.

    ``configs``: part -> a preset config to save (e.g. the UNet's); ``sources``: part -> the folder whose
    ``latentgen_config.json`` the part keeps (a part trained elsewhere or copied unchanged);
    ``clip_from``: a folder whose ``clip/`` comes along; ``card``: :func:`latentgen.modelcard.write_card`'s
    keyword arguments (``front``, ``title``, ``body``, ``command``, ``record``)."""
    pipe.save_pretrained(out, safe_serialization=True)
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
