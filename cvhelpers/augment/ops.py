"""Augmentation steps the presets need beyond the libraries' own: strict albumentations
construction (a wrong or outdated argument raises) and two torchvision v2 steps that
torchvision does not have (motion blur, coarse dropout).

albumentations 2.x only *warns* about arguments it does not know and then uses its defaults, so
an old recipe runs but augments differently. :func:`albu` builds every albumentations transform
of the course with ``strict=True`` and turns construction warnings into errors.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = ["OLD_ARGUMENTS", "albu", "RandomMotionBlur", "CoarseDropout"]


# ---------------------------------------------------------------------- strict albumentations
#: Old (1.x) spellings that albumentations 2.0.8 rejects or ignores, and the current form.
OLD_ARGUMENTS: dict[str, str] = {
    "Cutout": "removed: use CoarseDropout(num_holes_range=, hole_height_range=, hole_width_range=)",
    "ShiftScaleRotate": "deprecated: use Affine(translate_percent=, scale=, rotate=)",
    "var_limit": "GaussNoise(std_range=(a, b)): std as a fraction of 255, e.g. var 10..50 -> "
                 "std_range=(sqrt(10)/255, sqrt(50)/255) = (0.012, 0.028)",
    "max_holes": "CoarseDropout(num_holes_range=(min, max))",
    "max_height": "CoarseDropout(hole_height_range=(min, max)) in pixels or fractions",
    "max_width": "CoarseDropout(hole_width_range=(min, max)) in pixels or fractions",
    "value": "fill= (and fill_mask= for masks)",
    "mask_value": "fill_mask=",
    "quality_lower": "ImageCompression(quality_range=(low, high))",
    "scale_min": "Downscale(scale_range=(min, max))",
    "height": "size=(height, width) on RandomResizedCrop / RandomSizedCrop",
    "width": "size=(height, width) on RandomResizedCrop / RandomSizedCrop",
}


def albu(name: str, **kwargs: Any) -> Any:
    """Build the albumentations transform ``name`` so that a wrong argument raises.

    albumentations 2.x warns ``Argument(s) 'x' are not valid for transform T`` and carries on
    with its defaults; ``strict=True`` (an albumentations 2.x option) makes that a
    ``ValueError``, and any other warning while building (e.g. a deprecated transform) is
    raised as an error too. The message names the current spelling when one is known.

    >>> albu("GaussNoise", std_range=(0.02, 0.06), p=0.2).std_range
    (0.02, 0.06)

    Raises:
        ValueError: unknown, outdated or invalid arguments, or a removed/deprecated transform.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no PyPI request at import
    import albumentations as A

    transform_class = getattr(A, name, None) or _course_transforms().get(name)
    if transform_class is None:
        raise ValueError(f"albumentations {A.__version__} has no transform {name!r}"
                         + (f" ({OLD_ARGUMENTS[name]})" if name in OLD_ARGUMENTS else ""))
    # Transforms validated by a pydantic InitSchema (nearly all) take strict=; the few others
    # are plain Python classes, which reject unknown keywords with a TypeError anyway.
    strict = {"strict": True} if hasattr(transform_class, "InitSchema") else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return transform_class(**kwargs, **strict)
    except (ValueError, TypeError, UserWarning) as err:
        hints = [f"{key}: {OLD_ARGUMENTS[key]}" for key in [name, *kwargs] if key in OLD_ARGUMENTS]
        hint = f" Current spelling -> {'; '.join(hints)}" if hints else ""
        raise ValueError(f"albumentations {A.__version__}, {name}: {err}.{hint}") from err


@functools.cache
def _course_transforms() -> dict[str, type]:
    """albumentations transforms the course adds (built by :func:`albu` like the library's own)."""
    import albumentations as A

    class CoarseDropoutKeepBoxes(A.CoarseDropout):
        """``CoarseDropout`` that leaves boxes as they are, like the torchvision step below.

        albumentations 2.x shrinks each box to the largest rectangle the holes leave visible
        (and drops a box a hole covers whole). The object's instance mask keeps its full extent
        (``fill_mask=None``), so a shrunk box no longer encloses its mask; measured here, one
        object in ~1,600 ended up to 13 px outside its box. A hole hides part of an object; it
        does not move the object's edges, so the boxes stay.
        """

        def apply_to_bboxes(self, bboxes: Any, holes: Any, **params: Any) -> Any:
            return bboxes

    return {"CoarseDropoutKeepBoxes": CoarseDropoutKeepBoxes}


# -------------------------------------------------------- two steps torchvision does not have
def _is_image(x: Any) -> bool:
    # Only image tensors are blurred or erased (put these steps after v2.ToImage()); boxes and
    # masks, which are tensor subclasses too, pass through.
    return isinstance(x, tv_tensors.Image) or type(x) is torch.Tensor


class RandomMotionBlur(v2.Transform):
    """Blur along a random straight line, like a shaking camera (albumentations' MotionBlur).

    Args:
        max_kernel: largest kernel side (odd, >= 3); each call draws an odd side in
            ``3..max_kernel`` and an angle in ``[0, 180)`` degrees.
    """

    _transformed_types = (_is_image,)

    def __init__(self, max_kernel: int = 7) -> None:
        super().__init__()
        if max_kernel < 3 or max_kernel % 2 == 0:
            raise ValueError(f"max_kernel must be odd and >= 3, got {max_kernel}")
        self.max_kernel = max_kernel

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        side = 2 * int(torch.randint(1, self.max_kernel // 2 + 1, ())) + 1
        angle = float(torch.rand(())) * math.pi
        centre = (side - 1) / 2
        steps = torch.linspace(-centre, centre, 4 * side)
        kernel = torch.zeros(side, side)
        kernel[(centre + steps * math.sin(angle)).round().long(),
               (centre + steps * math.cos(angle)).round().long()] = 1.0
        return {"kernel": kernel / kernel.sum()}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        image = inpt.as_subclass(torch.Tensor)
        kernel = params["kernel"]
        pad = kernel.shape[0] // 2
        flat = F.pad(image.reshape(-1, 1, *image.shape[-2:]).float(), (pad,) * 4, mode="replicate")
        blurred = F.conv2d(flat, kernel[None, None]).reshape(image.shape)
        if not image.is_floating_point():
            blurred = blurred.round().clamp(0, 255)
        blurred = blurred.to(image.dtype)
        if isinstance(inpt, tv_tensors.Image):
            return tv_tensors.wrap(blurred, like=inpt)
        return blurred


class CoarseDropout(v2.Transform):
    """Black out a few random rectangles (albumentations' CoarseDropout; boxes, labels and
    masks are left as they are).

    Args:
        holes: inclusive range of the number of rectangles.
        size: range of each rectangle's height and width as a fraction of the image's.
    """

    _transformed_types = (_is_image,)

    def __init__(self, holes: tuple[int, int] = (1, 3), size: tuple[float, float] = (0.05, 0.15)
                 ) -> None:
        super().__init__()
        self.holes, self.size = holes, size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        rects = []
        for _ in range(int(torch.randint(self.holes[0], self.holes[1] + 1, ()))):
            h, w = (max(1, round(side * float(torch.empty(()).uniform_(*self.size))))
                    for side in (height, width))
            top = int(torch.randint(0, height - h + 1, ()))
            left = int(torch.randint(0, width - w + 1, ()))
            rects.append((top, left, h, w))
        return {"rects": rects}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = inpt.clone()
        for top, left, h, w in params["rects"]:
            out[..., top:top + h, left:left + w] = 0
        return out
