"""The VAE latent codec: named presets for ``diffusers.AutoencoderKL``.

A preset fixes the architecture; ``build_vae`` turns it into a fresh (untrained)
``AutoencoderKL``. The downsampling factor is ``2 ** (len(block_out_channels) - 1)``:
a 64 px image with factor 4 becomes a 16 x 16 latent. Which factor and how many
latent channels we ship was chosen by measurement (``bench/results/vae_choice.md``).
No training code here (see ``latentgen/autoencoding.py`` and ``latentgen/train/vae.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from diffusers import AutoencoderKL

from latentgen.models.presets import get_preset


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of an ``AutoencoderKL``; every field is an ``AutoencoderKL`` argument."""

    sample_size: int = 64                               # image side in pixels
    block_out_channels: tuple[int, ...] = (64, 128, 128)  # one entry per resolution level
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_num_groups: int = 32                           # must divide every entry of block_out_channels
    mid_block_add_attention: bool = True                # self-attention at the lowest resolution

    def __post_init__(self):
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(
                f"norm_num_groups={self.norm_num_groups} must divide every block_out_channels entry; "
                f"{bad} do not: pick channel counts that are multiples of it"
            )
        if self.sample_size % self.downsample_factor:
            raise ValueError(
                f"sample_size={self.sample_size} is not divisible by the downsampling factor "
                f"{self.downsample_factor}; use an image size that is a multiple of it"
            )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def latent_size(self) -> int:
        return self.sample_size // self.downsample_factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)


PRESETS: dict[str, VAEConfig] = {
    # tests only: a few thousand parameters, 16 px images, factor 2
    "tiny": VAEConfig(sample_size=16, block_out_channels=(8, 16), latent_channels=4,
                      norm_num_groups=4, mid_block_add_attention=False),
    # 32 px images -> 8 x 8 x 4 latents (factor 4)
    "small32": VAEConfig(sample_size=32, block_out_channels=(32, 64, 64), latent_channels=4,
                         norm_num_groups=32),
    # 64 px images: the four candidates of bench/results/vae_choice.md (factor 4 or 8, 4 or 8 channels)
    "small64": VAEConfig(sample_size=64, block_out_channels=(32, 64, 64), latent_channels=4,
                         norm_num_groups=32),
    "small64_c8": VAEConfig(sample_size=64, block_out_channels=(32, 64, 64), latent_channels=8,
                            norm_num_groups=32),
    "small64_f8": VAEConfig(sample_size=64, block_out_channels=(32, 64, 64, 64), latent_channels=4,
                            norm_num_groups=32),
    "small64_f8c8": VAEConfig(sample_size=64, block_out_channels=(32, 64, 64, 64), latent_channels=8,
                              norm_num_groups=32),
}


def get_vae_config(name: str) -> VAEConfig:
    return get_preset(PRESETS, name, kind="VAE")


def build_vae(cfg: VAEConfig | str) -> AutoencoderKL:
    """A freshly initialised ``AutoencoderKL`` for a preset (or its name)."""
    if isinstance(cfg, str):
        cfg = get_vae_config(cfg)
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.sample_size,
        mid_block_add_attention=cfg.mid_block_add_attention,
        scaling_factor=1.0,  # measured after training: latentgen.autoencoding.measure_scaling_factor
    )


def vae_folder(path: str | os.PathLike) -> str:
    """The ``AutoencoderKL`` folder of ``path``: the folder itself, or its ``vae/`` (a run or model folder)."""
    path = os.fspath(path)
    for folder in (path, os.path.join(path, "vae")):
        if os.path.isfile(os.path.join(folder, "config.json")) and any(
                f.endswith(".safetensors") for f in os.listdir(folder)):
            return folder
    raise FileNotFoundError(f"{path} is not a VAE export: expected config.json and safetensors weights there "
                            f"or in {os.path.join(path, 'vae')} (train one with `latentgen train vae`)")


def preset_from_vae(vae: AutoencoderKL) -> VAEConfig:
    """The ``VAEConfig`` an ``AutoencoderKL`` was built from (read off its diffusers config)."""
    c = vae.config
    return VAEConfig(sample_size=c.sample_size, block_out_channels=tuple(c.block_out_channels),
                     latent_channels=c.latent_channels, layers_per_block=c.layers_per_block,
                     norm_num_groups=c.norm_num_groups, mid_block_add_attention=c.mid_block_add_attention)
