"""From pixels to regions: one class for each connected region of a predicted mask.

A per-pixel classifier can find an object's outline well and still name its pixels with a
mix of classes (half a shirt called "T-shirt", the rest "Shirt"). Where each object class is
a whole thing (a product, a cell, a part; not "sky" or "road"), a connected region of
predicted foreground is most likely one object, so it should carry one class: the most
common one among its pixels. Objects that touch in the prediction merge into one region and
share one name; that is this method's known error, and instance segmentation's reason to be.

Measured on the course's real objects (06b's U-Net, validation split), the vote did not
help: mean IoU went from 0.343 per pixel to 0.318 with the vote, and even the same vote
inside each *true* object (:func:`vote_objects`, which needs the truth) reached only 0.379.
A misnamed object is mostly misnamed as a whole, so the vote is a lesson in measuring an
idea before shipping it, not a fix. The record: ``docs/results/unet_region_vote.json``
(``benchmarks/unet_region_vote.py``).

>>> mask = np.array([[1, 1, 0, 0],
...                  [2, 1, 0, 3],
...                  [0, 0, 0, 3]], dtype=np.uint8)
>>> vote_regions(mask)
array([[1, 1, 0, 0],
       [1, 1, 0, 3],
       [0, 0, 0, 3]], dtype=uint8)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["vote_objects", "vote_regions"]


def vote_regions(mask: np.ndarray, background: int = 0, connectivity: int = 8) -> np.ndarray:
    """Each connected region of non-``background`` pixels relabelled with its most common class.

    Args:
        mask: class ids, integer ``H x W`` or ``N x H x W`` (a stack is voted image by image).
        background: the class id that separates regions; its pixels are returned unchanged.
        connectivity: 8 (pixels that touch at a corner belong to one region) or 4 (edges only).

    Returns:
        A new array of ``mask``'s shape and dtype. A tie between classes goes to the smaller id.
    """
    mask = np.asarray(mask)
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"vote_regions: mask must hold integer class ids, got dtype {mask.dtype}")
    if mask.ndim == 3:
        return np.stack([vote_regions(m, background, connectivity) for m in mask]) if len(mask) else mask.copy()
    if mask.ndim != 2:
        raise ValueError(f"vote_regions: mask must be H x W or N x H x W, got shape {mask.shape}")
    if connectivity not in (4, 8):
        raise ValueError(f"vote_regions: connectivity must be 4 or 8, got {connectivity}")
    if mask.size and mask.min() < 0:
        raise ValueError(f"vote_regions: class ids must be >= 0, found {mask.min()}")
    import cv2  # optional (the "segmentation" extra): imported where it is used

    count, regions = cv2.connectedComponents((mask != background).astype(np.uint8), connectivity=connectivity)
    if count <= 1:  # background only
        return mask.copy()
    num_classes = int(mask.max()) + 1
    # votes[r, c]: pixels of class c in region r (region 0 is the background and never used)
    votes = np.bincount(regions.ravel().astype(np.int64) * num_classes + mask.ravel(),
                        minlength=count * num_classes).reshape(count, num_classes)
    winners = votes.argmax(axis=1).astype(mask.dtype)
    return np.where(regions > 0, winners[regions], mask)


def vote_objects(mask: np.ndarray, object_masks: Sequence[np.ndarray], background: int = 0) -> np.ndarray:
    """``mask`` with each given object's non-``background`` pixels set to their most common class.

    With the *true* objects' masks this needs the truth, so it is no method: it is the most that
    any one-class-per-object vote could give a per-pixel prediction (a ceiling for
    :func:`vote_regions`, which finds its regions in the prediction itself).

    Args:
        mask: predicted class ids, integer ``H x W``.
        object_masks: one boolean (or 0/1) ``H x W`` mask per object; where two overlap, the
            later one's vote wins.
        background: the class id left out of the votes and never changed.

    Returns:
        A new array of ``mask``'s shape and dtype. A tie goes to the smaller class id.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"vote_objects: mask must be an integer H x W array, got {mask.dtype} {mask.shape}")
    out = mask.copy()
    for k, obj in enumerate(object_masks):
        obj = np.asarray(obj)
        if obj.shape != mask.shape:
            raise ValueError(f"vote_objects: object mask {k} is {obj.shape}, the mask {mask.shape}")
        inside = obj.astype(bool) & (mask != background)
        if inside.any():
            out[inside] = np.bincount(mask[inside]).argmax()
    return out
