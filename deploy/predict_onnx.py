"""Classify one image file with an exported ONNX classifier, using only onnxruntime, numpy, pillow.

Usage::

    python predict_onnx.py IMAGE MODEL.onnx [--top 3] [--json]

    pip install onnxruntime numpy pillow      # all this file needs: no torch, no cvhelpers

The model file says how to feed it: ``cvhelpers.export.export_onnx`` stores the facts in the
ONNX file's ``metadata_props`` (JSON strings), which ONNX Runtime reads back as
``session.get_modelmeta().custom_metadata_map``:

====================  =========================================================
``input_name``        the graph input, e.g. ``"image"``
``input_shape``       ``[C, H, W]`` of one image, e.g. ``[1, 28, 28]``
``color_mode``        ``"L"`` (grey, 1 channel) or ``"RGB"`` (3 channels, that order)
``resize``            ``"stretch"`` (to H x W) or ``"shorter_side_crop"`` (+ ``crop_pct``)
``mean``, ``std``     per-channel normalisation of pixels scaled to [0, 1]
``class_names``       one name per output logit
====================  =========================================================

What happens to an image (each step is a documented conversion, or a clear ``InputError``):

* a file is opened with PIL and turned upright by its EXIF orientation;
* a numpy array must be ``uint8`` ``H x W`` (grey), ``H x W x 1``, ``H x W x 3`` or
  ``H x W x 4`` in 0..255. Float arrays, channels-first ``3 x H x W`` arrays and batches
  (4-D) are refused with a message saying how to fix them. OpenCV arrays are BGR: pass
  ``channel_order="BGR"`` to :func:`preprocess`/:func:`predict` and they are flipped to RGB;
* transparency is composited on white; a grey image given to an RGB model is repeated on the
  three channels; a colour image given to a grey model is converted with PIL's luma formula
  (``L = 0.299 R + 0.587 G + 0.114 B``);
* resized with bilinear filtering (bicubic for ``shorter_side_crop``), scaled to [0, 1],
  normalised with ``mean``/``std``, laid out ``1 x C x H x W`` float32.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps, UnidentifiedImageError

REQUIRED_KEYS = ("input_name", "input_shape", "color_mode", "mean", "std", "class_names")
WHITE = (255, 255, 255)


class InputError(ValueError):
    """The image or the model does not fit; the message says what is wrong and what to do."""


def load_model(path: str | Path, threads: int | None = None) -> tuple[ort.InferenceSession, dict[str, Any]]:
    """Open an ONNX classifier and decode its metadata (see the module docstring).

    Raises:
        InputError: the file is missing or lacks the metadata this recipe needs.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    missing = [key for key in REQUIRED_KEYS if key not in props]
    if missing:
        raise InputError(f"{path}: the model's metadata lacks {missing}; export it with "
                         "cvhelpers.export.export_onnx (or add these metadata_props yourself)")
    meta = {}
    for key, value in props.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
    if meta.get("task", "classification") != "classification":
        raise InputError(f"{path}: a {meta['task']} model; this recipe runs classifiers only")
    return session, meta


def read_image(path: str | Path) -> Image.Image:
    """Open an image file with PIL, upright (EXIF orientation applied)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            image.load()
            return ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{path}: not an image PIL can read ({err})") from err


def array_to_image(array: np.ndarray, channel_order: str = "RGB") -> Image.Image:
    """A ``uint8`` ``H x W [x 1|3|4]`` array as a PIL image (BGR/BGRA flipped to RGB/RGBA)."""
    if not isinstance(array, np.ndarray):
        raise InputError(f"expected a PIL image or a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        hint = (" Floats in [0, 1]? Use (array * 255).round().astype(np.uint8)."
                if np.issubdtype(array.dtype, np.floating) else "")
        raise InputError(f"image array must be uint8 in 0..255, got dtype {array.dtype}.{hint}")
    if array.ndim == 4:
        raise InputError(f"got a batch of shape {array.shape}; pass one H x W x C image at a time")
    if array.ndim == 3 and array.shape[2] not in (1, 3, 4):
        raise InputError(f"image array of shape {array.shape} is not H x W x C. Channels-first "
                         "(C x H x W)? Pass array.transpose(1, 2, 0). A batch of grey images? "
                         "Pass one at a time.")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InputError(f"image array must be H x W, H x W x 1, H x W x 3 or H x W x 4; "
                         f"got shape {array.shape}")
    if channel_order not in ("RGB", "BGR"):
        raise InputError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    if array.ndim == 3 and channel_order == "BGR":
        array = array[:, :, [2, 1, 0, 3][: array.shape[2]]]  # BGR(A) -> RGB(A)
    return Image.fromarray(np.ascontiguousarray(array))


def preprocess(image: Image.Image | np.ndarray, meta: dict[str, Any],
               channel_order: str = "RGB") -> np.ndarray:
    """One image (PIL or uint8 array) -> the ``1 x C x H x W`` float32 array the model takes."""
    if not isinstance(image, Image.Image):
        image = array_to_image(image, channel_order)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")  # show transparent pixels on white, as a viewer does
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE + (255,)), rgba)
    channels, height, width = meta["input_shape"]
    image = image.convert(meta["color_mode"])  # L -> RGB repeats grey; RGB -> L uses luma
    if meta.get("resize", "stretch") == "shorter_side_crop":
        scale = min(height, width) / float(meta.get("crop_pct", 1.0)) / min(image.size)
        size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    elif image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = pixels.reshape(height, width, channels)
    mean = np.asarray(meta["mean"], dtype=np.float32)
    std = np.asarray(meta["std"], dtype=np.float32)
    pixels = (pixels - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])


def check_model_input(x: np.ndarray, meta: dict[str, Any]) -> None:
    """Refuse an already-preprocessed array that does not fit the model, with a clear message."""
    expected = tuple(meta["input_shape"])
    if not isinstance(x, np.ndarray) or x.dtype != np.float32:
        kind = getattr(x, "dtype", type(x).__name__)
        raise InputError(f"model input must be a float32 numpy array, got {kind}; "
                         "use preprocess() on the image, or x.astype(np.float32)")
    if x.ndim != 4 or tuple(x.shape[1:]) != expected:
        hint = ""
        if x.ndim == 4 and tuple(x.shape[1:]) == (expected[1], expected[2], expected[0]):
            hint = " It looks channels-last (N x H x W x C): x.transpose(0, 3, 1, 2)."
        elif x.ndim == 3 and tuple(x.shape) == expected:
            hint = " Add the batch dimension: x[None]."
        raise InputError(f"model input must be N x {expected[0]} x {expected[1]} x {expected[2]} "
                         f"(N x C x H x W), got {tuple(x.shape)}.{hint}")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Probabilities over the last axis (numerically stable)."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def predict(session: ort.InferenceSession, meta: dict[str, Any], image: Image.Image | np.ndarray,
            top: int = 5, channel_order: str = "RGB") -> list[dict[str, Any]]:
    """The ``top`` classes of one image: ``[{"index", "class", "probability"}, ...]``, best first."""
    x = preprocess(image, meta, channel_order)
    check_model_input(x, meta)
    logits = session.run(None, {meta["input_name"]: x})[0][0]
    probabilities = softmax(logits.astype(np.float64))
    names = meta["class_names"]
    order = np.argsort(-probabilities)[:top]
    return [{"index": int(i), "class": names[i], "probability": float(probabilities[i])} for i in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="image file (PNG, JPEG, ...)")
    parser.add_argument("model", help="ONNX classifier exported with its metadata")
    parser.add_argument("--top", type=int, default=3, help="how many classes to print")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    try:
        session, meta = load_model(args.model)
        results = predict(session, meta, read_image(args.image), top=args.top)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"image": args.image, "model": args.model, "top": results}))
    else:
        for r in results:
            print(f"{r['probability']:7.2%}  {r['class']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
