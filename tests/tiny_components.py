"""Tiny trained-part folders for trainer tests: a shapes folder, a tiny VAE export, a tiny CLIP export."""

import json
import os

from latentgen.data.shapes import write_shapes_folder


def make_tiny_parts(root, n_images: int = 16, size: int = 16):
    """Return (data_dir, vae_dir, clip_dir), random-weight tiny models written by the exports of
    ``latentgen.train.vae`` and ``latentgen.train.clip`` (:mod:`latentgen.export`)."""
    from latentgen.export import export_clip, export_vae
    from latentgen.models.clip import build_clip, get_clip_preset, preset_from_model, train_tokenizer
    from latentgen.models.vae import build_vae, get_vae_config

    root = str(root)
    data = os.path.join(root, "shapes")
    write_shapes_folder(data, n=n_images, size=size, seed=0)
    vae_dir = os.path.join(root, "vae_run")
    export_vae(vae_dir, build_vae("tiny"), get_vae_config("tiny"))
    clip_dir = os.path.join(root, "clip_run")
    with open(os.path.join(data, "metadata.jsonl")) as f:
        captions = [json.loads(line)["text"] for line in f]
    preset = get_clip_preset("tiny")
    tok = train_tokenizer(captions, preset.vocab_size, max_length=preset.max_length)
    clip = build_clip(preset, tok)
    export_clip(clip_dir, clip, tok, preset_from_model(clip))  # the numbers built, as the trainer saves them
    return data, vae_dir, clip_dir
