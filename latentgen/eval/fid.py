"""Fréchet distance between two image sets in the feature space of ImageNet EfficientNet-Lite0.

FID (Heusel et al. 2017) fits a Gaussian to each set's Inception features; we use the
1280-d pooled penultimate layer of EfficientNet-Lite0 (``latentgen.eval.efficientnet``)
instead, so figures are comparable with each other but not with published FIDs.
Images are resized to 224 x 224 (bilinear, antialiased when shrinking) and
normalised as the Lite models expect. The distance is computed in float64 with
numpy only. Few images give a biased (too large) estimate: compare sets of equal size.
"""

from __future__ import annotations

import functools

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from latentgen.eval.efficientnet import FEATURE_DIM, IMAGE_SIZE, load_efficientnet_lite0, normalize


# ---------------------------------------------------------------- the distance
def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``(N, D)`` features: ``(D,)`` and ``(D, D)``, float64."""
    x = np.asarray(feats, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need an (N, D) array of features with N >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features hold NaN or inf; check the images (and the feature network)")
    return x.mean(0), np.cov(x, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues from
    round-off clipped to 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)  # (D,), (D, D)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """``Tr((S1 S2)^{1/2})``, as ``sum sqrt(eig(sqrt(S1) S2 sqrt(S1)))``: the two matrices are similar,
    and the second is symmetric PSD, so its eigenvalues are real and stable (no complex sqrtm)."""
    r = _psd_sqrt(s1)  # (D, D)
    m = r @ s2 @ r  # (D, D)
    w = np.linalg.eigvalsh((m + m.T) / 2)  # (D,)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance_from_stats(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Fréchet distance of two Gaussians (Heusel et al. 2017, Eq. 6):
    ``||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})``."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: means {mu1.shape} and {mu2.shape}, covariances {s1.shape} "
                         f"and {s2.shape}; both sets must use the same feature dimension")
    diff = mu1 - mu2  # (D,)
    d = float(diff @ diff) + float(np.trace(s1) + np.trace(s2)) - 2.0 * trace_sqrt_product(s1, s2)
    return max(d, 0.0)  # round-off can dip a hair below 0 for identical sets


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two ``(N, D)`` feature sets (N may differ)."""
    return frechet_distance_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


# ---------------------------------------------------------------- features
@functools.lru_cache(maxsize=2)
def _model(device: str):
    return load_efficientnet_lite0(device=device).to(memory_format=torch.channels_last)


def _as_batch(images) -> torch.Tensor:
    """PIL images, a uint8 ``(N, H, W, 3)`` array or a float ``(N, 3, H, W)`` tensor in [0, 1], as the
    latter."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"an image tensor must be (N, 3, H, W) in [0, 1], got {tuple(images.shape)}")
        return images.float()
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"an image array must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    images = list(images)
    if not all(isinstance(i, PIL.Image.Image) for i in images):
        raise ValueError("images must be PIL images, a uint8 (N, H, W, 3) array or an (N, 3, H, W) tensor "
                         "in [0, 1]")
    sizes = {i.size for i in images}
    if len(sizes) > 1:  # resize each on its own; stacking needs one size
        return torch.cat([_as_batch([i]) for i in images])
    arr = np.stack([np.asarray(i.convert("RGB")) for i in images])  # (N, H, W, 3)
    return _as_batch(arr)


def preprocess(images) -> torch.Tensor:
    """Images to the network's input: resized to 224 x 224 (bilinear) and normalised.  # (N, 3, 224, 224)"""
    x = _as_batch(images)  # (N, 3, H, W) in [0, 1]
    if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
        x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False,
                          antialias=True)
    return normalize(x)


@torch.no_grad()
def image_features(images, batch_size: int = 32, device: str | torch.device = "cpu") -> np.ndarray:
    """EfficientNet-Lite0 pooled features of ``images`` (a list of PIL images, a uint8 ``(N, H, W, 3)``
    array or an ``(N, 3, H, W)`` tensor in [0, 1]).  # (N, 1280) float32"""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int (got {batch_size!r})")
    if not isinstance(images, (torch.Tensor, np.ndarray)):
        images = list(images)
    if len(images) == 0:
        raise ValueError("image_features got no images")
    model = _model(str(torch.device(device)))
    out = []
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start:start + batch_size]).to(device)  # (b, 3, 224, 224)
        out.append(model.features(x.contiguous(memory_format=torch.channels_last)).float().cpu().numpy())
    feats = np.concatenate(out)  # (N, 1280)
    assert feats.shape[1] == FEATURE_DIM
    return feats


def fid_between(images_a, images_b, batch_size: int = 32, device: str | torch.device = "cpu") -> float:
    """Fréchet distance between two image sets in EfficientNet-Lite0 feature space (lower is closer)."""
    feats_a = image_features(images_a, batch_size, device)  # (N, 1280)
    feats_b = image_features(images_b, batch_size, device)  # (M, 1280)
    return frechet_distance(feats_a, feats_b)
