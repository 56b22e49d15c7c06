"""Segmentation losses against segmentation-models-pytorch, and the naive Dice's mistake."""

import numpy as np
import pytest
import torch
from segmentation_models_pytorch.losses import DiceLoss as SmpDiceLoss

from cvhelpers.segmentation.losses import (CEDiceLoss, DiceLoss, class_pixel_counts, class_weights, dice_loss, naive_dice_loss, one_hot_masks)


def _random_batch(seed: int, n: int = 3, c: int = 5, size: int = 16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g), torch.randint(0, c, (n, size, size), generator=g)


def _perfect_logits(target: torch.Tensor, c: int) -> torch.Tensor:
    return one_hot_masks(target, c) * 40.0 - 20.0  # softmax ~ exactly one-hot


def test_one_hot_layout():
    target = torch.tensor([[[0, 2], [1, 2]]])
    hot = one_hot_masks(target, 3)
    assert hot.shape == (1, 3, 2, 2)
    assert hot[0, 2].tolist() == [[0, 1], [0, 1]]
    with pytest.raises(ValueError, match="class ids"):
        one_hot_masks(target, 2)


@pytest.mark.parametrize("seed", range(5))
def test_dice_matches_smp(seed):
    logits, target = _random_batch(seed)
    if seed == 0:
        target[target == 3] = 0  # a class absent from the target: both give it zero loss
    ours = dice_loss(logits, target)
    reference = SmpDiceLoss("multiclass", from_logits=True)(logits, target)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)
    assert DiceLoss()(logits, target).item() == pytest.approx(ours.item())


def test_dice_classes_match_smp():
    logits, target = _random_batch(7)
    ours = dice_loss(logits, target, classes=[1, 2, 3, 4])
    reference = SmpDiceLoss("multiclass", classes=[1, 2, 3, 4], from_logits=True)(logits, target)
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)


def test_dice_is_zero_for_a_perfect_prediction_and_one_for_a_wrong_one():
    _, target = _random_batch(1)
    assert dice_loss(_perfect_logits(target, 5), target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = _perfect_logits((target + 1) % 5, 5)
    assert dice_loss(wrong, target).item() == pytest.approx(1.0, abs=1e-6)


def test_dice_gradients_are_finite_even_for_absent_classes():
    logits, target = _random_batch(2)
    target[:] = 0  # only background present
    logits.requires_grad_(True)
    CEDiceLoss(weight=torch.ones(5))(logits, target).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_naive_dice_fails_on_shapes_and_semantics():
    logits, target = _random_batch(3)
    with pytest.raises(RuntimeError, match="size"):  # N*C*H*W probabilities vs N*H*W ids
        naive_dice_loss(logits, target)
    # the "fix" that makes shapes agree (broadcast the ids over the channels) runs...
    perfect = _perfect_logits(target, 5)
    naive = naive_dice_loss(perfect, target.unsqueeze(1).expand_as(perfect))
    # ...but a perfect prediction is far from a loss of 0: the class id is used as a probability
    assert naive.item() > 0.3
    assert dice_loss(perfect, target).item() < 1e-6


def test_ce_dice_is_the_sum_of_its_parts():
    logits, target = _random_batch(4)
    weight = torch.tensor([0.2, 1.0, 1.2, 1.1, 1.5])
    expected = torch.nn.functional.cross_entropy(logits, target, weight=weight) + 0.5 * dice_loss(logits, target)
    assert CEDiceLoss(weight, dice_weight=0.5)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


def test_class_weights_favour_rare_classes():
    masks = [np.zeros((10, 10), np.uint8) for _ in range(3)]
    masks[0][:2, :2] = 1   # 4 pixels of class 1, no class 2
    assert class_pixel_counts(masks, 3).tolist() == [296, 4, 0]
    w = class_weights(masks, 3)
    assert w.mean().item() == pytest.approx(1.0)
    assert w[1] > w[0] and w[2] == w[1]  # an absent class gets the largest weight seen
    assert (w[1] / w[0]).item() == pytest.approx((296 / 4) ** 0.5)
