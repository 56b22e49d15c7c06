"""Transfer-learning recipes: small grey images for an ImageNet model, gradual unfreezing, TTA.

The building blocks (weights, layer groups, discriminative learning rates) live in
:mod:`cvhelpers.models.pretrained`; this module strings them into the recipes notebook 02 teaches.

Example (the whole recipe)::

    model = efficientnet_lite0(num_classes=10)
    groups = layer_groups(model)
    histories = gradual_unfreezing(model, groups, train_loader, val_loader,
                                   stages=[(1, 6), (3, 4), (10, 4)], base_lr=3e-3)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from cvhelpers.models.freezing import discriminative_param_groups, unfreeze_last_groups
from cvhelpers.train.engine import History, fit
from cvhelpers.train.evaluate import predict


def frozen_backbone_with_mlp_head(model: nn.Module, head: str, num_classes: int, hidden: int = 256,
                                   dropout: float = 0.2) -> nn.Module:
    """The classic transfer recipe: freeze the whole pretrained network, then replace its last
    layer ``head`` (``"fc"`` in torchvision's ResNets, ``"classifier"`` in timm's EfficientNets)
    by ``Dropout -> Linear(in, hidden) -> ReLU -> Dropout -> Linear(hidden, num_classes)``.

    "Frozen" means frozen: every parameter gets ``requires_grad=False`` *and* every BatchNorm
    becomes a frozen copy (:func:`cvhelpers.models.freezing.freeze_batchnorm`), whose running
    statistics do not move in ``train()`` mode either. Only the new head trains. Returns the
    model (changed in place).

    Raises:
        ValueError: ``model`` has no ``nn.Linear`` called ``head``.
    """
    from cvhelpers.models.freezing import freeze, freeze_batchnorm

    old = getattr(model, head, None)
    if not isinstance(old, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no nn.Linear {head!r} to replace (found {type(old).__name__})")
    freeze(model)
    freeze_batchnorm(model)
    setattr(model, head, nn.Sequential(nn.Dropout(dropout), nn.Linear(old.in_features, hidden), nn.ReLU(),
                                       nn.Dropout(dropout), nn.Linear(hidden, num_classes)))
    return model


def grey_to_rgb_tensor(images: np.ndarray, labels: np.ndarray, size: int,
                       mean: Sequence[float], std: Sequence[float]) -> TensorDataset:
    """Grey uint8 ``(N, H, W)`` images -> a dataset of normalised ``(N, 3, size, size)`` float32.

    ImageNet models expect three channels at a size close to what they were trained on: the
    grey channel is repeated three times and the image is resized bilinearly (antialiased), then
    normalised with the *model's* ``mean`` / ``std`` (per channel, for inputs in [0, 1]).
    Labels stay int64.

    Raises:
        ValueError: ``images`` not ``N x H x W`` ``uint8``, a ``size`` below 1, or not one label
            per image.
    """
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be grey uint8 N x H x W, got {images.dtype} of shape {images.shape}")
    if size < 1:
        raise ValueError(f"size must be at least 1 pixel, got {size}")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x.clamp_(0, 1).expand(-1, 3, -1, -1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return TensorDataset(((x - mean_t) / std_t).contiguous(), torch.as_tensor(labels, dtype=torch.int64))


def gradual_unfreezing(model: nn.Module, groups: list[list[nn.Module]], train_loader: Any,
                       val_loader: Any, stages: Sequence[tuple[int, int]], base_lr: float,
                       decay: float = 0.5, weight_decay: float = 1e-4, device: str = "auto",
                       progress: bool = False) -> list[History]:
    """Train in stages, each unfreezing more layer groups from the head toward the input.

    Args:
        groups: ``layer_groups(model)``, ordered input -> output (the head last).
        stages: ``(n_groups_trainable, epochs)`` per stage, e.g. ``[(1, 6), (3, 4)]``: first the
            head alone, then the head and the last two backbone groups.
        base_lr: the head's learning rate; each group closer to the input gets ``decay`` times
            the next one's (discriminative learning rates), with a one-cycle schedule per stage.

    Returns:
        One :class:`~cvhelpers.train.engine.History` per stage. ``model`` keeps its last weights (no
        restore-best between stages: each stage starts where the previous ended).
    """
    histories = []
    for n_trainable, epochs in stages:
        unfreeze_last_groups(groups, n_trainable)
        param_groups = discriminative_param_groups(groups, base_lr, decay)
        optimizer = torch.optim.AdamW(param_groups, weight_decay=weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in param_groups], total_steps=epochs * len(train_loader))
        histories.append(fit(model, train_loader, val_loader, epochs=epochs, optimizer=optimizer,
                             scheduler=scheduler, device=device, restore_best=False,
                             monitor="val_loss" if val_loader is not None else "train_loss",
                             progress=progress))
    return histories


class FlipTTA(nn.Module):
    """Wrap a classifier so it averages the softmax of each image and its mirror image.

    ``forward`` returns the *log* of the averaged probabilities, so a softmax of its output
    (what :func:`~cvhelpers.train.evaluate.predict` does with ``probs=True``) gives the average
    exactly, and the wrapper exports like any model. Each batch is flipped as it passes: no
    second pass over the data, no flipped copy of the dataset in memory.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = (self.model(x).float().softmax(1) + self.model(x.flip(-1)).float().softmax(1)) / 2
        return probs.clamp_min(1e-12).log()


def hflip_tta_probs(model: nn.Module, loader: Any, device: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Test-time augmentation: average the softmax of each image and its mirror image.

    Returns ``(probs N x C, targets N)`` in the loader's order, from one pass over the loader
    (so a shuffling or augmenting loader still pairs each image with its own mirror and label).
    Use it only where a flip does not change the label (clothes, animals: yes; text, digits,
    left/right arrows: no).
    """
    return predict(FlipTTA(model), loader, device=device, probs=True)
