import numpy as np
import pytest
import torch
from torch import nn

from cvhelpers.models.pretrained import LITE0_MEAN, LITE0_STD, efficientnet_lite0
from cvhelpers.models.freezing import layer_groups
from cvhelpers.data.loading import make_loader
from cvhelpers.train.evaluate import predict
from cvhelpers.classification.transfer import (grey_to_rgb_tensor, gradual_unfreezing, hflip_tta_probs)


def test_grey_to_rgb_tensor_shapes_and_normalisation():
    images = np.zeros((3, 28, 28), dtype=np.uint8)
    images[1] = 255
    ds = grey_to_rgb_tensor(images, np.array([0, 1, 2]), 64, LITE0_MEAN, LITE0_STD)
    x, y = ds.tensors
    assert x.shape == (3, 3, 64, 64) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == [0, 1, 2]
    # TF-Lite scaling: black -> (0 - 127) / 128, white -> (255 - 127) / 128
    assert torch.allclose(x[0], torch.full_like(x[0], -127 / 128), atol=1e-5)
    assert torch.allclose(x[1], torch.full_like(x[1], 1.0), atol=1e-5)


def _frozen_snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_gradual_unfreezing_trains_only_the_unfrozen_groups():
    torch.manual_seed(0)
    model = efficientnet_lite0(num_classes=3, pretrained=False)
    groups = layer_groups(model)
    x = torch.randn(8, 3, 32, 32)
    y = torch.arange(8) % 3
    loader = make_loader(torch.utils.data.TensorDataset(x, y), 4, shuffle=True, seed=0)
    before = _frozen_snapshot(model)
    gradual_unfreezing(model, groups, loader, None, stages=[(1, 1)], base_lr=1e-2, device="cpu")
    head = {id(p) for p in groups[-1][0].parameters()}
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p)
        assert changed == (id(p) in head), name
    after_head = _frozen_snapshot(model)
    gradual_unfreezing(model, groups, loader, None, stages=[(3, 1)], base_lr=1e-2, device="cpu")
    last_three = {id(p) for g in groups[-3:] for m in g for p in m.parameters()}
    for name, p in model.named_parameters():
        assert (not torch.equal(after_head[name], p)) == (id(p) in last_three), name


def test_hflip_tta_averages_image_and_mirror():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 5))
    x = torch.randn(6, 2, 4, 4)
    loader = make_loader(torch.utils.data.TensorDataset(x, torch.zeros(6, dtype=torch.int64)), 4, shuffle=False)
    probs, targets = hflip_tta_probs(model, loader)
    with torch.no_grad():
        expected = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    torch.testing.assert_close(probs, expected)
    assert targets.shape == (6,)
    plain, _ = predict(model, loader, probs=True)
    assert not torch.allclose(plain, probs)


def test_hflip_tta_reads_the_loader_once_and_keeps_labels_with_their_images():
    # a shuffling loader gives a new order on each pass: a second pass for the mirror images
    # would average the wrong pairs; label i marks image i so the pairing can be checked
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 5))
    x = torch.randn(12, 2, 4, 4)
    loader = make_loader(torch.utils.data.TensorDataset(x, torch.arange(12)), 4, shuffle=True, seed=1)
    passes = []

    class Counting:
        def __iter__(self):
            passes.append(1)
            return iter(loader)

    probs, order = hflip_tta_probs(model, Counting())
    assert len(passes) == 1
    with torch.no_grad():
        expected = (model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2
    assert sorted(order.tolist()) == list(range(12))
    torch.testing.assert_close(probs, expected[order])


@pytest.mark.parametrize("images, labels, size, message", [
    (np.zeros((1, 28, 28), np.uint8), np.array([0]), 0, "size must be at least 1 pixel, got 0"),
    (np.zeros((1, 28, 28, 3), np.uint8), np.array([0]), 32, r"grey uint8 N x H x W, got uint8 of shape \(1, 28, 28, 3\)"),
    (np.zeros((1, 28, 28), np.float32), np.array([0]), 32, "got float32"),
    (np.zeros((2, 28, 28), np.uint8), np.array([0]), 32, "2 images but 1 labels"),
])
def test_grey_to_rgb_tensor_refuses_bad_input_clearly(images, labels, size, message):
    with pytest.raises(ValueError, match=message):
        grey_to_rgb_tensor(images, labels, size, LITE0_MEAN, LITE0_STD)
