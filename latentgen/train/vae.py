"""Train the VAE latent codec (``diffusers.AutoencoderKL``) on image folders.

    latentgen train vae --data shapes/ --out runs/vae --preset small64 --max-steps 3000
    latentgen train vae --data emoji/ --model latentgen/weights/default --decoder-only --out runs/vae-dec

``model`` continues an exported VAE (its architecture; ``preset`` is ignored). ``decoder_only``
trains just the decoder (and ``post_quant_conv``), as Stable Diffusion's ft-MSE decoder was: the
encoder, the latents and the ``scaling_factor`` stay the base's bit for bit, so a UNet trained on
them stays valid and only the decoded images change.

Loss (latent diffusion's autoencoder, Rombach et al. 2022, App. G):
``L1 (or L2) reconstruction + kl_weight * KL``, plus, from ``disc_start`` on, a
PatchGAN hinge loss weighted by ``disc_weight`` times the adaptive weight of Esser et al. 2021.
Validation logs the PSNR of held-out images and a grid of originals over reconstructions.
At the end the latent scale is measured (``scaling_factor = 1 / std``) and the codec is
exported to ``<out>/vae/`` (diffusers layout plus ``latentgen_config.json``) with a card in ``<out>``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Subset

from latentgen import autoencoding as ae
from latentgen.eval.psnr import psnr, reconstruction_psnr
from latentgen.models.vae import PRESETS
from latentgen.train.common import image_folders
from latentgen.train.config import RunConfig, TrainerError, command_for, main_for, opt


@dataclass(frozen=True)
class VAETrainConfig(RunConfig):
    TRAINER = "vae"
    REQUIRED = ("data",)
    MAY_CHANGE = ("scale_samples",)

    max_steps: int = 2000
    lr: float = 4e-4
    warmup_steps: int = 100
    validate_every: int = 500
    preset: str = opt("small64", "VAE architecture (ignored with --model)", choices=tuple(PRESETS))
    recon: str = opt("l1", "reconstruction loss", choices=("l1", "l2"))
    kl_weight: float = opt(1e-6, "weight of the KL term (latent diffusion: 1e-6)")
    disc_start: int | None = opt(None, "switch the patch discriminator on at this step (default: no "
                                 "discriminator)", metavar="STEP")
    disc_weight: float = opt(0.5, "adversarial weight (times the adaptive weight)")
    val_data: tuple[str, ...] = opt((), "held-out image folder for validation (default: hold out --val-count "
                                    "training images)", metavar="DIR")
    val_count: int = opt(64, "images held out of --data when --val-data is not given")
    decoder_only: bool = opt(False, "with --model: train only the decoder; the encoder, latents and scaling "
                             "factor are kept")
    hflip: bool = opt(False, "also train on every image mirrored (doubles the set; a codec has no captions "
                      "to contradict)")
    scale_samples: int = opt(512, "training images used to measure the latent std")

    def __post_init__(self):
        super().__post_init__()
        if self.decoder_only and not self.model:
            raise ValueError("--decoder-only fine-tunes the decoder of a trained VAE: "
                             "name it with --model DIR")
        if self.disc_start is not None and self.disc_start < 0:
            raise ValueError(f"--disc-start must be a step >= 0, got {self.disc_start}")
        if self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r} is unknown: choose one of {', '.join(PRESETS)}")
        if self.recon not in ("l1", "l2"):
            raise ValueError(f"--recon must be l1 or l2, got {self.recon!r}")


Config = VAETrainConfig


class Codec(nn.Module):
    """The one trainable module: the VAE and (optionally) its discriminator.

    ``forward`` runs every network the step needs, so that under DDP all of it goes
    through the wrapper's forward. The generator's adversarial logits are computed with
    the discriminator's parameters frozen (``requires_grad_(False)`` for that one call):
    their gradient reaches only the VAE. The discriminator sees detached images: its
    hinge loss reaches only the discriminator. One backward of their sum therefore gives
    each network exactly its own gradient, and one optimizer steps both.
    """

    def __init__(self, vae, disc: nn.Module | None = None):
        super().__init__()
        self.vae, self.disc = vae, disc

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None, adversarial: bool = False):
        posterior = self.vae.encode(x).latent_dist
        x_rec = self.vae.decode(posterior.sample(generator=generator)).sample  # (B, 3, H, W)
        out = {"x_rec": x_rec, "mean": posterior.mean, "logvar": posterior.logvar}
        if adversarial:
            self.disc.requires_grad_(False)
            out["logits_fake_g"] = self.disc(x_rec)  # gradient flows into the VAE only
            self.disc.requires_grad_(True)
            out["logits_real"] = self.disc(x.detach())  # gradient flows into the discriminator only
            out["logits_fake_d"] = self.disc(x_rec.detach())
        return out


def make_step_fn(cfg: VAETrainConfig):
    def step_fn(model, batch, ctx) -> dict:
        x = batch["pixels"]  # (B, 3, H, W) in [-1, 1]
        adversarial = cfg.disc_start is not None and ctx.step >= cfg.disc_start
        out = model(x, generator=ctx.generator, adversarial=adversarial)
        rec = ae.reconstruction_loss(x, out["x_rec"], cfg.recon)
        kl = ae.kl_per_pixel(out["mean"], out["logvar"], num_pixels=x[0].numel())
        loss = rec + cfg.kl_weight * kl
        logs = {"rec": rec.detach(), "kl": kl.detach(),
                "psnr": psnr(out["x_rec"].detach().clamp(-1, 1).float(), x.float()).mean()}
        if adversarial:
            g_loss = ae.hinge_g_loss(out["logits_fake_g"])
            last = ctx.accelerator.unwrap_model(model).vae.decoder.conv_out.weight
            weight = cfg.disc_weight * ae.adaptive_adversarial_weight(rec, g_loss, last)
            d_loss = ae.hinge_d_loss(out["logits_real"], out["logits_fake_d"])
            loss = loss + weight * g_loss + d_loss
            logs.update(g_loss=g_loss.detach(), d_loss=d_loss.detach(), d_weight=weight)
        return {"loss": loss, **logs}

    return step_fn


def image_grid(rows: list[torch.Tensor]) -> Image.Image:
    """A PIL grid with one row per ``(N, 3, H, W)`` tensor in [-1, 1]."""
    t = torch.stack([r.float().clamp(-1, 1).cpu() for r in rows])  # (R, N, 3, H, W)
    r, n, _, h, w = t.shape
    t = ((t + 1) * 127.5).round().to(torch.uint8).permute(0, 3, 1, 4, 2).reshape(r * h, n * w, 3)
    return Image.fromarray(np.ascontiguousarray(t.numpy()))


def make_validate_fn(val_set, tag: str, n_grid: int = 8):
    def validate_fn(trainer, model, step) -> dict:
        vae = model.vae
        value = reconstruction_psnr(vae, val_set)
        device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
        x = torch.stack([val_set[i]["pixels"] for i in range(min(n_grid, len(val_set)))]).to(device, dtype)
        x_rec = vae.decode(vae.encode(x).latent_dist.mode()).sample
        trainer.log_images("reconstructions", image_grid([x, x_rec]), step)
        return {tag: value}

    return validate_fn


def split_heldout(dataset, count: int, seed: int):
    """(train, held-out) subsets: ``count`` images (at most a tenth of the set) drawn by a seeded permutation.

    With ``hflip`` the held-out images are drawn from the unmirrored ones and their mirrored twins
    leave the training side too, so no held-out image is seen in either orientation.
    """
    n = len(dataset.items) if getattr(dataset, "hflip", False) else len(dataset)
    count = min(count, n // 10)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 12345)).tolist()
    held = sorted(perm[:count])
    out = set(held) | ({i + n for i in held} if len(dataset) > n else set())  # the mirrored twins
    return Subset(dataset, [i for i in range(len(dataset)) if i not in out]), Subset(dataset, held)


def load_base(cfg: VAETrainConfig):
    """``(base VAE, its preset)`` of ``cfg.model`` (``(None, the preset)`` without one)."""
    from latentgen.models.vae import get_vae_config, preset_from_vae, vae_folder

    if not cfg.model:
        return None, get_vae_config(cfg.preset)
    from diffusers import AutoencoderKL

    try:
        folder = vae_folder(cfg.model)
    except FileNotFoundError as e:
        raise TrainerError(f"--model {e}") from e
    base = AutoencoderKL.from_pretrained(folder)
    print(f"continuing from {folder} (its architecture; --preset is ignored)")
    return base, preset_from_vae(base)


def datasets(cfg: VAETrainConfig, size: int):
    """``(train set, validation set, tag)``: the tag is ``psnr``, or ``psnr_train`` when the set is too
    small to hold any image out and validation reports the training PSNR, named as such."""
    data = image_folders(cfg.data, size, hflip=cfg.hflip)
    if cfg.val_data:
        return data, image_folders(cfg.val_data, size, "--val-data"), "psnr"
    train_set, val_set = split_heldout(data, cfg.val_count, cfg.seed)
    if len(val_set) == 0:
        return train_set, Subset(data, range(min(8, len(data)))), "psnr_train"
    return train_set, val_set, "psnr"


def build_codec(cfg: VAETrainConfig, base, preset) -> Codec:
    """The VAE (the base, or a new one of ``preset``) with the parts that train, and the discriminator."""
    from latentgen.models.discriminator import PatchDiscriminator
    from latentgen.models.vae import build_vae

    torch.manual_seed(cfg.seed)
    vae = base if base is not None else build_vae(preset)
    if cfg.decoder_only:  # the Trainer optimises only what requires a gradient
        vae.encoder.requires_grad_(False)
        if vae.quant_conv is not None:
            vae.quant_conv.requires_grad_(False)
    disc = None
    if cfg.disc_start is not None:  # 3 layers (70 px patches) at 32 px and up, fewer for smaller images
        disc = PatchDiscriminator(n_layers=max(1, min(3, preset.sample_size.bit_length() - 3)))
    return Codec(vae, disc)


def run(cfg: VAETrainConfig) -> dict:
    """Train, measure the latent scale, export ``<out>/vae/``; returns a summary dict."""
    from latentgen.models.presets import config_to_dict
    from latentgen.training import Trainer

    base, preset = load_base(cfg)
    train_set, val_set, tag = datasets(cfg, preset.sample_size)
    codec = build_codec(cfg, base, preset)
    record = cfg.record(vae_config=config_to_dict(preset), examples=len(train_set))
    betas = (0.5, 0.9) if cfg.disc_start is not None else (0.9, 0.999)
    trainer = Trainer(cfg.loop(adam_betas=betas), codec, train_set, make_step_fn(cfg),
                      validate_fn=make_validate_fn(val_set, tag), run_config=record,
                      may_change=cfg.may_change(),
                      find_unused_parameters=codec.disc is not None)  # the discriminator idles at first
    t0 = time.time()
    model = trainer.fit()
    train_time = time.time() - t0
    if not trainer.finished:  # stopped (SIGTERM): a checkpoint, no export; the recipe must not call it done
        return {"finished": False, "step": trainer.step, "train_time_s": round(train_time, 1)}
    if not trainer.is_main:
        return {}
    summary = {"finished": True, "preset": None if base is not None else cfg.preset, "steps": trainer.step,
               "train_time_s": round(train_time, 1)}
    summary.update(export(cfg, model.vae.eval(), preset, train_set, val_set, tag, trainer.device, record))
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    return summary


def export(cfg: VAETrainConfig, vae, preset, train_set, val_set, tag: str, device, record: dict) -> dict:
    """Measure the latent scale (the base's with ``decoder_only``), save ``<out>/vae`` and the card."""
    from latentgen.export import export_vae

    gen = torch.Generator(device).manual_seed(cfg.seed)
    stats = ae.latent_stats(vae, train_set, n=cfg.scale_samples, generator=gen)
    if not cfg.decoder_only:  # decoder-only: the latents are the base's, and so is their scale
        vae.register_to_config(scaling_factor=1.0 / stats["std"])
    value = reconstruction_psnr(vae, val_set)
    c, h, w = preset.latent_shape
    about = (f"A latent codec (diffusers `AutoencoderKL`): {preset.sample_size} px images to {c} x {h} x {w} "
             f"latents, scaling factor {vae.config.scaling_factor:.4g}, trained on {len(train_set)} images; "
             f"PSNR {value:.2f} dB on {len(val_set)} {'held-out' if tag == 'psnr' else 'training'} images.")
    body = [about]
    if cfg.decoder_only:
        body.append("Only the decoder was trained: the encoder and the scaling factor are the base model's.")
    card = {"front": {}, "title": "latentgen VAE", "body": body, "command": command_for(cfg),
            "record": record}
    folder = export_vae(cfg.out, vae, preset, card=card)
    return {"scaling_factor": vae.config.scaling_factor, "latent_mean": stats["mean"],
            "latent_std": stats["std"], f"val_{tag}": value, "n_val": len(val_set), "vae": folder}


def main(argv=None) -> dict:
    return main_for(run, VAETrainConfig, __doc__.splitlines()[0], argv)


if __name__ == "__main__":
    main()
