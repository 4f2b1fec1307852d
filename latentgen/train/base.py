"""The base model a fine-tune starts from: loaded with clear errors, its text encoder swappable."""

from __future__ import annotations

import json
import os

from latentgen.lora import LORA_FILE, LORA_INFO
from latentgen.train.common import load_text_encoder
from latentgen.train.config import TrainerError


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def load_base(model_dir: str):
    """The base pipeline of ``model_dir``; a LoRA folder or a folder that is not a latentgen or SD model is a
    :class:`TrainerError` naming the fix."""
    from latentgen.pipeline import LatentGenPipeline

    if os.path.isfile(os.path.join(model_dir, LORA_FILE)) and \
            not os.path.isfile(os.path.join(model_dir, "model_index.json")):
        base = _read_json(os.path.join(model_dir, LORA_INFO)).get("base", "its base model")
        raise TrainerError(
            f"--model {model_dir} holds LoRA weights (a fine-tune), not a full model: give the model it was "
            f"fine-tuned from ({base}), or a model folder that has the LoRA merged "
            "(LatentGenPipeline.from_pretrained(base), load_lora_weights(dir), fuse_lora(), "
            "save_pretrained(new))")
    try:
        return LatentGenPipeline.from_pretrained(model_dir)
    except (OSError, ValueError) as e:
        raise TrainerError(
            f"--model {model_dir} is not a latentgen or Stable Diffusion model folder "
            f"(model_index.json with unet/, vae/, text_encoder/, tokenizer/, scheduler/): {e}") from e


def swap_text_encoder(pipe, te_dir: str) -> None:
    """Put the text encoder and tokenizer of ``te_dir`` (a CLIP run or a model folder) in ``pipe``."""
    tok, te = load_text_encoder(te_dir)
    te = te.to(pipe.text_encoder.dtype)
    want = pipe.unet.config.cross_attention_dim
    if te.config.hidden_size != want:
        raise TrainerError(f"--text-encoder {te_dir} gives {te.config.hidden_size}-wide states but the UNet "
                           f"attends to {want}: continue the base model's own CLIP "
                           "(latentgen train clip --model BASE)")
    pipe.register_modules(text_encoder=te.eval(), tokenizer=tok)
