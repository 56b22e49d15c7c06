"""Ultralytics YOLO, offline and contained: dataset in, per-image predictions out.

Everything here keeps ultralytics inside one output folder (``project=``) and off the network
(call :func:`cvhelpers.env.setup` first, *before* anything imports ultralytics). It works for
detection (``yolov8n.yaml``) and instance segmentation (``yolov8n-seg.yaml``, ``task="segment"``).

Predictions come back in the course's per-image form, the one
:func:`cvhelpers.detection.coco_eval.evaluate_coco` scores: a dict with ``boxes`` (``float32`` ``N x 4``
pixel ``xyxy``), ``scores`` (``float32`` ``N``), ``labels`` (``int64`` ``N``, 0-based) and, for a
segmentation model, ``masks`` (``bool`` ``N x H x W`` at the input image's size).

Example:
    >>> data_yaml = prepare_yolo_dataset({"train": train, "val": val}, out / "yolo", CLASS_NAMES)  # doctest: +SKIP
    >>> run = train_yolo(data_yaml, out / "runs", epochs=49, imgsz=160, device="auto")            # doctest: +SKIP
    >>> predictions = predict_yolo(run.model, [s.image for s in test])                             # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvhelpers.data.coco import AnnotatedImage
from cvhelpers.data.validate import PathLike
from cvhelpers.data.yolo import read_yolo, write_yolo

#: Model files by task: built from their yaml (no weights can be downloaded offline).
MODEL_YAML = {"detect": "yolov8n.yaml", "segment": "yolov8n-seg.yaml"}


def yolo_device(device: Any = "cpu") -> str:
    """The ultralytics ``device=`` string for a course device.

    ``"auto"`` picks CUDA, then Apple MPS, then the CPU (:func:`cvhelpers.env.pick_device`); a
    ``torch.device`` or a torch-style string (``"cuda"``, ``"cuda:1"``) becomes ultralytics'
    spelling (``"0"``, ``"1"``); ultralytics' own strings (``"cpu"``, ``"0"``, ``"0,1"``,
    ``"mps"``) pass unchanged.

    >>> yolo_device("cpu"), yolo_device("cuda"), yolo_device("cuda:1"), yolo_device("0")
    ('cpu', '0', '1', '0')
    """
    if str(device) == "auto":
        from cvhelpers.env import pick_device

        device = pick_device("auto")
    text = str(device)
    if text == "cuda":
        return "0"
    if text.startswith("cuda:"):
        return text[len("cuda:"):]
    return text


def prepare_yolo_dataset(
    splits: Mapping[str, Sequence[AnnotatedImage]],
    root: PathLike,
    class_names: Sequence[str],
    task: str = "detect",
) -> Path:
    """Write scenes as an ultralytics dataset, then read every split back with checks.

    Args:
        splits: ``{"train": [...], "val": [...], "test": [...]}`` of ``Scene``/``AnnotatedImage``.
        root: dataset folder (inside the notebook's output folder).
        class_names: name of each class id.
        task: ``"detect"`` writes box rows, ``"segment"`` polygon rows (from ``masks``).

    Returns:
        The ``data.yaml`` path to pass to :func:`train_yolo`.
    """
    if task not in MODEL_YAML:
        raise ValueError(f"task must be one of {sorted(MODEL_YAML)}, got {task!r}")
    data_yaml = write_yolo(splits, root, class_names, segments=task == "segment")
    check_yolo_dataset(data_yaml, tuple(splits))
    return data_yaml


def check_yolo_dataset(data_yaml: PathLike, splits: Sequence[str] = ("train", "val")) -> dict[str, int]:
    """Read each split with :func:`cvhelpers.data.yolo.read_yolo`'s checks, before any training.

    ultralytics itself *skips* a bad label file with a warning and trains on the rest; a course
    would rather stop and say which file and line is wrong.

    Returns:
        ``{split: number of images}``.

    Raises:
        DatasetError: ``"<file>:<line>: ..."`` for an out-of-range class id, a box outside the
            image, a malformed row; ``"<file>: ..."`` for a missing or unreadable image.
    """
    return {split: len(read_yolo(data_yaml, split)[0]) for split in splits}


@dataclass
class YoloRun:
    """What :func:`train_yolo` returns.

    Attributes:
        model: the trained ``ultralytics.YOLO`` (best weights loaded).
        weights: path of ``best.pt`` (``last.pt`` when validation was off).
        save_dir: ultralytics' run folder (``results.csv``, plots).
        seconds: wall time of ``train()``.
        epochs: epochs that ran.
        history: per-epoch columns of ``results.csv`` (``{"metrics/mAP50(B)": [...], ...}``).
    """

    model: Any
    weights: Path
    save_dir: Path
    seconds: float
    epochs: int
    history: dict[str, list[float]] = field(default_factory=dict)


def train_yolo(
    data_yaml: PathLike,
    project: PathLike,
    model: str = "yolov8n.yaml",
    epochs: int = 30,
    imgsz: int = 160,
    batch: int = 32,
    time_budget_s: float | None = None,
    name: str = "train",
    seed: int = 0,
    device: Any = "cpu",
    workers: int = 2,
    check: bool = True,
    **overrides: Any,
) -> YoloRun:
    """Train an ultralytics YOLO offline, writing only under ``project``.

    Args:
        data_yaml: dataset YAML (from :func:`prepare_yolo_dataset`).
        project: folder for ultralytics' run folders (``project / name``).
        model: a model yaml (from scratch: ``"yolov8n.yaml"``, ``"yolov8n-seg.yaml"``) or the
            path of a local ``.pt``. A bare ``*.pt`` name that is not a file would make
            ultralytics try GitHub, so it is refused.
        epochs: epochs to train (the learning-rate schedule and the last ``close_mosaic``
            epochs span them): fixed work, the same run on any machine.
        imgsz: training and validation image size (the scenes are 160 px: native size).
        batch: images per step.
        time_budget_s: optional; ``None`` (default) trains ``epochs``. If set, ultralytics'
            ``time=`` (hours), which overrides ``epochs``: it re-plans the number of epochs after
            each one so that training, schedule included, ends within the budget (a faster
            machine then trains more).
        name: run folder name (an existing one is overwritten).
        seed, workers: passed on.
        device: ``"cpu"``, ``"auto"``, ``"cuda"``, ``"0"`` (first GPU), a ``torch.device``...
            (see :func:`yolo_device`); mixed precision (ultralytics' ``amp``) off on the CPU.
        check: run :func:`check_yolo_dataset` on train and val first.
        **overrides: any other ultralytics train argument (``lr0``, ``mosaic``,
            ``close_mosaic``, ``cos_lr``...).

    Returns:
        A :class:`YoloRun`.
    """
    from ultralytics import YOLO

    from cvhelpers.env import configure_ultralytics

    configure_ultralytics()
    if model.endswith(".pt") and not Path(model).is_file():
        raise FileNotFoundError(f"{model}: no such weights file (offline, ultralytics cannot download it)")
    if check:
        check_yolo_dataset(data_yaml)
    project = Path(project).resolve()
    device = yolo_device(device)
    yolo = YOLO(model)
    args: dict[str, Any] = dict(
        data=str(data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, device=device, workers=workers,
        seed=seed, project=str(project), name=name, exist_ok=True, amp=device != "cpu",
        verbose=False, plots=False,
    )
    if time_budget_s is not None:
        args["time"] = time_budget_s / 3600
    args.update(overrides)
    start = time.perf_counter()
    yolo.train(**args)
    seconds = time.perf_counter() - start
    save_dir = Path(yolo.trainer.save_dir)
    weights = save_dir / "weights" / "best.pt"
    if not weights.is_file():
        weights = save_dir / "weights" / "last.pt"
    history = read_results_csv(save_dir / "results.csv")
    trained = YOLO(str(weights), task=yolo.task)
    configure_ultralytics()  # loading a model may lower torch's threads again
    return YoloRun(trained, weights, save_dir, seconds, len(next(iter(history.values()), [])), history)


def read_results_csv(path: PathLike) -> dict[str, list[float]]:
    """ultralytics' ``results.csv`` as ``{column: [value per epoch]}`` (``{}`` if missing)."""
    import csv

    path = Path(path)
    if not path.is_file():
        return {}
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    columns = [c.strip() for c in rows[0]] if rows else []
    return {c: [float(r[k]) for r in rows] for c, k in zip(columns, rows[0]) if c} if rows else {}


def predict_yolo(
    model: Any,
    images: Sequence[np.ndarray],
    imgsz: int = 160,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 100,
    batch: int = 16,
    device: Any = "cpu",
) -> list[dict[str, np.ndarray]]:
    """Run a YOLO on RGB images and return the course's per-image prediction dicts.

    Args:
        model: an ``ultralytics.YOLO`` (detect or segment).
        images: ``H x W x 3`` ``uint8`` **RGB** arrays (ultralytics takes numpy arrays as BGR:
            they are flipped here).
        imgsz: inference size (as trained).
        conf: drop boxes below this score. 0.001 is what mAP needs (the whole
            precision-recall curve); an application picks a higher one, e.g. 0.25.
        iou: NMS IoU threshold: a box overlapping a higher-scored one of the same class by more
            is dropped.
        max_det: boxes kept per image.
        device: as for :func:`train_yolo` (``"auto"``, ``"cpu"``, ``"0"``, a ``torch.device``).

    Returns:
        One dict per image: ``boxes`` ``float32`` ``N x 4`` xyxy pixels, ``scores`` ``float32``,
        ``labels`` ``int64`` 0-based, and ``masks`` ``bool`` ``N x H x W`` for a seg model.
    """
    outputs: list[dict[str, np.ndarray]] = []
    segment = getattr(model, "task", None) == "segment"
    for start in range(0, len(images), batch):
        chunk = [np.ascontiguousarray(image[..., ::-1]) for image in images[start:start + batch]]
        results = model.predict(chunk, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det,
                                device=yolo_device(device), verbose=False, retina_masks=True)
        for image, result in zip(chunk, results):
            outputs.append(_result_to_dict(result, image.shape[:2], segment))
    return outputs


def _result_to_dict(result: Any, shape: tuple[int, int], segment: bool) -> dict[str, np.ndarray]:
    boxes = result.boxes
    prediction = {
        "boxes": boxes.xyxy.cpu().numpy().astype(np.float32).reshape(-1, 4),
        "scores": boxes.conf.cpu().numpy().astype(np.float32).reshape(-1),
        "labels": boxes.cls.cpu().numpy().astype(np.int64).reshape(-1),
    }
    if segment:
        if result.masks is None:
            prediction["masks"] = np.zeros((0, *shape), bool)
        else:
            masks = result.masks.data.cpu().numpy() > 0.5
            if masks.shape[1:] != shape:  # retina_masks gives the input size; guard anyway
                import cv2

                masks = np.stack([cv2.resize(m.astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST)
                                  for m in masks]).astype(bool) if len(masks) else np.zeros((0, *shape), bool)
            prediction["masks"] = masks
    return prediction


@dataclass
class SegHeadOutputs:
    """What a YOLO-seg network computes for one image, before NMS and before any mask exists.

    ``A`` candidate boxes come out, one per grid cell of the three strides (8, 16, 32): at 160 px,
    ``20 * 20 + 10 * 10 + 5 * 5 = 525``.

    Attributes:
        boxes: ``float32`` ``A x 4`` xyxy pixels at the input size (decoded from the head's
            distributions).
        class_scores: ``float32`` ``A x C`` sigmoid scores, one per class (no objectness).
        coefficients: ``float32`` ``A x M`` mask coefficients, one row per candidate box.
        protos: ``float32`` ``M x H/4 x W/4`` prototype masks, shared by every box of the image.
    """

    boxes: np.ndarray
    class_scores: np.ndarray
    coefficients: np.ndarray
    protos: np.ndarray


def yolo_seg_outputs(model: Any, image: np.ndarray) -> SegHeadOutputs:
    """Run an ultralytics YOLO-seg's network on one image and return its head's raw outputs.

    This is the part of ``model.predict`` before post-processing: the candidate boxes, their
    class scores and mask coefficients, and the image's prototypes. NMS, and turning
    coefficients and prototypes into masks, are left to the caller (notebook 07d does both by
    hand and checks them against ultralytics).

    Args:
        model: a trained or untrained ``ultralytics.YOLO`` of task ``"segment"``.
        image: an ``H x W x 3`` ``uint8`` **RGB** array whose sides are multiples of 32 (the
            network's largest stride), e.g. a 160 px scene. Other sizes need a letterbox first,
            as ``model.predict`` does.

    Raises:
        ValueError: the model is not a segmentation model, or the image is not ``uint8``
            ``H x W x 3`` with sides divisible by 32.
    """
    import torch

    if getattr(model, "task", None) != "segment":
        raise ValueError(f"yolo_seg_outputs needs a segmentation model (task 'segment'), got task {getattr(model, 'task', None)!r}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] % 32 or image.shape[1] % 32:
        raise ValueError(f"yolo_seg_outputs needs a uint8 H x W x 3 RGB image with sides divisible by 32, "
                         f"got {image.dtype} {image.shape}")
    network = model.model
    parameter = next(network.parameters())
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(parameter.device, parameter.dtype) / 255
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            (predictions, protos), _ = network(x)  # predictions: 1 x (4 + C + M) x A
    finally:
        network.train(was_training)
    predictions = predictions[0].float().T.cpu().numpy()
    n_masks = protos.shape[1]
    head = network.model[-1]
    if getattr(head, "xyxy", False) or getattr(head, "end2end", False):  # heads set up to emit corners
        boxes = predictions[:, :4].astype(np.float32)
    else:  # centre and size, pixels
        xy, wh = predictions[:, :2], predictions[:, 2:4]
        boxes = np.concatenate([xy - wh / 2, xy + wh / 2], axis=1).astype(np.float32)
    return SegHeadOutputs(boxes=boxes, class_scores=predictions[:, 4:-n_masks].astype(np.float32),
                          coefficients=predictions[:, -n_masks:].astype(np.float32),
                          protos=protos[0].float().cpu().numpy())


def yolo_parameters(model: Any) -> int:
    """Number of parameters of an ``ultralytics.YOLO`` model."""
    return sum(p.numel() for p in model.model.parameters())
