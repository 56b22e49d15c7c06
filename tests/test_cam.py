"""Grad-CAM: the closed form on a linear model, and real photos side by side on real weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cvhelpers.evaluation.cam import cam_mass, default_target_layer, grad_cam, overlay_cam
from cvhelpers.data.photos import load_photo
from cvhelpers.models.pretrained import efficientnet_lite0, preprocess_photo

TABBY, ESPRESSO = 281, 967


class TinyNet(nn.Module):
    """features = conv(x) (no bias, no activation), then global average pool and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Conv2d(3, 5, kernel_size=1, bias=False)
        self.head = nn.Linear(5, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_grad_cam_equals_the_closed_form_on_a_linear_model():
    # For logit_c = sum_k w_ck * mean(A_k) + b, dlogit/dA_k = w_ck / (h*w) everywhere, so
    # Grad-CAM = ReLU(sum_k w_ck A_k) / (h*w), normalised by its maximum.
    model = TinyNet()
    x = torch.randn(2, 3, 8, 10)
    cams = grad_cam(model, x, class_index=[1, 3], target_layer=model.features)
    with torch.no_grad():
        features = model.features(x)
        for i, c in enumerate([1, 3]):
            expected = torch.relu(torch.einsum("k,khw->hw", model.head.weight[c], features[i]))
            expected = (expected / expected.max()).numpy()
            np.testing.assert_allclose(cams[i], expected, atol=1e-5)
    assert cams.shape == (2, 8, 10) and cams.dtype == np.float32


def test_grad_cam_defaults_and_leaves_the_model_as_it_was():
    model = TinyNet().train()
    for p in model.parameters():
        p.requires_grad_(False)  # a frozen model still gets its CAM
    x = torch.randn(3, 8, 8)
    cam = grad_cam(model, x, target_layer=model.features)  # top class, one image
    top = int(model.eval()(x[None]).argmax())
    np.testing.assert_allclose(cam, grad_cam(model, x, class_index=top, target_layer=model.features))
    assert cam.shape == (8, 8) and 0.0 <= cam.min() and cam.max() == pytest.approx(1.0)
    assert not model.features._forward_hooks  # hooks removed
    model = TinyNet()
    grad_cam(model, x, target_layer=model.features)
    assert all(p.grad is None for p in model.parameters())  # no side effects on .grad
    model.train()
    grad_cam(model, x, target_layer=model.features)
    assert model.training
    with pytest.raises(TypeError, match="target_layer"):
        default_target_layer(nn.Sequential(nn.Linear(2, 2)))


@pytest.fixture(scope="module")
def lite0():
    return efficientnet_lite0().eval()


def test_cam_of_each_class_lies_on_its_own_photo(lite0):
    """[cat | espresso] side by side: 'tabby' must light up the left half, 'espresso' the right
    (so neither a left-half bias nor a class-blind map passes)."""
    cat, coffee = preprocess_photo(load_photo("chelsea")), preprocess_photo(load_photo("coffee"))
    assert default_target_layer(lite0) is lite0.bn2
    pair = torch.cat([cat, coffee], dim=-1)  # 3 x 224 x 448
    cams = grad_cam(lite0, torch.stack([pair, pair]), class_index=[TABBY, ESPRESSO])
    left_half = np.zeros(cams.shape[1:], bool)
    left_half[:, :224] = True
    assert cam_mass(cams[0], left_half) >= 0.6
    assert cam_mass(cams[1], ~left_half) >= 0.6


def test_cam_mass_and_overlay():
    cam = np.zeros((4, 6))
    cam[:, :2] = 1.0
    region = np.zeros((4, 6), bool)
    region[:, :3] = True
    assert cam_mass(cam, region) == 1.0 and cam_mass(cam, ~region) == 0.0
    assert cam_mass(np.zeros((4, 6)), region) == 0.0
    image = np.full((4, 6, 3), 100, np.uint8)
    overlay = overlay_cam(image, cam, alpha=0.0)
    np.testing.assert_array_equal(overlay, image)
    coloured = overlay_cam(image, cam, alpha=1.0)
    assert coloured.dtype == np.uint8 and coloured.shape == image.shape
    assert coloured[0, 0, 0] > coloured[0, 5, 0]  # "jet": high values are red, low ones blue
    with pytest.raises(ValueError, match="differ in size"):
        overlay_cam(image, np.zeros((3, 3)))
