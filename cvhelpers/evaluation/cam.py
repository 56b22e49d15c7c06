"""Grad-CAM: which parts of an image made a CNN choose a class.

Grad-CAM (Selvaraju et al., 2017) looks at one convolutional layer's feature maps ``A`` (``C``
maps of ``h x w``) and at the gradient of the class score ``y`` with respect to them:

1. weight each map by how much the score rises with it: ``alpha_c = mean over h, w of dy/dA_c``;
2. add the weighted maps and keep the positive part: ``cam = ReLU(sum_c alpha_c * A_c)``;
3. upsample ``h x w`` to the image size and scale to ``[0, 1]`` for display.

A forward hook on the layer catches the feature maps; ``torch.autograd.grad`` then gives their
gradient alone (no weight gradients, nothing stored in ``.grad``). Any CNN works, with no extra
package.

>>> model = efficientnet_lite0().eval()                                      # doctest: +SKIP
>>> cam = grad_cam(model, preprocess_photo(load_photo("chelsea")), class_index=281)  # doctest: +SKIP
>>> cam.shape                                                                # doctest: +SKIP
(224, 224)
"""

from __future__ import annotations

from typing import Any

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cvhelpers.models.freezing import eval_mode

__all__ = ["default_target_layer", "grad_cam", "cam_mass", "overlay_cam"]


def default_target_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage: small enough to be about objects, large enough to say where.

    * timm EfficientNet (e.g. ``cvhelpers.models.pretrained.efficientnet_lite0()``): ``bn2``, the
      normalised and activated output of ``conv_head`` (1280 maps of 7 x 7 at 224 px).
    * ResNet (torchvision or timm): ``layer4``.

    Raises:
        TypeError: for other models; pass ``target_layer=`` yourself.
    """
    if hasattr(model, "conv_head") and hasattr(model, "bn2"):
        return model.bn2
    if hasattr(model, "layer4"):
        return model.layer4
    raise TypeError(f"no default Grad-CAM layer for {type(model).__name__}: pass target_layer= "
                    "(usually the last module whose output is still a B x C x h x w feature map)")


def grad_cam(model: nn.Module, images: torch.Tensor, class_index: int | list[int] | None = None,
             target_layer: nn.Module | None = None) -> np.ndarray:
    """Grad-CAM heat maps for a batch of preprocessed images.

    Args:
        model: a classifier returning ``B x num_classes`` logits; run in eval mode (then put
            back in the mode it was in). Its parameters may be frozen.
        images: ``B x 3 x H x W`` (or one ``3 x H x W``), preprocessed for ``model``; any
            ``H x W`` a fully convolutional model accepts (e.g. 224 x 448 for two photos).
        class_index: the class to explain: one id for every image, one per image, or ``None``
            for each image's top prediction.
        target_layer: the layer whose feature maps are weighted; default
            :func:`default_target_layer`.

    Returns:
        ``float32`` ``B x H x W`` (or ``H x W`` for one image) in ``[0, 1]``, each map divided by
        its own maximum (all zeros if nothing in the image raises the score).
    """
    single = images.ndim == 3
    batch = images.unsqueeze(0) if single else images
    layer = target_layer if target_layer is not None else default_target_layer(model)
    device = next(model.parameters()).device
    caught: dict[str, torch.Tensor] = {}

    def keep_features(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        caught["features"] = output

    handle = layer.register_forward_hook(keep_features)
    with eval_mode(model):
        try:
            with torch.enable_grad():
                # The input asks for gradients so the features do even when the weights are frozen.
                x = batch.to(device).detach().requires_grad_(True)
                logits = model(x)
                if class_index is None:
                    targets = logits.argmax(dim=1)
                else:
                    targets = torch.as_tensor(class_index, device=device).expand(len(batch))
                score = logits.gather(1, targets.view(-1, 1)).sum()  # images do not mix: sum is fine
                # Only d(score)/d(features): much cheaper than backward() through every weight.
                (gradient,) = torch.autograd.grad(score, caught["features"])
        finally:
            handle.remove()
    features = caught["features"].detach()
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # B x C x 1 x 1: step 1
    cam = F.relu((weights * features).sum(dim=1, keepdim=True))  # B x 1 x h x w: step 2
    cam = F.interpolate(cam, size=batch.shape[-2:], mode="bilinear", align_corners=False)
    cam = cam[:, 0]
    peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
    result = (cam / peak).float().cpu().numpy()  # step 3
    return result[0] if single else result


def cam_mass(cam: Any, region: Any) -> float:
    """Fraction of the heat map's total inside ``region``, in ``[0, 1]``.

    Args:
        cam: ``H x W`` non-negative map, e.g. from :func:`grad_cam`.
        region: ``H x W`` bools (e.g. the object's mask, or the left half of a composite).

    Returns:
        ``sum(cam[region]) / sum(cam)``; 0.0 for an all-zero map.
    """
    cam = np.asarray(cam, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if cam.shape != region.shape:
        raise ValueError(f"cam {cam.shape} and region {region.shape} differ in size")
    total = cam.sum()
    return float(cam[region].sum() / total) if total > 0 else 0.0


def overlay_cam(image: np.ndarray, cam: Any, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a heat map over an RGB image for display.

    Args:
        image: ``H x W x 3`` ``uint8`` RGB (the image the CAM was computed on, same size).
        cam: ``H x W`` in ``[0, 1]``.
        alpha: opacity of the colours (0 = image only).
        cmap: a matplotlib colour map name (red = high).

    Returns:
        A new ``H x W x 3`` ``uint8`` array.
    """
    cam = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0)
    if image.shape[:2] != cam.shape:
        raise ValueError(f"image {image.shape[:2]} and cam {cam.shape} differ in size")
    colours = matplotlib.colormaps[cmap](cam)[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
