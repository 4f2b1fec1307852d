"""Adapting a trained model's codec to new images, before its UNet is fine-tuned on them.

A VAE trained on a few colours and shapes maps what it never saw onto what it knows: the
bundled one decodes teal (0, 150, 150) as its blue, grey as purple. A fine-tune of the UNet
alone then learns latents that decode to the old colour, however long it trains. The
encoder still tells the new images apart (teal's latent is nearer blue's than green's,
but not equal), so tuning the *decoder* alone fixes the round trip while every latent the
UNet already produces keeps its meaning:

    L = |D'(E(x_new)) - x_new|_1 + |D'(z_prior) - D(z_prior)|_1

the second term distilling the old decoder on latents of the base model's own images, so
they decode as before (Hinton et al. 2015 for the distillation; the prior images as in
Ruiz et al. 2023, Sec. 3.3).

A decoder alone must then split one neighbourhood of latent space: the base model's own
samples for "blue" scatter over the place teal's latents sit, and a decoder that draws teal
there draws some of the model's blue objects teal. With ``tune_encoder`` the encoder trains
too, held to its old latents on the prior images and pushed to move the new images' latents
by at least a margin, so the new colour gets a place of its own:

    L = |D'(E'(x_new)) - x_new|_1 + w |D'(z_prior) - D(z_prior)|_1 + w |E'(x_prior) - E(x_prior)|_1
        + max(0, m - |E'(x_new) - E(x_new)| / |E(x_new)|)
"""

from __future__ import annotations

import torch
from torch import nn

DECODER_PSNR_FLOOR = 30.0  # dB: a folder whose round trip is worse than this gets the decoder tuned


@torch.no_grad()
def encode_mode(vae, pixels: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """The posterior means of ``pixels`` (N, 3, H, W) in [-1, 1]; unscaled.  # (N, C, h, w)"""
    return torch.cat([vae.encode(pixels[i:i + batch_size]).latent_dist.mode()
                      for i in range(0, len(pixels), batch_size)])


@torch.no_grad()
def decode(vae, latents: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Decoded pixels of unscaled ``latents``, clamped to [-1, 1].  # (N, 3, H, W)"""
    return torch.cat([vae.decode(latents[i:i + batch_size]).sample.clamp(-1, 1)
                      for i in range(0, len(latents), batch_size)])


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean PSNR in dB over images in [-1, 1] (peak-to-peak 2)."""
    mse = ((x - y) ** 2).flatten(1).mean(1).clamp_min(1e-10)  # (N,)
    return float((10 * torch.log10(4.0 / mse)).mean())


def roundtrip_psnr(vae, pixels: torch.Tensor) -> float:
    """How well ``vae`` reconstructs ``pixels``: encode (posterior mean), decode, PSNR."""
    return psnr(decode(vae, encode_mode(vae, pixels)), pixels)


PRIOR_WEIGHT = 4.0  # weight of the prior images' terms (decoding and, with the encoder, encoding as before)
SEPARATION_MARGIN = 0.25  # the new images' latents move at least this share of their norm


class DecoderData(torch.utils.data.Dataset):
    """The new images and the prior images, each with its old latent and target pixels: a new image's own,
    a prior image's as the old decoder makes it from that latent. Item ``i`` is ``{"pixels", "latent",
    "target", "prior"}``."""

    def __init__(self, vae, new_pixels: torch.Tensor, prior_pixels: torch.Tensor):
        z_new = encode_mode(vae, new_pixels)  # (N, C, h, w)
        z_prior = encode_mode(vae, prior_pixels)  # (P, C, h, w)
        self.pixels = torch.cat([new_pixels, prior_pixels])
        self.latents = torch.cat([z_new, z_prior])
        self.targets = torch.cat([new_pixels, decode(vae, z_prior)])
        self.prior = torch.arange(len(self.latents)) >= len(z_new)

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, i: int) -> dict:
        return {"pixels": self.pixels[i], "latent": self.latents[i], "target": self.targets[i],
                "prior": self.prior[i]}


class Decoder(nn.Module):
    """The trainable part of an ``AutoencoderKL``: ``post_quant_conv`` and ``decoder``, and with
    ``tune_encoder`` also ``encoder`` and ``quant_conv``."""

    def __init__(self, vae, tune_encoder: bool = False):
        super().__init__()
        self.post_quant_conv, self.decoder = vae.post_quant_conv, vae.decoder
        self.tune_encoder = tune_encoder
        if tune_encoder:
            self.quant_conv, self.encoder = vae.quant_conv, vae.encoder

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z) if self.post_quant_conv is not None else z)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mean of ``x``, unscaled.  # (B, C, h, w)"""
        h = self.encoder(x)
        h = self.quant_conv(h) if self.quant_conv is not None else h
        return h.chunk(2, dim=1)[0]


def decoder_step(model: Decoder, batch, ctx) -> dict:
    """The module docstring's L: new images' L1 reconstruction, the old decoder distilled on prior latents,
    and with the encoder tuned its old latents kept on prior images and the new images' moved apart."""
    prior = batch["prior"]
    new = ~prior
    z = batch["latent"]
    if model.tune_encoder:
        z_enc = model.encode(batch["pixels"])  # (B, C, h, w)
        z = torch.where(new[:, None, None, None], z_enc, z)
    err = (model(z) - batch["target"]).abs().flatten(1).mean(1)  # (B,)
    loss = err[new].sum() + PRIOR_WEIGHT * err[prior].sum()
    logs = {}
    if model.tune_encoder:
        old = batch["latent"]
        drift = (z_enc - old).abs().flatten(1).mean(1)  # (B,)
        moved = (z_enc - old).flatten(1).norm(dim=1) / old.flatten(1).norm(dim=1).clamp_min(1e-6)  # (B,)
        loss = loss + PRIOR_WEIGHT * drift[prior].sum() + torch.relu(SEPARATION_MARGIN - moved[new]).sum()
        if new.any():
            logs["moved"] = moved[new].mean().detach()
        if prior.any():
            logs["prior_drift"] = drift[prior].mean().detach()
    logs["loss"] = loss / len(err)
    if new.any():
        logs["new_l1"] = err[new].mean().detach()
    if prior.any():
        logs["prior_l1"] = err[prior].mean().detach()
    return logs
