"""PatchGAN discriminator: one real/fake logit per image patch.

Isola et al. 2017, "Image-to-Image Translation with Conditional Adversarial Networks"
(pix2pix, Sec. 3.2.2), in the form latent diffusion uses (Esser et al. 2021, taming
``NLayerDiscriminator``): strided 4x4 convolutions with BatchNorm and LeakyReLU(0.2).
With ``n_layers=3`` each logit sees a 70 x 70 receptive field; a 64 px image gives a
6 x 6 map of logits. Only the module here; the losses are in ``latentgen/autoencoding.py``.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, base_channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        ch = base_channels
        for i in range(1, n_layers + 1):
            out = base_channels * min(2**i, 8)
            stride = 2 if i < n_layers else 1  # the last block keeps the resolution
            layers += [
                nn.Conv2d(ch, out, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.LeakyReLU(0.2, True),
            ]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 3, H, W) -> (B, 1, h, w) logits


def _init_weights(m: nn.Module) -> None:
    """DCGAN initialisation (Radford et al. 2016), as in pix2pix and taming."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)
