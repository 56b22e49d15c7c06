"""The course's data and backbone in Detectron2: dataset dicts, the Lite0-FPN backbone, a config.

Detectron2 reads a dataset as a list of dicts, one per image, registered by name::

    from detectron2.data import DatasetCatalog, MetadataCatalog       # doctest: +SKIP
    DatasetCatalog.register("scenes_train", lambda: to_detectron2_dicts(train, paths))
    MetadataCatalog.get("scenes_train").set(thing_classes=list(CLASS_NAMES))

(``register_coco_instances`` does the same from a COCO json file.) ``to_detectron2_dicts`` needs
no Detectron2; the rest imports it on first use, through
:func:`cvhelpers.detection.d2compat.import_detectron2` (the course installs v0.6 without its
compiled ops, ``make detectron2``):

- :func:`register_lite0_fpn_backbone` puts the course's EfficientNet-Lite0 + FPN (the same module
  torchvision's detectors use in notebook 05b, ImageNet weights loaded offline) in Detectron2's
  ``BACKBONE_REGISTRY``, as ``build_lite0_fpn_backbone``: "bring your own backbone".
- :func:`lite0_rcnn_config` is a model-zoo config (``Base-RCNN-FPN.yaml``) set to the course's
  torchvision recipe, so the two libraries train the same detector on the same budget.
- :func:`instances_to_detections` turns a predictor's ``Instances`` into the course's
  :class:`~cvhelpers.detection.metrics.Detections` for the course's evaluator.
- :func:`register_split`, :func:`train_detectron2`, :func:`score_predictor` and
  :func:`evaluator_agreement` are the steps notebooks 07b (Faster R-CNN) and 07c (Mask R-CNN)
  share: register a split of the course's COCO files, train a config with ``DefaultTrainer`` and
  predict with ``DefaultPredictor`` on the trained weights, then score the same predictions with
  ``COCOEvaluator`` and the course's two evaluators and compare them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvhelpers.models.downloads import DEFAULT_TIMEOUT_S, fetch

#: Detectron2's ``BoxMode.XYXY_ABS`` (absolute pixel x1, y1, x2, y2), as a plain int.
DETECTRON2_XYXY_ABS = 0


def to_detectron2_dicts(samples: Sequence[Any], image_paths: Sequence[str]) -> list[dict[str, Any]]:
    """Annotated images as Detectron2's standard dataset dicts (no Detectron2 needed).

    Args:
        samples: ``AnnotatedImage``/``Scene`` objects (0-based labels; masks optional).
        image_paths: the file each sample's image is stored in (Detectron2 reads images itself).

    Returns:
        One dict per image: ``file_name``, ``image_id`` (its index), ``height``, ``width``,
        ``annotations``: ``[{"bbox": [x1, y1, x2, y2], "bbox_mode": 0 (BoxMode.XYXY_ABS),
        "category_id": 0-based class, "iscrowd": 0, "segmentation": COCO RLE dict}]``
        (``segmentation`` only when the sample has masks). Register with
        ``DatasetCatalog.register(name, lambda: dicts)``.
    """
    from pycocotools import mask as mask_utils  # optional: the detection extra

    if len(samples) != len(image_paths):
        raise ValueError(f"{len(samples)} samples but {len(image_paths)} image paths")
    records = []
    for index, (sample, path) in enumerate(zip(samples, image_paths)):
        height, width = np.asarray(sample.image).shape[:2]
        annotations = []
        boxes = np.asarray(sample.boxes, np.float64).reshape(-1, 4)
        for k, (box, label) in enumerate(zip(boxes.tolist(), np.asarray(sample.labels).tolist())):
            annotation: dict[str, Any] = {"bbox": box, "bbox_mode": DETECTRON2_XYXY_ABS,
                                          "category_id": int(label), "iscrowd": 0}
            if sample.masks is not None:
                rle = mask_utils.encode(np.asfortranarray(sample.masks[k].astype(np.uint8)))
                annotation["segmentation"] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
            annotations.append(annotation)
        records.append({"file_name": str(path), "image_id": index, "height": int(height),
                        "width": int(width), "annotations": annotations})
    return records


#: Feature names, strides and order of the Lite0-FPN levels in Detectron2 (p3: stride 8).
LITE0_D2_FEATURES = ("p3", "p4", "p5")
BACKBONE_NAME = "build_lite0_fpn_backbone"


def register_lite0_fpn_backbone() -> str:
    """Register the Lite0-FPN backbone in Detectron2's ``BACKBONE_REGISTRY`` (once); returns its name.

    The backbone reads ``cfg.MODEL.LITE0.PRETRAINED`` (ImageNet weights, offline),
    ``TRAINABLE_BLOCKS`` and ``OUT_CHANNELS`` (:func:`cvhelpers.detection.models.lite0_fpn_backbone`)
    and returns ``{"p3", "p4", "p5"}`` at strides 8, 16, 32 with their ``ShapeSpec``s, which is
    all a Detectron2 ``Backbone`` has to provide to the RPN and RoI heads.
    """
    from cvhelpers.detection.d2compat import import_detectron2

    import_detectron2()
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY, Backbone

    from cvhelpers.detection.models import LITE0_STRIDES, lite0_fpn_backbone

    if BACKBONE_NAME in BACKBONE_REGISTRY:
        return BACKBONE_NAME

    class Lite0FPNBackbone(Backbone):  # type: ignore[misc,valid-type]
        """EfficientNet-Lite0 + FPN as a Detectron2 backbone (features p3, p4, p5)."""

        def __init__(self, pretrained: bool, trainable_blocks: int, out_channels: int) -> None:
            super().__init__()
            self.net = lite0_fpn_backbone(pretrained, trainable_blocks, out_channels)
            self._out_features = list(LITE0_D2_FEATURES)
            self._out_feature_strides = dict(zip(LITE0_D2_FEATURES, LITE0_STRIDES))
            self._out_feature_channels = {name: out_channels for name in LITE0_D2_FEATURES}

        @property
        def size_divisibility(self) -> int:
            return max(LITE0_STRIDES)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return dict(zip(LITE0_D2_FEATURES, self.net(x).values()))

        def output_shape(self):  # type: ignore[no-untyped-def]
            return {name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
                    for name in self._out_features}

    def build_lite0_fpn_backbone(cfg, input_shape):  # type: ignore[no-untyped-def]
        lite0 = cfg.MODEL.LITE0
        return Lite0FPNBackbone(bool(lite0.PRETRAINED), int(lite0.TRAINABLE_BLOCKS), int(lite0.OUT_CHANNELS))

    BACKBONE_REGISTRY.register(build_lite0_fpn_backbone)
    return BACKBONE_NAME


def lite0_rcnn_config(num_classes: int, *, mask: bool = False, pretrained: bool = True,
                      min_size: int = 320, anchor_sizes: Sequence[Sequence[float]] | None = None,
                      aspect_ratios: Sequence[float] | None = None, batch: int = 8, lr: float = 0.02,
                      max_iter: int = 475, warmup_iters: int = 50, train: str = "scenes_train",
                      test: str = "scenes_test", output_dir: str = "detectron2", device: str = "cpu",
                      seed: int = 0) -> Any:
    """A Detectron2 config for Faster (or Mask) R-CNN on the Lite0-FPN, set like the course's recipe.

    Starts from the model zoo's ``Base-RCNN-FPN.yaml`` and sets what
    :func:`cvhelpers.detection.models.faster_rcnn_lite0` / ``mask_rcnn_lite0`` and notebook 05b's
    ``fit_detector`` use: input ``min_size`` (the 160 px scenes at 320 px), the same anchors per
    level, 64 sampled RoIs per image, a 512-wide two-layer box head, SGD (momentum 0.9, weight
    decay 1e-4 on every parameter that trains, norms included) at ``lr`` for batch ``batch``, a
    linear warm-up of ``warmup_iters`` then a cosine to 0 at ``max_iter``, gradients clipped to
    norm 10, horizontal flips. ``MODEL.WEIGHTS`` is ``""``: the backbone loads its own ImageNet
    weights offline (a model-zoo config's default is a URL, and ``model_zoo.get(...,
    trained=False)`` would still download one).

    Args:
        num_classes: object classes (Detectron2 counts no background class).
        mask: add the mask head (Mask R-CNN; masks come as COCO RLE, ``INPUT.MASK_FORMAT="bitmask"``).
        pretrained: ImageNet backbone or random initialisation.
        anchor_sizes: sizes per level (p3, p4, p5); every level needs the same number of sizes
            (``StandardRPNHead`` asserts it). ``None``: the course's defaults.
        aspect_ratios: height / width, shared by all levels.
        train, test: registered dataset names.

    Returns:
        A ``CfgNode`` (not frozen).
    """
    from cvhelpers.detection.models import DEFAULT_ANCHOR_SIZES, DEFAULT_ASPECT_RATIOS
    from cvhelpers.models.pretrained import LITE0_MEAN, LITE0_STD

    register_lite0_fpn_backbone()
    from detectron2 import model_zoo
    from detectron2.config import CfgNode, get_cfg

    sizes = [list(map(float, s)) for s in (anchor_sizes or DEFAULT_ANCHOR_SIZES)]
    if len({len(s) for s in sizes}) != 1 or len(sizes) != len(LITE0_D2_FEATURES):
        raise ValueError(f"anchor_sizes {sizes}: need {len(LITE0_D2_FEATURES)} levels with the same number "
                         "of sizes each (Detectron2's StandardRPNHead asserts it)")
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("Base-RCNN-FPN.yaml"))
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASK_ON = mask
    cfg.MODEL.BACKBONE.NAME = BACKBONE_NAME
    cfg.MODEL.LITE0 = CfgNode({"PRETRAINED": pretrained, "TRAINABLE_BLOCKS": 4, "OUT_CHANNELS": 96})
    cfg.MODEL.PIXEL_MEAN = [255 * m for m in LITE0_MEAN]  # Detectron2 feeds 0-255 pixels
    cfg.MODEL.PIXEL_STD = [255 * s for s in LITE0_STD]
    cfg.INPUT.FORMAT = "RGB"
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (min_size,), min_size
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = min_size, min_size
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    features = list(LITE0_D2_FEATURES)
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = sizes
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [list(map(float, aspect_ratios or DEFAULT_ASPECT_RATIOS))]
    cfg.MODEL.RPN.IN_FEATURES = features
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 128
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN, cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 1000, 500
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST, cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 500, 300
    cfg.MODEL.ROI_HEADS.IN_FEATURES = features
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.001
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5
    cfg.TEST.DETECTIONS_PER_IMAGE = 100
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC, cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 2, 512
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 2
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV, cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 2, 96
    cfg.MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO = 2
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (train,), (test,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR = batch, lr
    cfg.SOLVER.MOMENTUM, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.WEIGHT_DECAY_NORM = 0.9, 1e-4, 1e-4
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = max_iter, ()
    cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR = min(warmup_iters, max_iter // 2), 1e-3
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE, cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = "norm", 10.0
    cfg.SOLVER.CHECKPOINT_PERIOD = max_iter + 1  # only model_final.pth
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.SEED = seed
    return cfg


def instances_to_detections(instances: Any) -> Any:
    """A Detectron2 ``Instances`` (predictor output, original image size) as the course's ``Detections``.

    Labels stay 0-based (Detectron2's contiguous ids); masks, when present, become boolean arrays.
    """
    from cvhelpers.detection.metrics import Detections

    instances = instances.to("cpu")
    masks = instances.pred_masks.numpy().astype(bool) if instances.has("pred_masks") else None
    return Detections(boxes=instances.pred_boxes.tensor.numpy().astype(np.float64),
                      scores=instances.scores.numpy().astype(np.float64),
                      labels=instances.pred_classes.numpy().astype(np.int64), masks=masks)


# --- the steps notebooks 07b and 07c share ------------------------------------------------

#: The course's summary keys and ``COCOEvaluator``'s names for them.
D2_SUMMARY_KEYS = {"map50_95": "AP", "map50": "AP50", "map75": "AP75", "map_small": "APs", "map_medium": "APm",
                   "map_large": "APl"}


def register_split(root: str | Path, split: str, limit: int | None, class_names: Sequence[str],
                   out_dir: str | Path, prefix: str = "objects") -> tuple[str, list[Any]]:
    """Register ``root/split`` (the course's COCO layout: ``annotations.json`` + ``images/``) by name.

    Reads the split with :func:`cvhelpers.data.scenes.load_scenes` (every file checked). With a
    ``limit`` below the split's size, the first ``limit`` samples are written as a COCO file in
    ``out_dir`` (images stay where they are) and that file is registered. Registering the same
    name again is a no-op, so a notebook can be re-run in one kernel.

    Returns:
        ``(name, samples)``: the registered name (``f"{prefix}_{split}_{n}"``) and the samples, in
        the order ``DatasetCatalog.get(name)`` gives them.
    """
    from cvhelpers.data.coco import write_coco
    from cvhelpers.data.scenes import load_scenes
    from cvhelpers.detection.d2compat import import_detectron2

    import_detectron2()
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    root = Path(root)
    samples = load_scenes(root, split)
    json_file = root / split / "annotations.json"
    if limit is not None and limit < len(samples):
        samples = samples[:limit]
        json_file = Path(out_dir) / f"{prefix}_{split}_{len(samples)}.json"
        write_coco(samples, json_file, list(class_names), root / split / "images", write_images=False)
    name = f"{prefix}_{split}_{len(samples)}"
    if name not in DatasetCatalog.list():
        register_coco_instances(name, {}, str(json_file), str(root / split / "images"))
    return name, samples


def train_detectron2(cfg: Any, seed: int = 0) -> tuple[Any, float, list[dict[str, Any]]]:
    """Train ``cfg`` with ``DefaultTrainer``; return a ``DefaultPredictor`` on the trained weights,
    the training seconds and the rows of ``metrics.json``.

    ``DefaultPredictor`` builds a fresh model from its config and loads ``cfg.MODEL.WEIGHTS``: left
    at ``""`` it would predict with an untrained head, so the clone it gets points at the
    ``model_final.pth`` just written.
    """
    import json
    import time

    from cvhelpers.detection.d2compat import import_detectron2
    from cvhelpers.env import seed_everything

    import_detectron2()
    from detectron2.engine import DefaultPredictor, DefaultTrainer
    from detectron2.utils.logger import setup_logger

    setup_logger(name="detectron2", abbrev_name="d2")
    seed_everything(seed)
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)  # MODEL.WEIGHTS is "": the backbone's own ImageNet weights
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trained = cfg.clone()
    trained.MODEL.WEIGHTS = str(Path(cfg.OUTPUT_DIR) / "model_final.pth")  # the weights just trained
    with open(Path(cfg.OUTPUT_DIR) / "metrics.json") as handle:
        rows = [json.loads(line) for line in handle]
    return DefaultPredictor(trained), seconds, rows


def score_predictor(predictor: Any, dataset: str, samples: Sequence[Any], class_names: Sequence[str],
                    tasks: Sequence[str] = ("bbox",), output_dir: str | Path | None = None
                    ) -> tuple[list[Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Predict every image of ``dataset`` once and score the same predictions three ways.

    ``samples`` are the course's samples of the registered ``dataset``, in the same order (RGB
    images; the predictor is given BGR, OpenCV's order, as ``DefaultPredictor`` expects).

    Returns:
        ``(detections, detectron2, numpy, bridge)``: the course's ``Detections`` per image;
        ``COCOEvaluator``'s results (percent); the course's NumPy evaluator's summaries; the
        course's pycocotools bridge's; the last three keyed by task (``"bbox"``, ``"segm"``).
    """
    from cvhelpers.detection.coco_eval import evaluate_coco, evaluate_detections

    from detectron2.data import DatasetCatalog
    from detectron2.evaluation import COCOEvaluator

    evaluator = COCOEvaluator(dataset, tasks=tuple(tasks), distributed=False,
                              output_dir=None if output_dir is None else str(output_dir), use_fast_impl=False)
    evaluator.reset()
    records = DatasetCatalog.get(dataset)
    if len(records) != len(samples):
        raise ValueError(f"{dataset}: {len(records)} registered images but {len(samples)} samples given")
    detections = []
    for record, sample in zip(records, samples):
        output = predictor(np.ascontiguousarray(sample.image[:, :, ::-1]))  # RGB -> BGR
        evaluator.process([record], [output])
        detections.append(instances_to_detections(output["instances"]))
    theirs = evaluator.evaluate() or {}
    names = list(class_names)
    numpy_scores = {t: evaluate_detections(detections, samples, iou_type=t, num_classes=len(names)).summary(names)
                    for t in tasks}
    bridge = {t: evaluate_coco(detections, samples, names, iou_type=t) for t in tasks}
    return detections, theirs, numpy_scores, bridge


def evaluator_agreement(detectron2_scores: dict[str, Any], numpy_scores: dict[str, Any], bridge: dict[str, Any],
                        task: str, class_names: Sequence[str]) -> tuple[list[tuple[str, float, float, float]], float]:
    """Rows ``(number, COCOEvaluator, bridge, NumPy)`` of the summary and per-class APs, and the
    largest difference between COCOEvaluator and the course's two (``inf`` when COCOEvaluator
    scored nothing, e.g. no predictions at all)."""
    theirs = detectron2_scores.get(task, {})
    rows, worst = [], 0.0
    for key, d2_key in D2_SUMMARY_KEYS.items():
        d2 = theirs.get(d2_key, float("nan")) / 100  # COCOEvaluator reports percent
        ours, via_bridge = numpy_scores[task][key], bridge[task][key]
        if not np.isnan(d2):
            worst = max(worst, abs(d2 - ours), abs(d2 - via_bridge))
        rows.append((key, d2, via_bridge, ours))
    if f"AP-{class_names[0]}" not in theirs:
        return rows, float("inf")
    for name in class_names:
        d2, ours = theirs[f"AP-{name}"] / 100, numpy_scores[task]["per_class_ap50_95"][name]
        if np.isnan(d2) != np.isnan(ours):  # one scored the class, the other did not
            worst = float("inf")
        elif not np.isnan(d2):
            worst = max(worst, abs(d2 - ours))
        rows.append((f"AP {name}", d2, bridge[task]["per_class_ap50_95"][name], ours))
    return rows, worst


# --- Detectron2's model zoo -----------------------------------------------------------------

#: Where Detectron2's model zoo serves its checkpoints (``model_zoo.get_checkpoint_url``).
DETECTRON2_ZOO_URL = "https://dl.fbaipublicfiles.com/detectron2/"


def _pickle_problem(path: Path) -> str | None:
    """Detectron2's zoo checkpoints are pickles (protocol 2+ starts with byte 0x80)."""
    with open(path, "rb") as handle:
        head = handle.read(1)
    return None if head == b"\x80" else f"{path.name} is not a Detectron2 checkpoint (no pickle header)"


def detectron2_zoo_weights(config_path: str, online: bool | None = None, cache_dir: str | Path | None = None,
                           timeout_s: float = DEFAULT_TIMEOUT_S, progress: bool = True) -> Path:
    """A local copy of the COCO-trained checkpoint of a Detectron2 model-zoo config, downloaded
    when the switch is on: pass it as ``cfg.MODEL.WEIGHTS`` and Detectron2 opens no connection
    (a ``detectron2://`` URL there would download through iopath, with no timeout or switch).

    Args:
        config_path: the zoo config, e.g. ``"COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"``.
        cache_dir: default ``torch.hub.get_dir()/checkpoints/detectron2``.

    Raises:
        WeightsNotCachedError, DownloadError: see :func:`cvhelpers.models.downloads.fetch`.
    """
    from cvhelpers.detection.d2compat import import_detectron2

    import_detectron2()
    from detectron2 import model_zoo

    url = model_zoo.get_checkpoint_url(config_path)
    if not url.startswith(DETECTRON2_ZOO_URL):
        raise ValueError(f"{config_path}: unexpected checkpoint URL {url}")
    relative = url[len(DETECTRON2_ZOO_URL):]
    root = Path(cache_dir) if cache_dir is not None else Path(torch.hub.get_dir()) / "checkpoints" / "detectron2"
    path = root / relative
    hint = f"put {Path(relative).name} ({url}) at {path} and set cfg.MODEL.WEIGHTS to it"
    return fetch(url, path, what=f"Detectron2 model zoo {config_path}", offline_hint=hint, online_switch=online,
                 check=_pickle_problem, timeout_s=timeout_s, progress=progress)
