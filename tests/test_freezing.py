"""Frozen BatchNorm is a visible module that nothing moves, and it computes what eval mode did."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from cvhelpers.models.freezing import _freeze_batchnorm_torchvision, eval_mode, freeze_batchnorm


def trained_block() -> nn.Sequential:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    with torch.no_grad():  # statistics and affine parameters that are not the defaults
        block[1].running_mean.uniform_(-1, 1)
        block[1].running_var.uniform_(0.5, 2)
        block[1].weight.uniform_(0.5, 1.5)
        block[1].bias.uniform_(-0.5, 0.5)
    return block


@pytest.mark.parametrize("freeze", [freeze_batchnorm, _freeze_batchnorm_torchvision])
def test_frozen_batchnorm_equals_eval_mode_and_never_moves(freeze):
    block = trained_block()
    x = torch.randn(4, 3, 16, 16)
    with eval_mode(block), torch.no_grad():
        expected = block(x)
    frozen = freeze(copy.deepcopy(block))
    assert isinstance(frozen[1], FrozenBatchNorm2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    frozen.train()
    out = frozen(x * 3 + 1)  # a batch whose statistics differ a lot
    out.sum().backward()
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items() if k.startswith("1."))
    assert [n for n, p in frozen[1].named_parameters()] == []  # buffers only: nothing to train
    with torch.no_grad():
        assert torch.allclose(frozen(x), expected, atol=1e-6)


def test_requires_grad_false_alone_does_not_freeze_batchnorm():
    """Why freeze_batchnorm exists: in train mode BatchNorm statistics move without gradients."""
    block = trained_block().requires_grad_(False).train()
    mean = block[1].running_mean.clone()
    block(torch.randn(4, 3, 16, 16) * 3 + 1)
    assert not torch.equal(mean, block[1].running_mean)


def test_timm_batchnorm_act_keeps_its_activation():
    timm = pytest.importorskip("timm")
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
    frozen = freeze_batchnorm(copy.deepcopy(model)).train()
    kinds = {type(m).__name__ for m in frozen.modules()}
    assert "FrozenBatchNormAct2d" in kinds and "BatchNormAct2d" not in kinds
    with torch.no_grad():
        assert torch.allclose(frozen(x), expected, atol=1e-5)


def test_the_lite0_detector_backbone_freezes_its_early_stages():
    pytest.importorskip("timm")
    from cvhelpers.detection.models import lite0_fpn_backbone

    backbone = lite0_fpn_backbone(pretrained=True, trainable_blocks=4).train()
    frozen_blocks, trainable = backbone.body.blocks[:3], backbone.body.blocks[3:]
    assert type(backbone.body.bn1).__name__ == "FrozenBatchNormAct2d"
    assert not any(p.requires_grad for p in frozen_blocks.parameters())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen_blocks.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in trainable.modules())
    assert all(p.requires_grad for p in trainable.parameters())
