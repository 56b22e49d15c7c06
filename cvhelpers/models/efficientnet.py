"""EfficientNet-Lite0 written plainly: depthwise separable convolutions and MBConv blocks.

The parameter names follow timm's ``tf_efficientnet_lite0``, so the real ImageNet weights the
course ships (:func:`cvhelpers.models.pretrained.lite0_state_dict_for_timm`) load by name and
the logits agree with timm's (``tests/test_model_parity.py``).

Two details a re-implementation gets wrong silently:

- **TensorFlow's "same" padding.** The weights were trained in TensorFlow, which pads a
  stride-2 convolution *asymmetrically* (the extra row and column go bottom and right).
  PyTorch's symmetric ``padding=k // 2`` shifts every feature map by half a pixel and the
  logits drift; :func:`pad_same` pads as TensorFlow does.
- **BatchNorm's epsilon** is TensorFlow's ``1e-3``, not PyTorch's ``1e-5``.

The *Lite* variant drops squeeze-and-excitation and uses ReLU6 instead of Swish (both are
slow or unsupported on mobile accelerators and hurt INT8 quantisation), and keeps the stem
and head widths fixed when the network is scaled.

Compound scaling (EfficientNet's rule): a bigger model multiplies depth by ``alpha ** phi``,
width by ``beta ** phi`` and resolution by ``gamma ** phi`` with ``alpha * beta**2 * gamma**2``
about 2 (the paper's 1.2, 1.1, 1.15), so each step of ``phi`` roughly doubles the FLOPs while
keeping depth, width and resolution in balance; :func:`scaled_stages` applies the depth and
width part.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LITE0_STAGES", "ConvBNAct", "DepthwiseSeparable", "MBConv", "EfficientNetLite", "pad_same",
           "scaled_stages", "efficientnet_lite0"]

BN_EPS = 1e-3
#: (block, repeats, kernel, stride, expansion, out channels) per stage: EfficientNet-B0's table
LITE0_STAGES = (("ds", 1, 3, 1, 1, 16), ("ir", 2, 3, 2, 6, 24), ("ir", 2, 5, 2, 6, 40), ("ir", 3, 3, 2, 6, 80),
                ("ir", 3, 5, 1, 6, 112), ("ir", 4, 5, 2, 6, 192), ("ir", 1, 3, 1, 6, 320))


def pad_same(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Pad ``x`` as TensorFlow's ``padding="SAME"`` does: output size ``ceil(in / stride)``,
    the odd pixel of padding at the bottom and right."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad wants the last dimension first
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class _SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow "same" padding (computed from each input's size)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(pad_same(x, self.kernel_size[0], self.stride[0]))


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride == 1:  # symmetric padding is the same as TensorFlow's for stride 1 and odd kernels
        return nn.Conv2d(cin, cout, kernel, 1, kernel // 2, groups=groups, bias=False)
    return _SameConv2d(cin, cout, kernel, stride, 0, groups=groups, bias=False)


class ConvBNAct(nn.BatchNorm2d):
    """BatchNorm followed by ReLU6 (or nothing): one module, named like timm's ``BatchNormAct2d``
    so the weights load by name."""

    def __init__(self, channels: int, act: bool = True) -> None:
        super().__init__(channels, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 (one filter per channel: spatial mixing) then pointwise 1x1 (channel mixing).

    A full ``k x k`` convolution costs ``k^2 * cin * cout`` multiply-adds per pixel; the pair
    costs ``k^2 * cin + cin * cout``, about ``k^2`` times less for wide layers.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.has_skip = stride == 1 and cin == cout
        self.conv_dw = _conv(cin, cin, kernel, stride, groups=cin)
        self.bn1 = ConvBNAct(cin)
        self.conv_pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = ConvBNAct(cout, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return x + y if self.has_skip else y


class MBConv(nn.Module):
    """The inverted residual ("MBConv"): expand with a 1x1 (``expansion`` times wider), a
    depthwise ``k x k``, project back down with a 1x1 *without* activation (a linear
    bottleneck: ReLU on few channels would destroy information), and a skip when the shapes
    allow. Wide inside, narrow at the ends: the opposite of ResNet's bottleneck.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int) -> None:
        super().__init__()
        mid = cin * expansion
        self.has_skip = stride == 1 and cin == cout
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = ConvBNAct(mid)
        self.conv_dw = _conv(mid, mid, kernel, stride, groups=mid)
        self.bn2 = ConvBNAct(mid)
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = ConvBNAct(cout, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv_pwl(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))))
        return x + y if self.has_skip else y


def scaled_stages(depth: float = 1.0, width: float = 1.0, stages=LITE0_STAGES) -> tuple:
    """EfficientNet's compound scaling of the stage table: repeats times ``depth`` (rounded up),
    channels times ``width`` (rounded to a multiple of 8, never down by more than 10 %)."""
    def channels(c: int) -> int:
        scaled = max(8, int(c * width + 4) // 8 * 8)
        return scaled + 8 if scaled < 0.9 * c * width else scaled

    return tuple((kind, math.ceil(n * depth), k, s, e, channels(c)) for kind, n, k, s, e, c in stages)


class EfficientNetLite(nn.Module):
    """Stem (3x3 stride 2, 32 channels), the MBConv stages, a 1x1 head to 1280 channels, global
    average pooling, dropout and a linear classifier."""

    def __init__(self, stages=LITE0_STAGES, num_classes: int = 1000, stem: int = 32, head: int = 1280,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.conv_stem = _conv(3, stem, 3, 2)
        self.bn1 = ConvBNAct(stem)
        blocks, cin = [], stem
        for kind, repeats, kernel, stride, expansion, cout in stages:
            stage = []
            for r in range(repeats):
                s = stride if r == 0 else 1
                stage.append(DepthwiseSeparable(cin, cout, kernel, s) if kind == "ds"
                             else MBConv(cin, cout, kernel, s, expansion))
                cin = cout
            blocks.append(nn.Sequential(*stage))
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = nn.Conv2d(cin, head, 1, bias=False)
        self.bn2 = ConvBNAct(head)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))
        return self.classifier(self.dropout(x.mean((2, 3))))


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    """EfficientNet-Lite0 with timm's ``tf_efficientnet_lite0`` parameter names (random weights)."""
    return EfficientNetLite(LITE0_STAGES, num_classes)
