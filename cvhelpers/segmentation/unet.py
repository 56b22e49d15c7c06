"""The course's own U-Net (Ronneberger et al., 2015), small enough to read in one sitting.

An **encoder** halves the image size four times while doubling the channels (what is there),
a **bottleneck** works at 1/16 of the size (the widest view), and a **decoder** doubles the size
back, each time concatenating the encoder's feature map of the same size (the **skip
connection**: where exactly it is). A 1x1 convolution then gives one score per class and pixel.

>>> model = UNet(in_channels=3, num_classes=5, width=16)
>>> model(torch.zeros(2, 3, 160, 160)).shape
torch.Size([2, 5, 160, 160])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvBlock", "Down", "Up", "UNet"]


class ConvBlock(nn.Sequential):
    """Two 3x3 convolutions, each followed by BatchNorm and ReLU; the size is kept."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    """Encoder step: 2x2 max-pool (half the size), then a :class:`ConvBlock`."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), ConvBlock(in_channels, out_channels))


class Up(nn.Module):
    """Decoder step: upsample x2 (transposed conv), concatenate the skip, then a :class:`ConvBlock`."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = ConvBlock(in_channels // 2 + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:  # odd input sizes: pad up to the skip's size
            dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            x = nn.functional.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net: ``B x in_channels x H x W`` float images -> ``B x num_classes x H x W`` logits.

    Args:
        in_channels: 3 for RGB.
        num_classes: output channels, background included (5 for the scenes: bg + 4 shapes).
        width: channels of the first block; level ``k`` has ``width * 2**k`` (16 -> 16, 32, 64,
            128, 256 in the bottleneck: 1.9 M parameters; the paper's 64 gives 31 M).
        depth: how many times the encoder halves the size (H and W should divide by
            ``2**depth``; other sizes are padded in the decoder).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 5, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        channels = [width * 2 ** k for k in range(depth + 1)]
        self.stem = ConvBlock(in_channels, channels[0])
        self.encoder = nn.ModuleList(Down(channels[k], channels[k + 1]) for k in range(depth - 1))
        self.bottleneck = Down(channels[depth - 1], channels[depth])
        self.decoder = nn.ModuleList(Up(channels[k + 1], channels[k], channels[k])
                                     for k in reversed(range(depth)))
        self.head = nn.Conv2d(channels[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down in self.encoder:
            skips.append(down(skips[-1]))
        x = self.bottleneck(skips[-1])
        for up, skip in zip(self.decoder, reversed(skips)):
            x = up(x, skip)
        return self.head(x)


def unet_data_flow(model: UNet, x: torch.Tensor) -> tuple[list[tuple[str, tuple[int, int, int]]], list[tuple[int, int]]]:
    """The stages a :class:`UNet` passes ``x`` (``1 x C x H x W``) through, with their output
    shapes, and its skip connections: the input to :func:`cvhelpers.viz.plot_data_flow`.

    Returns:
        ``(stages, skips)``: ``stages`` is ``[("input", (C, H, W)), ("stem", ...),
        ("encoder 1", ...), ..., ("bottleneck", ...), ("decoder 1", ...), ..., ("head", ...)]``
        and ``skips`` the ``(encoder stage, decoder stage)`` index pairs each decoder
        concatenates.
    """
    named = [("stem", model.stem), *((f"encoder {k + 1}", m) for k, m in enumerate(model.encoder)),
             ("bottleneck", model.bottleneck), *((f"decoder {k + 1}", m) for k, m in enumerate(model.decoder)),
             ("head", model.head)]
    shapes: dict[str, tuple[int, int, int]] = {}
    handles = [module.register_forward_hook(
        lambda _m, _i, out, name=name: shapes.__setitem__(name, tuple(out.shape[1:]))) for name, module in named]
    try:
        was_training = model.training
        with torch.no_grad():
            model.eval()(x)
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    stages = [("input", tuple(x.shape[1:])), *((name, shapes[name]) for name, _ in named)]
    skip_sources = list(range(1, len(model.encoder) + 2))  # the stem and every encoder stage
    first_decoder = len(model.encoder) + 3
    skips = [(skip_sources[-(j + 1)], first_decoder + j) for j in range(len(model.decoder))]
    return stages, skips
