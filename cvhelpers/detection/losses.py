"""Focal loss (Lin et al., 2017), written plainly and checked against
``torchvision.ops.sigmoid_focal_loss``: cross-entropy that down-weights the easy examples, so the
thousands of easy background anchors do not drown the few objects.
"""

from __future__ import annotations

import torch

__all__ = ["sigmoid_focal_loss"]


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0, reduction: str = "none") -> torch.Tensor:
    """Focal loss (Lin et al., RetinaNet): cross-entropy that fades for easy examples.

    ``FL = -alpha_t * (1 - p_t) ** gamma * log(p_t)``, where ``p_t`` is the probability given
    to the true answer. With ``gamma = 2`` a box already classified at ``p_t = 0.9`` counts 100
    times less than in plain cross-entropy, so the thousands of easy background anchors stop
    drowning the few objects. ``alpha`` weighs positives (``alpha``) against negatives
    (``1 - alpha``); a negative ``alpha`` turns the weighting off.

    Args:
        logits: any shape, raw scores; targets: same shape, 0 or 1 (floats).
        reduction: ``"none"``, ``"mean"`` or ``"sum"``.
    """
    p = torch.sigmoid(logits)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction != "none":
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return loss
