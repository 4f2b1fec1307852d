"""Train the VAE latent codec (``diffusers.AutoencoderKL``) on image folders.

    python -m train.vae --data shapes/ --out runs/vae --preset small64 --max-steps 3000
    python -m train.vae --data emoji/ --model latentgen/weights/default --decoder-only --out runs/vae-dec

``--model`` continues an exported VAE (its architecture; ``--preset`` is ignored). ``--decoder-only``
trains just the decoder (and ``post_quant_conv``), as Stable Diffusion's ft-MSE decoder was: the
encoder, the latents and the ``scaling_factor`` stay the base's bit for bit, so a UNet trained on
them stays valid and only the decoded images change.

Loss (latent diffusion's autoencoder, Rombach et al. 2022, App. G):
``L1 (or L2) reconstruction + kl_weight * KL``, plus, from ``--disc-start`` on, a
PatchGAN hinge loss weighted by ``disc_weight`` times the adaptive weight of Esser et al. 2021.
Validation logs the PSNR of held-out images and a grid of originals over reconstructions.
At the end the latent scale is measured (``scaling_factor = 1 / std``) and the codec is
exported to ``<out>/vae/`` (diffusers layout plus ``latentgen_config.json``).
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Subset

from latentgen import autoencoding as ae
from latentgen.data.folder import ImageCaptionDataset
from latentgen.eval.psnr import psnr, reconstruction_psnr
from latentgen.models.discriminator import PatchDiscriminator
from latentgen.models.presets import config_to_dict, save_config
from latentgen.models.vae import PRESETS, build_vae, get_vae_config, preset_from_vae, vae_folder
from latentgen.training import Trainer
from train import common


class Codec(nn.Module):
    """The one trainable module: the VAE and (optionally) its discriminator.

    ``forward`` runs every network the step needs, so that under DDP all of it goes
    through the wrapper's forward. The generator's adversarial logits are computed with
    the discriminator's parameters frozen (``requires_grad_(False)`` for that one call):
    their gradient reaches only the VAE. The discriminator sees detached images: its
    hinge loss reaches only the discriminator. One backward of their sum therefore gives
    each network exactly its own gradient, and one optimizer steps both.
    """

    def __init__(self, vae, disc: PatchDiscriminator | None = None):
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


def make_step_fn(args):
    def step_fn(model, batch, ctx) -> dict:
        x = batch["pixels"]  # (B, 3, H, W) in [-1, 1]
        adversarial = args.disc_start is not None and ctx.step >= args.disc_start
        out = model(x, generator=ctx.generator, adversarial=adversarial)
        rec = ae.reconstruction_loss(x, out["x_rec"], args.recon)
        kl = ae.kl_per_pixel(out["mean"], out["logvar"], num_pixels=x[0].numel())
        loss = rec + args.kl_weight * kl
        logs = {"rec": rec.detach(), "kl": kl.detach(),
                "psnr": psnr(out["x_rec"].detach().clamp(-1, 1).float(), x.float()).mean()}
        if adversarial:
            g_loss = ae.hinge_g_loss(out["logits_fake_g"])
            last = ctx.accelerator.unwrap_model(model).vae.decoder.conv_out.weight
            weight = args.disc_weight * ae.adaptive_adversarial_weight(rec, g_loss, last)
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


def parse_args(argv=None):
    p = common.base_parser("Train the VAE latent codec", presets=PRESETS, default_preset="small64")
    g = p.add_argument_group("VAE")
    g.add_argument("--recon", choices=["l1", "l2"], default="l1", help="reconstruction loss")
    g.add_argument("--kl-weight", type=float, default=1e-6, help="weight of the KL term (latent diffusion: 1e-6)")
    g.add_argument("--disc-start", type=int, default=None, metavar="STEP",
                   help="switch the patch discriminator on at this step (default: no discriminator)")
    g.add_argument("--disc-weight", type=float, default=0.5, help="adversarial weight (times the adaptive weight)")
    g.add_argument("--val-data", action="append", metavar="DIR",
                   help="held-out image folder for validation (default: hold out --val-count training images)")
    g.add_argument("--val-count", type=int, default=64, help="images held out of --data when --val-data is not given")
    g.add_argument("--decoder-only", action="store_true",
                   help="with --model: train only the decoder; the encoder, latents and scaling factor are kept")
    g.add_argument("--hflip", action="store_true",
                   help="also train on every image mirrored (doubles the set; a codec has no captions to contradict)")
    g.add_argument("--scale-samples", type=int, default=512, help="training images used to measure the latent std")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    """Train, measure the latent scale, export ``<out>/vae/``; returns a summary dict."""
    args = parse_args(argv)
    if args.decoder_only and not args.model:
        raise ValueError("--decoder-only fine-tunes the decoder of a trained VAE: name it with --model DIR")
    base = base_dir = None
    if args.model:
        from diffusers import AutoencoderKL

        base_dir = vae_folder(args.model)  # a clear error if it is no VAE export
        base = AutoencoderKL.from_pretrained(base_dir)
        print(f"continuing from {base_dir} (its architecture; --preset is ignored)")
    preset = preset_from_vae(base) if base is not None else get_vae_config(args.preset)
    if args.disc_start is not None and args.disc_start < 0:
        raise ValueError(f"--disc-start must be a step >= 0, got {args.disc_start}")
    cfg = common.train_config(args, out=args.out, max_steps=2000, batch_size=16, lr=4e-4, warmup_steps=100,
                              checkpoint_every=500, validate_every=500,
                              adam_betas=(0.5, 0.9) if args.disc_start is not None else (0.9, 0.999))
    data = ImageCaptionDataset(args.data, size=preset.sample_size, hflip=args.hflip)  # clear error if unusable
    if args.val_data:
        train_set, val_set, tag = data, ImageCaptionDataset(args.val_data, size=preset.sample_size), "psnr"
    else:
        train_set, val_set = split_heldout(data, args.val_count, cfg.seed)
        tag = "psnr"
        if len(val_set) == 0:  # too few images to hold any out: report the training PSNR, named as such
            val_set, tag = Subset(data, range(min(8, len(data)))), "psnr_train"

    torch.manual_seed(cfg.seed)
    vae = base if base is not None else build_vae(preset)
    if args.decoder_only:  # the Trainer optimises only what requires a gradient
        vae.encoder.requires_grad_(False)
        if vae.quant_conv is not None:
            vae.quant_conv.requires_grad_(False)
    disc = None
    if args.disc_start is not None:  # 3 layers (70 px patches) at 32 px and up, fewer for smaller images
        disc = PatchDiscriminator(n_layers=max(1, min(3, preset.sample_size.bit_length() - 3)))
    run_config = {
        "trainer": "vae", "preset": None if base is not None else args.preset, "vae_config": config_to_dict(preset),
        "model": os.path.abspath(base_dir) if base_dir else None, "decoder_only": args.decoder_only,
        "data": [os.path.abspath(d) for d in args.data], "recon": args.recon, "kl_weight": args.kl_weight,
        "disc_start": args.disc_start, "disc_weight": args.disc_weight if args.disc_start is not None else None,
        **({"hflip": True} if args.hflip else {}),  # absent when off: folders made before the flag still resume
    }
    trainer = Trainer(cfg, Codec(vae, disc), train_set, make_step_fn(args),
                      validate_fn=make_validate_fn(val_set, tag), run_config=run_config,
                      find_unused_parameters=disc is not None)  # the discriminator idles until --disc-start
    t0 = time.time()
    model = trainer.fit()
    train_time = time.time() - t0
    if not trainer.finished:  # stopped (SIGTERM): a checkpoint, no export; the recipe must not call it done
        return {"finished": False, "step": trainer.step, "train_time_s": round(train_time, 1)}
    if not trainer.is_main:
        return {}
    vae = model.vae.eval()
    gen = torch.Generator(trainer.device).manual_seed(cfg.seed)
    stats = ae.latent_stats(vae, train_set, n=args.scale_samples, generator=gen)
    if not args.decoder_only:  # decoder-only: the latents are the base's, and so is their scale
        vae.register_to_config(scaling_factor=1.0 / stats["std"])
    folder = os.path.join(args.out, "vae")
    vae.save_pretrained(folder, safe_serialization=True)
    save_config(preset, folder)
    summary = {"finished": True, "preset": run_config["preset"], "steps": trainer.step, "train_time_s": round(train_time, 1),
               "scaling_factor": vae.config.scaling_factor, "latent_mean": stats["mean"], "latent_std": stats["std"],
               f"val_{tag}": reconstruction_psnr(vae, val_set), "n_val": len(val_set), "vae": folder}
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()))
    return summary


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        sys.exit(f"error: {e}")
