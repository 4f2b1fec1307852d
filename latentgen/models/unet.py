"""The denoiser: named presets for ``diffusers.UNet2DConditionModel``.

The UNet works in the VAE's latent space: ``sample_size`` is the latent side
(a 64 px image through a factor-4 VAE gives 16), ``in_channels``/``out_channels``
are the VAE's latent channels and ``cross_attention_dim`` is the text encoder's
hidden size. A trainer fits these three to its VAE and text encoder with
``dataclasses.replace(get_unet_config("small"), sample_size=..., ...)``.

``attention_head_dim`` here is the width of one attention head. (diffusers'
argument of the same name is, for historical reasons, the number of heads;
``build_unet`` converts, so each block gets ``channels // attention_head_dim``
heads.) ``time_cond_proj_dim`` is for the guidance-conditioned distillation
student (Meng et al. 2023): when set, the UNet takes the embedding of
``guidance_scale - 1`` as ``timestep_cond``.
No training code here (see ``latentgen/diffusion.py`` and ``train/unet.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import UNet2DConditionModel

from latentgen.models.presets import get_preset

_ATTN_BLOCKS = ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a ``UNet2DConditionModel`` (one entry per resolution level in the tuples)."""

    sample_size: int = 16                               # latent side
    in_channels: int = 4                                # = VAE latent channels
    out_channels: int = 4                               # = VAE latent channels
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 2
    attention_head_dim: int = 32                        # width of one head (not diffusers' head count)
    cross_attention_dim: int = 256                      # = text encoder hidden size
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")
    norm_num_groups: int = 32                           # must divide every block_out_channels entry
    time_cond_proj_dim: int | None = None               # guidance embedding width for a distilled student

    def __post_init__(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError(
                f"block_out_channels has {n} levels but down_block_types has {len(self.down_block_types)} "
                f"and up_block_types {len(self.up_block_types)}: give one block type per level"
            )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups or c % self.attention_head_dim]
        if bad:
            raise ValueError(
                f"block_out_channels {bad} are not multiples of norm_num_groups={self.norm_num_groups} "
                f"and attention_head_dim={self.attention_head_dim}: pick channel counts divisible by both"
            )
        if self.sample_size % 2 ** (n - 1):
            raise ValueError(
                f"sample_size={self.sample_size} (the latent side) must be divisible by 2**{n - 1} "
                f"for {n} resolution levels: use fewer levels or a larger latent"
            )

    @property
    def num_heads(self) -> tuple[int, ...]:
        """Attention heads per level, as diffusers' ``attention_head_dim`` argument wants them."""
        return tuple(c // self.attention_head_dim for c in self.block_out_channels)


PRESETS: dict[str, UNetConfig] = {
    # tests only: ~60k parameters, 8 x 8 latents, a forward pass in milliseconds
    "tiny": UNetConfig(sample_size=8, block_out_channels=(8, 16), layers_per_block=1,
                       attention_head_dim=8, cross_attention_dim=32, norm_num_groups=4,
                       down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
    # 64 px images as 16 x 16 x 4 latents; attention at 8 x 8 and 4 x 4. 10.4M parameters,
    # about 0.5 s per training step at batch 32 on 2 CPU cores: 10k steps in under 2 hours
    "small": UNetConfig(),
    # the same layout, wider and deeper: for a GPU
    "base": UNetConfig(block_out_channels=(128, 256, 384), layers_per_block=2, attention_head_dim=64,
                       cross_attention_dim=512),
}


def get_unet_config(name: str) -> UNetConfig:
    return get_preset(PRESETS, name, kind="UNet")


def build_unet(cfg: UNetConfig | str) -> UNet2DConditionModel:
    """A freshly initialised ``UNet2DConditionModel`` for a preset (or its name)."""
    if isinstance(cfg, str):
        cfg = get_unet_config(cfg)
    return UNet2DConditionModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=tuple(cfg.up_block_types),
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.num_heads,  # diffusers reads this argument as the head count
        cross_attention_dim=cfg.cross_attention_dim,
        norm_num_groups=cfg.norm_num_groups,
        time_cond_proj_dim=cfg.time_cond_proj_dim,
    )
