"""Cached latents and prompt embeddings: the frozen VAE and text encoder run once per data set.

On a CPU the VAE encoder and the text encoder cost as much per example as a UNet step, and
they are frozen while the UNet trains (and during distillation), so their outputs are computed
once and kept: for each image the latent distribution's mean and standard deviation (a fresh
latent is sampled from them at every step, as if the VAE ran each time), and for each distinct
caption the text encoder's last hidden state, exactly as the pipeline encodes a prompt.

The cache file (safetensors) is keyed by a hash of the data (paths, sizes, mtimes, captions),
the image side and the two models' weights, so a resumed run reuses it and a change rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os

import torch
from torch.utils.data import Dataset

from latentgen.pipeline import encode_prompts


def _fingerprint(items, size: int, *modules: torch.nn.Module) -> str:
    h = hashlib.sha256(f"size={size}".encode())
    for it in items:
        st = os.stat(it.path)
        h.update(f"{it.path}|{st.st_size}|{st.st_mtime_ns}|{it.caption}".encode())
    for m in modules:
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().numpy().tobytes())
        config = getattr(m, "config", {})
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)  # transformers / diffusers
        config = {k: v for k, v in config.items() if not str(k).startswith("_")}
        h.update(json.dumps(config, sort_keys=True, default=str).encode())  # not where it was loaded from
    return h.hexdigest()[:16]


def cache_captions(captions) -> list[str]:
    """The distinct captions in the order of the cache's caption ids; "" is the unconditional prompt."""
    return sorted(set(captions) | {""})


@torch.no_grad()
def build_cache(dataset, vae, tokenizer, text_encoder, batch_size: int = 32, device=None) -> dict[str, torch.Tensor]:
    """Encode every image of ``dataset`` (items ``{"pixels", "caption"}``) and every distinct caption."""
    from tqdm.auto import tqdm

    device = device or next(vae.parameters()).device
    captions = [dataset[i]["caption"] for i in range(len(dataset))] if not hasattr(dataset, "items") else \
        [it.caption for it in dataset.items]
    distinct = cache_captions(captions)
    index = {c: i for i, c in enumerate(distinct)}
    means, stds, embs = [], [], []
    for s in tqdm(range(0, len(dataset), batch_size), desc="encode images", leave=False):
        pixels = torch.stack([dataset[i]["pixels"] for i in range(s, min(s + batch_size, len(dataset)))])
        dist = vae.encode(pixels.to(device, vae.dtype)).latent_dist
        means.append(dist.mean.float().cpu())  # (B, C, h, w)
        stds.append(dist.std.float().cpu())
    for s in tqdm(range(0, len(distinct), batch_size), desc="encode captions", leave=False):
        embs.append(encode_prompts(tokenizer, text_encoder, distinct[s:s + batch_size], device).float().cpu())
    return {
        "mean": torch.cat(means),                               # (N, C, h, w)
        "std": torch.cat(stds),                                 # (N, C, h, w)
        "caption_id": torch.tensor([index[c] for c in captions]),  # (N,)
        "embeddings": torch.cat(embs),                          # (K, L, D)
        "uncond_id": torch.tensor(index[""]),
    }


def load_or_build_cache(folder_dataset, vae, tokenizer, text_encoder, cache_dir: str, size: int,
                        batch_size: int = 32) -> dict[str, torch.Tensor]:
    """The cache for this data and these models, from ``cache_dir`` if it is there, else built and saved."""
    from accelerate import PartialState
    from safetensors.torch import load_file, save_file

    key = _fingerprint(folder_dataset.items, size, vae, text_encoder)
    path = os.path.join(cache_dir, f"cache-{key}.safetensors")
    with PartialState().main_process_first():  # one process builds it, the others then read it
        if os.path.isfile(path):
            return load_file(path)
        cache = build_cache(folder_dataset, vae, tokenizer, text_encoder, batch_size)
        os.makedirs(cache_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        save_file({k: v.contiguous() for k, v in cache.items()}, tmp)
        os.replace(tmp, path)
        return cache


class LatentDataset(Dataset):
    """Examples from a cache: ``{"mean", "std", "caption_id"}``; the step function samples the latent."""

    def __init__(self, cache: dict[str, torch.Tensor]):
        self.cache = cache

    def __len__(self):
        return len(self.cache["mean"])

    def __getitem__(self, i):
        return {"mean": self.cache["mean"][i], "std": self.cache["std"][i], "caption_id": self.cache["caption_id"][i]}


def sample_latents(batch, scaling_factor: float, generator: torch.Generator) -> torch.Tensor:
    """z = (mu + sigma * eps) * scaling_factor: a draw from the VAE posterior, scaled to unit variance."""
    eps = torch.randn(batch["mean"].shape, generator=generator, device=batch["mean"].device)
    return (batch["mean"] + batch["std"] * eps) * scaling_factor  # (B, C, h, w)
