"""Peak signal-to-noise ratio, and the reconstruction PSNR of a VAE.

``PSNR = 10 * log10(R^2 / MSE)`` where ``R`` is the value range of the images:
``R = 2`` for images in [-1, 1] (the default, how images enter the VAE) and ``R = 1``
for images in [0, 1]. Both give the same number for the same picture: the range
cancels the scale of the error. Identical images give ``inf``.
"""

from __future__ import annotations

import math

import torch


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB of two ``(B, C, H, W)`` (or ``(C, H, W)``) batches.

    ``data_range`` is 2.0 for images in [-1, 1] and 1.0 for images in [0, 1].
    Returns a ``(B,)`` tensor (a 0-d tensor for a single image).
    """
    if a.shape != b.shape:
        raise ValueError(f"psnr needs images of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    single = a.dim() == 3
    if single:
        a, b = a[None], b[None]
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)  # (B,)
    out = 10.0 * torch.log10(data_range**2 / mse)  # mse == 0 gives inf
    return (out[0] if single else out).float()


@torch.no_grad()
def reconstruction_psnr(vae, data, n: int | None = None, batch_size: int = 32) -> float:
    """Mean per-image PSNR (dB) of ``vae``'s reconstructions of ``n`` images of ``data``.

    ``data`` is a map-style dataset or an iterable of batches (e.g. a DataLoader); items
    or batches are dicts with ``"pixels"`` in [-1, 1]. Encoding uses the posterior mean
    (``latent_dist.mode()``), so the figure is deterministic; reconstructions are clamped
    to [-1, 1] as they would be when saved as images.
    """
    device = next(vae.parameters()).device
    dtype = next(vae.parameters()).dtype
    total, count = 0.0, 0
    for pixels in _batches(data, n, batch_size):
        x = pixels.to(device, dtype)  # (B, 3, H, W)
        x_rec = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        values = psnr(x_rec.float(), x.float(), data_range=2.0)
        total, count = total + values.sum().item(), count + len(values)
    if count == 0:
        raise ValueError("reconstruction_psnr got no images; check the dataset / loader is not empty")
    return total / count if math.isfinite(total) else float("inf")


def _batches(data, n, batch_size):
    """Yield pixel batches from a map-style dataset (indexable, with len) or a batch iterable."""
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, torch.utils.data.DataLoader):
        stop = len(data) if n is None else min(n, len(data))
        for start in range(0, stop, batch_size):
            yield torch.stack([data[i]["pixels"] for i in range(start, min(stop, start + batch_size))])
    else:
        left = math.inf if n is None else n
        for batch in data:
            if left <= 0:
                return
            pixels = (batch["pixels"] if isinstance(batch, dict) else batch)[: int(min(left, 1 << 62))]
            left -= len(pixels)
            yield pixels


def psnr_table(rows: list[dict]) -> list[str]:
    """Markdown lines of a reconstruction table: rows of ``data``, ``images``, ``psnr`` (dB) and
    ``target_db`` (bench.run_all's codec section and the bundled model cards)."""
    return ["| VAE data | images | PSNR (dB) | target |", "|---|---:|---:|---:|",
            *(f"| {r['data']} | {r['images']} | {r['psnr']:.2f} | {r['target_db']} |" for r in rows), ""]
