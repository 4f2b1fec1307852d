"""The base model a fine-tune starts from: loaded with clear errors, its text encoder swappable."""

from __future__ import annotations

import json
import os

from latentgen.lora import LORA_FILE, LORA_INFO
from latentgen.train.common import load_text_encoder
from latentgen.train.config import TrainerError


def read_json(path: str) -> dict:
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
        base = read_json(os.path.join(model_dir, LORA_INFO)).get("base", "its base model")
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


def lora_base(folder: str) -> str | None:
    """The model a LoRA fine-tune in ``folder`` applies to: ``folder`` itself when it also holds a model (a
    fine-tune that wrote its text encoder or tuned VAE there), else the ``base`` its ``finetune.json``
    records; None when ``folder`` holds no LoRA weights. A base that is gone is a :class:`TrainerError`."""
    if not os.path.isfile(os.path.join(folder, LORA_FILE)):
        return None
    if os.path.isfile(os.path.join(folder, "model_index.json")):
        return folder
    base = read_json(os.path.join(folder, LORA_INFO)).get("base")
    if not base or not os.path.isfile(os.path.join(base, "model_index.json")):
        raise TrainerError(f"{folder} holds LoRA weights whose base model ({base or 'not recorded'}) is not a "
                           "model folder here: merge them into their base first (LatentGenPipeline."
                           "from_pretrained(base), load_lora_weights(dir), fuse_lora(), save_pretrained(new))")
    return base


def load_merged(model_dir: str):
    """``(pipeline, parts folder)``: the model of ``model_dir`` with its LoRA fine-tune (if any) merged into the
    weights, and the folder whose ``vae/``, ``text_encoder/`` and ``clip/`` the model uses."""
    from latentgen.pipeline import LatentGenPipeline, check_model_folder

    base = lora_base(model_dir)
    try:
        pipe = LatentGenPipeline.from_pretrained(check_model_folder(base or model_dir))
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:
        raise TrainerError(f"--model: {e}") from None
    if base is not None:
        pipe.load_lora_weights(model_dir)
        pipe.fuse_lora()  # W + B A, in place
        pipe.unload_lora_weights()  # the adapters go, the merged weights stay
    return pipe, base or model_dir
