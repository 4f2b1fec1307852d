"""Images in and out of the pipeline: init images to VAE tensors, latents to quick previews.

An init image may be a PIL image (any mode: converted to RGB, transparency composited on
white), a list of them, a uint8 array or a tensor in [-1, 1]; PIL images of another size
are resized, with a warning. A preview maps latents to colours with a linear map fitted to
the VAE's encodings of flat colours: no decoder pass, 1/factor of the image's resolution.
Shapes in comments: N images, C latent channels, h x w latent side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import PIL.Image
import torch

logger = logging.getLogger(__name__)


def to_rgb(img: PIL.Image.Image) -> PIL.Image.Image:
    """RGB, with any transparency composited on white."""
    if img.mode == "RGB":
        return img
    try:
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            bg = PIL.Image.new("RGBA", img.size, (255, 255, 255, 255))
            bg.alpha_composite(img.convert("RGBA"))
            return bg.convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot convert an init image of mode {img.mode!r} to RGB ({e}); "
                         "save it as an 8-bit RGB or RGBA PNG") from None


def _pil_tensor(images: list[PIL.Image.Image], height: int, width: int) -> torch.Tensor:
    arrays = []
    for img in images:
        img = to_rgb(img)
        if img.size != (width, height):
            logger.warning("init image is %dx%d; resizing it to %dx%d (pass height/width to choose "
                           "the size)", img.width, img.height, width, height)
            img = img.resize((width, height), PIL.Image.LANCZOS)
        arrays.append(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)  # (H, W, 3)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (N, 3, H, W)


def image_tensor(image, height: int, width: int) -> torch.Tensor:
    """An init image (PIL, list of PIL, uint8 array or tensor) as a tensor in [-1, 1].  # (N, 3, H, W)"""
    if isinstance(image, np.ndarray):
        image = [PIL.Image.fromarray(a) for a in (image if image.ndim == 4 else [image])]
    if isinstance(image, PIL.Image.Image):
        image = [image]
    if isinstance(image, (list, tuple)) and image and all(isinstance(i, PIL.Image.Image) for i in image):
        return _pil_tensor(list(image), height, width)
    if isinstance(image, torch.Tensor):
        x = image[None] if image.ndim == 3 else image
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (height, width):
            raise ValueError(f"an init image tensor must be (N, 3, {height}, {width}) (or (3, H, W)), got "
                             f"{tuple(image.shape)}: resize it or pass matching height/width")
        if x.numel() and (x.min() < -1.001 or x.max() > 1.001):
            raise ValueError("an init image tensor must hold values in [-1, 1] (VAE images), got "
                             f"[{x.min():.3g}, {x.max():.3g}]: use x * 2 - 1 for images in [0, 1]")
        return x.float()
    raise ValueError(f"init image of type {type(image).__name__} is not supported: pass a PIL image, a list "
                     "of them, a uint8 (H, W, 3) array or a (N, 3, H, W) tensor in [-1, 1]")


@torch.no_grad()
def fit_latent_rgb_map(encode: Callable[[torch.Tensor], torch.Tensor], side: int) -> torch.Tensor:
    """A least-squares linear map from a latent pixel (and 1) to RGB in [-1, 1], fitted on the latents
    ``encode`` gives 64 flat colours of ``side`` x ``side`` pixels.  # (C + 1, 3)"""
    g = torch.Generator().manual_seed(0)
    colours = torch.rand(64, 3, generator=g) * 2 - 1  # (64, 3) in [-1, 1]
    lat = encode(colours[:, :, None, None].expand(-1, -1, side, side))  # (64, C, s, s)
    feats = lat.float().mean(dim=(2, 3)).cpu()  # (64, C)
    feats = torch.cat([feats, torch.ones(len(feats), 1)], 1)  # (64, C + 1)
    return torch.linalg.lstsq(feats, colours).solution  # (C + 1, 3)


@torch.no_grad()
def latents_to_rgb(latents: torch.Tensor, rgb_map: torch.Tensor) -> list[PIL.Image.Image]:
    """One small PIL image per latent, each latent pixel mapped to a colour by ``rgb_map``."""
    lat = latents.float().permute(0, 2, 3, 1)  # (N, h, w, C)
    rgb = torch.cat([lat, torch.ones_like(lat[..., :1])], -1) @ rgb_map.to(lat.device)  # (N, h, w, 3)
    arr = ((rgb.clamp(-1, 1) + 1) * 127.5).round().byte().cpu().numpy()
    return [PIL.Image.fromarray(a) for a in arr]
