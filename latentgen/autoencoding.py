"""Objectives of the VAE latent codec: one short function per equation, citing its paper.

Conventions: images are ``(B, 3, H, W)`` in [-1, 1]; every loss returns a scalar
averaged over the batch. The reconstruction loss is a per-pixel mean; the KL term
is divided by the same pixel count (``kl_per_pixel``), so ``kl_weight`` means what
it means in latent diffusion (Rombach et al. 2022: per-image sums, weight 1e-6).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def reconstruction_loss(x: torch.Tensor, x_rec: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Pixel reconstruction loss, L1 (``|x - x_rec|``) or L2 (``(x - x_rec)^2``), per-pixel mean.

    The L1 choice follows latent diffusion's autoencoders (Rombach et al. 2022, Sec. 3.1 and
    App. G), whose reconstruction term is an L1 loss.
    """
    if kind == "l1":
        return (x - x_rec).abs().mean()
    if kind == "l2":
        return (x - x_rec).pow(2).mean()
    raise ValueError(f"unknown reconstruction loss {kind!r}; use 'l1' or 'l2'")


def kl_diagonal_gaussian(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)), summed over latent dims: one value per sample.

    Kingma & Welling 2014, "Auto-Encoding Variational Bayes", App. B / Eq. 10:
    ``-D_KL = 1/2 * sum(1 + log sigma^2 - mu^2 - sigma^2)``.
    """
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)  # (B,)


def kl_per_pixel(mean: torch.Tensor, logvar: torch.Tensor, num_pixels: int) -> torch.Tensor:
    """Batch-mean KL of Eq. 10 divided by the image's element count (3 * H * W).

    Dividing the per-image KL sum and the per-image reconstruction sum by the same count
    keeps latent diffusion's ratio, so its ``kl_weight = 1e-6`` carries over unchanged.
    """
    return kl_diagonal_gaussian(mean, logvar).mean() / num_pixels


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """Hinge loss of the discriminator: ``E[relu(1 - D(x))] + E[relu(1 + D(x_rec))]``, halved.

    Lim & Ye 2017, "Geometric GAN", Eq. 9; the 1/2 follows Esser et al. 2021 (taming, ``hinge_d_loss``).
    """
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge GAN: ``-E[D(x_rec)]`` (Lim & Ye 2017, Eq. 10; Esser et al. 2021)."""
    return -logits_fake.mean()


def adaptive_adversarial_weight(
    rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """``lambda = ||grad_L L_rec|| / (||grad_L L_GAN|| + 1e-4)`` at the decoder's last layer L.

    Esser et al. 2021, "Taming Transformers for High-Resolution Image Synthesis", Eq. 7:
    balances the adversarial gradient against the reconstruction one. Detached: a weight,
    not a path for gradients.
    """
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = g_rec.norm() / (g_adv.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Unscaled latents the UNet trains on: ``latent_dist.sample(generator)``, as diffusers' SD trainers do."""
    return vae.encode(pixels).latent_dist.sample(generator=generator)  # (B, C, h, w)


@torch.no_grad()
def latent_stats(vae, dataset, n: int = 256, batch_size: int = 32,
                 generator: torch.Generator | None = None) -> dict:
    """Mean and std (over all elements) of sampled latents of ``n`` items spread evenly over ``dataset``.

    ``dataset`` yields dicts with ``"pixels"`` (3, S, S) in [-1, 1]. The sampled latents
    (not the mode) are used because that is what the UNet trainer encodes.
    """
    n = min(n, len(dataset))
    if n == 0:
        raise ValueError("cannot measure latent statistics on an empty dataset; give it some images")
    index = torch.linspace(0, len(dataset) - 1, n).round().long().tolist()
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    s1 = s2 = count = 0.0
    for start in range(0, n, batch_size):
        pixels = torch.stack([dataset[i]["pixels"] for i in index[start:start + batch_size]])
        z = encode_latents(vae, pixels.to(device, dtype), generator).double()  # (b, C, h, w)
        s1, s2, count = s1 + z.sum().item(), s2 + z.pow(2).sum().item(), count + z.numel()
    mean = s1 / count
    std = math.sqrt(max(s2 / count - mean * mean, 0.0))
    return {"mean": mean, "std": std, "n_images": n}


def measure_scaling_factor(vae, dataset, n: int = 256, batch_size: int = 32,
                           generator: torch.Generator | None = None) -> float:
    """``1 / std`` of the sampled latents over ``n`` training images (Rombach et al. 2022, Sec. 4.3.2 / G).

    Store it with ``vae.register_to_config(scaling_factor=...)``: the UNet then trains on
    ``latents * scaling_factor``, which have unit variance.
    """
    std = latent_stats(vae, dataset, n=n, batch_size=batch_size, generator=generator)["std"]
    if not std > 0:
        raise ValueError("the latents have zero spread; the VAE is degenerate (was it trained?)")
    return 1.0 / std
