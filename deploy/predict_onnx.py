"""Run an exported ONNX model (classifier, detector, segmenter) on one image file: onnxruntime, numpy, pillow.

Usage::

    python predict_onnx.py IMAGE MODEL.onnx [--top 3] [--score 0.5] [--mask-out MASK.png] [--json]

    pip install onnxruntime numpy pillow      # all this file needs: no torch, no cvhelpers

The model file says how to feed it: ``cvhelpers.export.export_onnx`` stores the facts in the
ONNX file's ``metadata_props`` (JSON strings), which ONNX Runtime reads back as
``session.get_modelmeta().custom_metadata_map``:

====================  =========================================================
``input_name``        the graph input, e.g. ``"image"``
``input_shape``       ``[C, H, W]`` of one image, e.g. ``[1, 28, 28]``
``color_mode``        ``"L"`` (grey, 1 channel) or ``"RGB"`` (3 channels, that order)
``resize``            ``"stretch"`` (to H x W), ``"shorter_side_crop"`` (+ ``crop_pct``) or
                      ``"letterbox"`` (longer side to the size, centred on grey 114 padding)
``mean``, ``std``     per-channel normalisation of pixels scaled to [0, 1]
``class_names``       one name per output logit (segmentation: per output channel,
                      background first; detection: the object classes, labels 0-based)
``task``              ``"classification"`` (top classes), ``"detection"`` (boxes, scores,
                      labels, mapped back to the image's own pixels), ``"segmentation"``
                      (a class-id mask at the image's own size, and each class's pixel share)
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
  normalised with ``mean``/``std``, laid out ``1 x C x H x W`` float32. A letterboxed
  image is scaled so its longer side fits, centred, and padded with grey 114 (the same
  arithmetic as ``cvhelpers.data.owndata.letterbox``); boxes and masks are mapped back
  through that scale and padding.
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
LETTERBOX_FILL = 114
TASKS = ("classification", "detection", "segmentation")


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
    if meta.get("task", "classification") not in TASKS:
        raise InputError(f"{path}: task {meta['task']!r} in the metadata; this recipe runs {TASKS}")
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


def letterbox_image(image: Image.Image, width: int, height: int) -> tuple[Image.Image, float, tuple[int, int]]:
    """Scale ``image`` so it fits ``width x height`` with its aspect ratio kept, centred on grey.

    Returns ``(image, scale, (pad_x, pad_y))``: original pixel ``(x, y)`` lands at
    ``(x * scale + pad_x, y * scale + pad_y)``.
    """
    scale = min(width / image.width, height / image.height)
    new_w, new_h = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
    fill = LETTERBOX_FILL if image.mode == "L" else (LETTERBOX_FILL,) * 3
    canvas = Image.new(image.mode, (width, height), fill)
    canvas.paste(image.resize((new_w, new_h), Image.Resampling.BILINEAR), (pad_x, pad_y))
    return canvas, scale, (pad_x, pad_y)


def prepare_input(image: Image.Image | np.ndarray, meta: dict[str, Any],
                  channel_order: str = "RGB") -> tuple[np.ndarray, dict[str, Any]]:
    """:func:`preprocess`, and how the image was moved: ``{"size": (W, H), "scale", "pad"}``
    (``scale``/``pad`` only for ``resize="letterbox"``)."""
    if not isinstance(image, Image.Image):
        image = array_to_image(image, channel_order)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")  # show transparent pixels on white, as a viewer does
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE + (255,)), rgba)
    channels, height, width = meta["input_shape"]
    image = image.convert(meta["color_mode"])  # L -> RGB repeats grey; RGB -> L uses luma
    moved: dict[str, Any] = {"size": image.size}
    resize = meta.get("resize", "stretch")
    if resize == "shorter_side_crop":
        scale = min(height, width) / float(meta.get("crop_pct", 1.0)) / min(image.size)
        size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    elif resize == "letterbox":
        image, moved["scale"], moved["pad"] = letterbox_image(image, width, height)
    elif image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = pixels.reshape(height, width, channels)
    mean = np.asarray(meta["mean"], dtype=np.float32)
    std = np.asarray(meta["std"], dtype=np.float32)
    pixels = (pixels - mean) / std
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None]), moved


def preprocess(image: Image.Image | np.ndarray, meta: dict[str, Any],
               channel_order: str = "RGB") -> np.ndarray:
    """One image (PIL or uint8 array) -> the ``1 x C x H x W`` float32 array the model takes."""
    return prepare_input(image, meta, channel_order)[0]


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
    _check_task(meta, "classification")
    x = preprocess(image, meta, channel_order)
    check_model_input(x, meta)
    logits = session.run(None, {meta["input_name"]: x})[0][0]
    probabilities = softmax(logits.astype(np.float64))
    names = meta["class_names"]
    order = np.argsort(-probabilities)[:top]
    return [{"index": int(i), "class": names[i], "probability": float(probabilities[i])} for i in order]


def _check_task(meta: dict[str, Any], task: str) -> None:
    if meta.get("task", "classification") != task:
        raise InputError(f"a {meta.get('task', 'classification')} model; this function runs a {task} model")


def predict_detections(session: ort.InferenceSession, meta: dict[str, Any], image: Image.Image | np.ndarray,
                       score: float = 0.5, channel_order: str = "RGB") -> list[dict[str, Any]]:
    """A detector's objects scoring at least ``score``: ``[{"class", "index", "score", "box"}]``,
    best first; ``box`` is ``[x1, y1, x2, y2]`` in the image's own pixels."""
    _check_task(meta, "detection")
    x, moved = prepare_input(image, meta, channel_order)
    check_model_input(x, meta)
    boxes, scores, labels = session.run(None, {meta["input_name"]: x})[:3]
    if "scale" in moved:
        pad = np.array([*moved["pad"], *moved["pad"]], np.float32)
        boxes = (boxes - pad) / moved["scale"]
    else:  # stretched: each axis scaled on its own
        _, height, width = meta["input_shape"]
        boxes = boxes * np.array([moved["size"][0] / width, moved["size"][1] / height] * 2, np.float32)
    boxes = np.clip(boxes, 0, [*moved["size"], *moved["size"]])
    names = meta["class_names"]
    keep = [i for i in np.argsort(-scores) if scores[i] >= score]
    return [{"index": int(labels[i]), "class": names[int(labels[i])], "score": float(scores[i]),
             "box": [round(float(v), 1) for v in boxes[i]]} for i in keep]


def predict_segmentation(session: ort.InferenceSession, meta: dict[str, Any], image: Image.Image | np.ndarray,
                         channel_order: str = "RGB") -> tuple[np.ndarray, dict[str, float]]:
    """A segmenter's class-id mask at the image's own size (``uint8 H x W``, 0 = background) and
    each class's share of the pixels (classes that occur)."""
    _check_task(meta, "segmentation")
    x, moved = prepare_input(image, meta, channel_order)
    check_model_input(x, meta)
    logits = session.run(None, {meta["input_name"]: x})[0][0]
    mask = logits.argmax(0).astype(np.uint8)
    width, height = moved["size"]
    if "scale" in moved:  # cut the padding away before scaling back
        pad_x, pad_y = moved["pad"]
        new_w, new_h = max(1, round(width * moved["scale"])), max(1, round(height * moved["scale"]))
        mask = mask[pad_y:pad_y + new_h, pad_x:pad_x + new_w]
    mask = np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
    names = list(meta["class_names"])
    if len(names) == logits.shape[0] - 1:
        names = ["background", *names]
    values, counts = np.unique(mask, return_counts=True)
    shares = {names[v] if v < len(names) else str(v): float(c) / mask.size for v, c in zip(values, counts)}
    return mask, dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="image file (PNG, JPEG, ...)")
    parser.add_argument("model", help="ONNX model exported with its metadata")
    parser.add_argument("--top", type=int, default=3, help="classification: how many classes to print")
    parser.add_argument("--score", type=float, default=0.5, help="detection: the lowest score shown")
    parser.add_argument("--mask-out", help="segmentation: write the class-id mask to this PNG")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    try:
        session, meta = load_model(args.model)
        image = read_image(args.image)
        task = meta.get("task", "classification")
        if task == "detection":
            found = predict_detections(session, meta, image, score=args.score)
            result: dict[str, Any] = {"objects": found}
            lines = [f"{o['score']:6.2f}  {o['class']:<16} box {o['box']}" for o in found] \
                or [f"no object scores {args.score} or more"]
        elif task == "segmentation":
            mask, shares = predict_segmentation(session, meta, image)
            result = {"pixel_share": shares, "mask_size": [mask.shape[1], mask.shape[0]]}
            if args.mask_out:
                Image.fromarray(mask).save(args.mask_out)
                result["mask"] = args.mask_out
            lines = [f"{share:7.2%}  {name}" for name, share in shares.items()]
        else:
            result = {"top": predict(session, meta, image, top=args.top)}
            lines = [f"{r['probability']:7.2%}  {r['class']}" for r in result["top"]]
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"image": args.image, "model": args.model, "task": task, **result}))
    else:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
