"""Small models written out in full, so a learner can read every layer.

The workhorse is :class:`SmallCNN`, a VGG-style network sized for 28 x 28 images such as
Fashion-MNIST: a few blocks of two 3x3 convolutions and a 2x2 max-pool, then a classifier head.

Example:
    >>> import torch
    >>> model = SmallCNN(in_channels=1, num_classes=10, width=32)
    >>> model(torch.zeros(8, 1, 28, 28)).shape
    torch.Size([8, 10])
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["SmallCNN", "conv_block"]


def conv_block(
    in_channels: int, out_channels: int, norm: Literal["batch", "none"] = "batch"
) -> nn.Sequential:
    """Two 3x3 convolutions (each followed by optional BatchNorm and ReLU), then a 2x2 max-pool.

    Shapes: ``N x in_channels x H x W`` -> ``N x out_channels x H//2 x W//2``.
    """
    use_bn = norm == "batch"
    layers: list[nn.Module] = []
    for c_in in (in_channels, out_channels):
        # A conv followed by BatchNorm does not need its own bias: BN's shift replaces it.
        layers.append(nn.Conv2d(c_in, out_channels, kernel_size=3, padding=1, bias=not use_bn))
        if use_bn:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.MaxPool2d(kernel_size=2))
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """A small VGG-style classifier: ``blocks`` conv blocks, then a linear head.

    With ``width=32, blocks=2`` the layers are
    ``conv32-conv32-pool -> conv64-conv64-pool -> head``; each block doubles the channels and
    halves the spatial size, so a 28 x 28 input reaches the head as ``64 x 7 x 7``.

    Args:
        in_channels: channels of the input images (1 for grayscale, 3 for RGB).
        num_classes: number of output logits.
        width: channels of the first block; block ``i`` has ``width * 2**i`` channels.
        norm: ``"batch"`` puts BatchNorm after every convolution (trains faster and more
            stably); ``"none"`` leaves it out (useful to show why it helps, and for tests
            that need a model whose output does not depend on the rest of the batch).
        dropout: dropout probability right before the last linear layer (0 disables it).
        blocks: number of conv blocks, 2 or 3 (3 suits 32 x 32 or larger images).
        head: ``"flatten"`` keeps where features are (``C x h x w`` -> linear), which is more
            accurate on small centred images like Fashion-MNIST but fixes the input size;
            ``"avg"`` averages each channel over the image first (global average pooling),
            so any input size works and the head is tiny.
        image_size: input height and width, needed only by ``head="flatten"`` (must be
            divisible by ``2**blocks``).

    Shapes:
        input ``N x in_channels x image_size x image_size`` float32 (any ``H x W`` with
        ``head="avg"``); output ``N x num_classes`` float32 logits (no softmax).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        width: int = 32,
        norm: Literal["batch", "none"] = "batch",
        dropout: float = 0.0,
        blocks: int = 2,
        head: Literal["flatten", "avg"] = "flatten",
        image_size: int = 28,
    ) -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        if blocks not in (2, 3):
            raise ValueError(f"blocks must be 2 or 3, got {blocks}")
        if head not in ("flatten", "avg"):
            raise ValueError(f"head must be 'flatten' or 'avg', got {head!r}")

        channels = [width * 2**i for i in range(blocks)]  # e.g. [32, 64] or [32, 64, 128]
        self.features = nn.Sequential(
            *[
                conv_block(c_in, c_out, norm)
                for c_in, c_out in zip([in_channels, *channels[:-1]], channels)
            ]
        )

        if head == "flatten":
            if image_size % 2**blocks != 0:
                raise ValueError(
                    f"image_size={image_size} must be divisible by 2**blocks={2**blocks} "
                    "for head='flatten'; use head='avg' for other sizes"
                )
            side = image_size // 2**blocks
            pool: nn.Module = nn.Identity()
            head_features = channels[-1] * side * side
        else:
            pool = nn.AdaptiveAvgPool2d(1)
            head_features = channels[-1]
        self.head = nn.Sequential(
            pool,
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(head_features, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``N x C x H x W`` float images -> ``N x num_classes`` logits."""
        return self.head(self.features(x))
