"""ResNet written plainly: the residual blocks, the stem, the stages and the head.

The parameter names follow torchvision's ``resnet18`` / ``resnet50`` exactly, so their state
dicts load into these models by name (``model.load_state_dict(torchvision_model.state_dict())``)
and the outputs agree: ``tests/test_model_parity.py`` proves it. The code is the explanation;
torchvision's is the reference.

Example:
    >>> import torch
    >>> model = resnet(18, num_classes=10)
    >>> model(torch.zeros(2, 3, 64, 64)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet", "small_resnet", "STAGES"]

#: blocks per stage for each depth (He et al. 2016, table 1)
STAGES = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3))}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a skip: ``relu(x + F(x))`` (ResNet-18/34).

    When the block changes the size (``stride=2``) or the channels, the skip is a 1x1
    convolution with the same stride (``downsample``), so ``x`` and ``F(x)`` can be added.
    """

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, skip: bool = True) -> None:
        super().__init__()
        self.skip = skip
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        out = channels * self.expansion
        self.downsample = (nn.Sequential(nn.Conv2d(in_channels, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                           if skip and (stride != 1 or in_channels != out) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if not self.skip:  # a plain network: no identity path at all
            return self.relu(y)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(y + identity)


class Bottleneck(nn.Module):
    """1x1 (reduce) -> 3x3 -> 1x1 (expand 4x), and a skip (ResNet-50/101).

    The 3x3 convolution works on a quarter of the output channels, which makes a deep network
    affordable; the stride sits on the 3x3 convolution ("ResNet v1.5", as torchvision does).
    """

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, skip: bool = True) -> None:
        super().__init__()
        self.skip = skip
        out = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(in_channels, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                           if skip and (stride != 1 or in_channels != out) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if not self.skip:
            return self.relu(y)
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(y + identity)


class ResNet(nn.Module):
    """Stem (7x7 stride-2 convolution, 3x3 stride-2 max-pool: a quarter of the size), four
    stages that each halve the size and double the width (the first keeps both), global
    average pooling and one linear layer.

    For small images (28 or 32 px) a quarter of the size is too much: ``small_stem=True`` makes
    the stem one 3x3 stride-1 convolution without the max-pool, as in the CIFAR networks of
    He et al. (ResNet-20: ``layers=(3, 3, 3)``, widths 16-32-64, 1 + 18 + 1 = 20 layers; their
    shortcuts pad with zeros where ours use a 1x1 projection).

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
        num_classes: outputs of ``fc``.
        width: channels of the first stage (64 in the paper; smaller for small images).
        in_channels: image channels.
        skip: ``False`` builds the same network without any shortcut (the *plain* network of
            He et al., to measure what the skips buy).
        small_stem: a 3x3 stride-1 stem and no max-pool, for small images.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, ...], num_classes: int = 1000,
                 width: int = 64, in_channels: int = 3, skip: bool = True, small_stem: bool = False) -> None:
        super().__init__()
        if small_stem:
            self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_stem else nn.MaxPool2d(3, 2, 1)
        channels, stages = width, []
        for index, blocks in enumerate(layers):
            stride = 1 if index == 0 else 2
            stage = []
            for k in range(blocks):
                stage.append(block(channels, width * 2 ** index, stride if k == 0 else 1, skip=skip))
                channels = width * 2 ** index * block.expansion
            stages.append(nn.Sequential(*stage))
        self.num_stages = len(stages)
        for index, stage in enumerate(stages):  # layer1, layer2, ...: torchvision's names
            self.add_module(f"layer{index + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def small_resnet(depth: int = 20, num_classes: int = 10, width: int = 16, in_channels: int = 1,
                 skip: bool = True) -> ResNet:
    """He et al.'s CIFAR ResNet for small images: ``depth = 6 n + 2`` (20, 32, 44, 56), three
    stages of ``n`` basic blocks at widths ``width``, ``2 width``, ``4 width``, a small stem.
    ``skip=False`` is the plain network of the same depth."""
    if (depth - 2) % 6:
        raise ValueError(f"depth must be 6 n + 2 (20, 32, 44, 56, ...), got {depth}")
    n = (depth - 2) // 6
    return ResNet(BasicBlock, (n, n, n), num_classes, width=width, in_channels=in_channels, skip=skip,
                  small_stem=True)


def resnet(depth: int = 18, num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-18/34/50/101 with torchvision's parameter names (``**kwargs``: :class:`ResNet`)."""
    if depth not in STAGES:
        raise ValueError(f"depth must be one of {sorted(STAGES)}, got {depth}")
    kind, layers = STAGES[depth]
    return ResNet(BasicBlock if kind == "basic" else Bottleneck, layers, num_classes, **kwargs)
