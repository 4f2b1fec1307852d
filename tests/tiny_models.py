"""Tiny random pipeline components for tests: built here, never downloaded.

``make_tiny_components()`` gives a 16 px pipeline's parts (VAE factor 2, 8 x 8 x 4
latents, a 2-layer CLIP text encoder over a handmade CLIP-style BPE vocabulary);
``make_tiny_pipeline(tmp_path)`` saves them as a latentgen model folder.
"""

from __future__ import annotations

import os

import torch
from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from latentgen.diffusion import make_scheduler
from latentgen.models.unet import build_unet, get_unet_config

MAX_TOKENS = 16
WORDS = ("a", "red", "blue", "green", "circle", "square", "triangle", "big", "small", "and", "left", "of")


def make_tiny_tokenizer(max_tokens: int = MAX_TOKENS) -> CLIPTokenizer:
    """A CLIP BPE tokenizer: single characters (with and without ``</w>``) plus merges for ``WORDS``."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789,.!?'-":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    merges = []
    for word in WORDS:  # merge each word left to right into one token
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            parts = [parts[0] + parts[1]] + parts[2:]
            vocab.setdefault(parts[0], len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_tokens)
    assert len(tok) == len(vocab), f"tokenizer built {len(tok)} tokens from a {len(vocab)}-entry vocab"
    return tok


def make_tiny_components(seed: int = 0, time_cond_proj_dim: int | None = None) -> dict:
    """The five pipeline components, random and tiny (~0.2M parameters in all)."""
    torch.manual_seed(seed)
    tok = make_tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.7,
    ).eval()
    cfg = get_unet_config("tiny")
    if time_cond_proj_dim is not None:
        from dataclasses import replace

        cfg = replace(cfg, time_cond_proj_dim=time_cond_proj_dim)
    unet = build_unet(cfg).eval()
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tok, "unet": unet,
            "scheduler": make_scheduler("ddim")}


def make_tiny_pipeline(tmp_path, seed: int = 0, name: str = "tiny_model", **kw) -> str:
    """Save a tiny random latentgen model folder under ``tmp_path``; returns its path."""
    from latentgen.pipeline import LatentGenPipeline

    folder = os.path.join(os.fspath(tmp_path), name)
    LatentGenPipeline(**make_tiny_components(seed, **kw)).save_pretrained(folder)
    return folder


def write_lora_fine_tune(base: str, out) -> str:
    """A LoRA-only fine-tune folder of the model in ``base``, as ``latentgen train finetune`` writes it
    (``finetune.json`` naming the base), its adapters random so that they change the output (peft starts
    lora_B at zero); returns its path."""
    import json

    from latentgen.lora import LORA_INFO, add_lora, save_lora
    from latentgen.pipeline import LatentGenPipeline

    pipe = LatentGenPipeline.from_pretrained(base)
    add_lora(pipe.unet, 4, None, "to_q,to_k,to_v,to_out.0")
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    os.makedirs(out)
    save_lora(os.fspath(out), pipe.unet)
    with open(os.path.join(out, LORA_INFO), "w") as f:
        json.dump({"base": base}, f)
    return os.fspath(out)
