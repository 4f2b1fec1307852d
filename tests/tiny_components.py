"""Tiny trained-part folders for trainer tests: a shapes folder, a tiny VAE export, a tiny CLIP export."""

import os

from latentgen.data.shapes import write_shapes_folder


def make_tiny_parts(root, n_images: int = 16, size: int = 16):
    """Return (data_dir, vae_dir, clip_dir), random-weight tiny models in the layouts the trainers export."""
    from latentgen.models.clip import build_clip, get_clip_preset, save_clip, train_tokenizer
    from latentgen.models.presets import save_config
    from latentgen.models.vae import build_vae, get_vae_config

    root = str(root)
    data = os.path.join(root, "shapes")
    write_shapes_folder(data, n=n_images, size=size, seed=0)
    vae_dir = os.path.join(root, "vae_run")
    build_vae("tiny").save_pretrained(os.path.join(vae_dir, "vae"), safe_serialization=True)
    save_config(get_vae_config("tiny"), os.path.join(vae_dir, "vae"))  # as train.vae writes it
    clip_dir = os.path.join(root, "clip_run")
    import json

    with open(os.path.join(data, "metadata.jsonl")) as f:
        captions = [json.loads(line)["text"] for line in f]
    preset = get_clip_preset("tiny")
    tok = train_tokenizer(captions, preset.vocab_size, max_length=preset.max_length)
    save_clip(build_clip(preset, tok), tok, clip_dir)
    return data, vae_dir, clip_dir
