"""Detectron2's "standard dataset dicts" from the course's annotated images, without Detectron2.

Detectron2 reads a dataset as a list of dicts, one per image, registered by name::

    from detectron2.data import DatasetCatalog, MetadataCatalog       # doctest: +SKIP
    DatasetCatalog.register("scenes_train", lambda: to_detectron2_dicts(train, paths))
    MetadataCatalog.get("scenes_train").set(thing_classes=list(CLASS_NAMES))

It cannot be installed from the package registries (it is built from its source), so this module
imports nothing of it; the tests check the dicts with pycocotools.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

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
