"""The course's own ResNet and ViT equal the versions everyone uses, weight for weight.

Each reference model (torchvision's ResNets, timm's ViT) is built with random weights, its
state dict is loaded into the course model *by name* (strict: every tensor must find its
place), and both give the same outputs on the same input.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cvhelpers.models.resnet import ResNet, resnet
from cvhelpers.models.vit import ViT, vit_tiny_patch16_224


@pytest.mark.parametrize("depth, size", [(18, 64), (50, 64)])
def test_course_resnet_equals_torchvision(depth, size):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    ours = resnet(depth).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() <= 1e-5


def test_course_vit_equals_timm():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    ours = vit_tiny_patch16_224().eval()
    missing, unexpected = ours.load_state_dict(reference.state_dict(), strict=True)
    assert not missing and not unexpected
    x = torch.randn(2, 3, 224, 224)
    seen = {}
    hook = reference.blocks[-1].register_forward_pre_hook(lambda module, args: seen.update(x=args[0]))
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max().item() <= 1e-4
    hook.remove()
    # the class token's attention recomputed from timm's own last block: its norm1 and qkv layer
    # applied to that block's input, softmax(q k^T / sqrt(d)), class-token row, mean over heads
    attn = reference.blocks[-1].attn
    with torch.no_grad():
        qkv = attn.qkv(reference.blocks[-1].norm1(seen["x"]))
    b, n, _ = qkv.shape
    q, k, _ = qkv.reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)
    expected = weights[:, :, 0, 1:].mean(1).reshape(2, 14, 14)
    attention = ours.class_token_attention()
    assert attention.shape == (2, 14, 14)
    torch.testing.assert_close(attention, expected, atol=1e-5, rtol=1e-4)
    assert attention.flatten(1).std(1).min() > 0  # not a flat map


def test_plain_network_has_no_shortcut_but_the_same_layers():
    with_skips, plain = resnet(18, num_classes=10, width=16), resnet(18, num_classes=10, width=16, skip=False)
    assert sum(p.numel() for p in plain.parameters()) < sum(p.numel() for p in with_skips.parameters())  # no projections
    assert all(block.downsample is None and not block.skip for stage in (plain.layer2, plain.layer3) for block in stage)
    # a plain block with zeroed last BatchNorm outputs relu(0) = 0, a residual block passes x through
    block = with_skips.layer1[0].eval()
    nn.init.zeros_(block.bn2.weight); nn.init.zeros_(block.bn2.bias)
    x = torch.rand(1, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), x)
        plain_block = plain.layer1[0].eval()
        nn.init.zeros_(plain_block.bn2.weight); nn.init.zeros_(plain_block.bn2.bias)
        assert plain_block(x).abs().max() == 0


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="depth must be one of"):
        resnet(19)
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ViT(image_size=30, patch_size=4)
    with pytest.raises(ValueError, match="not divisible by heads"):
        ViT(image_size=32, patch_size=4, dim=10, heads=3)
    assert isinstance(resnet(34), ResNet)


def test_course_lite0_with_the_real_imagenet_weights_equals_timm():
    pytest.importorskip("timm")
    from cvhelpers.data.photos import list_photos
    from cvhelpers.models import pretrained as pt
    from cvhelpers.models.efficientnet import efficientnet_lite0

    reference = pt.efficientnet_lite0().eval()  # timm's tf_efficientnet_lite0 with the real weights
    ours = efficientnet_lite0().eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    photos = [p for p in list_photos() if p.imagenet_classes is not None]
    x = torch.stack([pt.preprocess_photo(p.load()) for p in photos])
    with torch.no_grad():
        a, b = ours(x), reference(x)
    assert (a - b).abs().max().item() <= 1e-4
    assert torch.equal(a.argmax(1), b.argmax(1))
    assert sum(int(k in p.imagenet_classes) for k, p in zip(a.argmax(1).tolist(), photos)) >= 5


def test_symmetric_padding_is_the_silent_mistake():
    # the same weights with PyTorch's symmetric padding on the stride-2 convolutions drift away
    from cvhelpers.models.efficientnet import efficientnet_lite0, pad_same

    assert pad_same(torch.zeros(1, 1, 224, 224), 3, 2).shape[-2:] == (225, 225)  # 0 top/left, 1 bottom/right
    assert pad_same(torch.zeros(1, 1, 225, 225), 3, 2).shape[-2:] == (227, 227)
    from cvhelpers.models import pretrained as pt

    real = pt.efficientnet_lite0().state_dict()  # random weights give near-zero logits: use the real ones
    ours, symmetric = efficientnet_lite0().eval(), efficientnet_lite0().eval()
    ours.load_state_dict(real)
    symmetric.load_state_dict(real)
    for module in symmetric.modules():
        if type(module).__name__ == "_SameConv2d":
            module.padding = (module.kernel_size[0] // 2,) * 2
            module.forward = nn.Conv2d.forward.__get__(module)
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - symmetric(x)).abs().max().item() > 1e-2


def test_small_resnet_has_the_layers_its_name_says():
    from cvhelpers.models.resnet import small_resnet

    model = small_resnet(20, num_classes=10, width=8)
    shortcuts = {id(m) for b in model.modules() if getattr(b, "downsample", None) is not None for m in b.downsample.modules()}
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and id(m) not in shortcuts]
    assert len(weighted) == 20  # stem + 3 stages x 3 blocks x 2 convs + fc; the 1x1 projections are shortcuts
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert not hasattr(model, "layer4") and isinstance(model.maxpool, nn.Identity)
    plain = small_resnet(56, width=8, skip=False)
    assert all(b.downsample is None and not b.skip for s in (plain.layer1, plain.layer2, plain.layer3) for b in s)
    with pytest.raises(ValueError, match="6 n \\+ 2"):
        small_resnet(21)


def test_frozen_backbone_with_mlp_head_trains_the_head_only():
    from cvhelpers.classification.transfer import frozen_backbone_with_mlp_head

    model = frozen_backbone_with_mlp_head(resnet(18, num_classes=1000, width=8), "fc", num_classes=3, hidden=16)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("fc.") for n in trainable)
    assert [type(m).__name__ for m in model.fc] == ["Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    before = {n: b.clone() for n, b in model.named_buffers() if "running_mean" in n}
    model.train()
    model(torch.randn(4, 3, 32, 32) * 5 + 3)  # a train-mode batch far from the statistics
    after = dict(model.named_buffers())
    assert all(torch.equal(after[n], b) for n, b in before.items())  # frozen means frozen: BatchNorm too
    with pytest.raises(ValueError, match="no nn.Linear 'head'"):
        frozen_backbone_with_mlp_head(resnet(18, width=8), "head", num_classes=3)
