"""Offline pretrained weights proven real on real photos; fine-tuning helpers; ResNet-50 cache."""

from collections import OrderedDict

import numpy as np
import pytest
import timm
import torch
import torchvision
from torch import nn

from cvhelpers.models import freezing
from cvhelpers.models import pretrained as pt
from cvhelpers.data.photos import list_photos

LABELLED = [p for p in list_photos() if p.imagenet_classes is not None]


@pytest.fixture(scope="module")
def lite0() -> nn.Module:
    return pt.efficientnet_lite0().eval()


@pytest.fixture(scope="module")
def photo_batch() -> torch.Tensor:
    """The labelled photos, preprocessed the way the Lite0 weights expect: N x 3 x 224 x 224."""
    return torch.stack([pt.preprocess_photo(p.load()) for p in LABELLED])


# --- the weights are the real ImageNet ones ------------------------------------------------------


def test_in_order_mapping_matches_timm_names_and_shapes():
    mapped = pt.lite0_state_dict_for_timm()
    expected = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert list(mapped) == list(expected)
    assert all(mapped[k].shape == expected[k].shape for k in expected)
    real = [k for k in mapped if not k.endswith("num_batches_tracked")]
    assert len(real) == 247
    model = pt.efficientnet_lite0()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008


def _save_altered(tmp_path, monkeypatch, alter) -> None:
    """Point the loader at a copy of the real file changed by ``alter(list_of_items)``."""
    items = list(torch.load(pt.lite0_weights_path(), map_location="cpu", weights_only=True).items())
    path = tmp_path / "altered.pth"
    torch.save(OrderedDict(alter(items)), path)
    monkeypatch.setattr(pt, "lite0_weights_path", lambda: path)


def test_mapping_refuses_a_same_shape_swap(tmp_path, monkeypatch):
    def swap_bn_weight_and_bias(items):  # both (32,): only the kind check can catch it
        items[1], items[2] = items[2], items[1]
        return items

    _save_altered(tmp_path, monkeypatch, swap_bn_weight_and_bias)
    with pytest.raises(pt.WeightMappingError, match="tensor #1"):
        pt.lite0_state_dict_for_timm()


def test_mapping_refuses_a_shape_mismatch_and_a_missing_tensor(tmp_path, monkeypatch):
    _save_altered(tmp_path, monkeypatch,
                  lambda items: items[:6] + [(items[6][0], torch.zeros(16, 1, 3, 3))] + items[7:])
    with pytest.raises(pt.WeightMappingError, match=r"tensor #6.*\(16, 1, 3, 3\)"):
        pt.lite0_state_dict_for_timm()
    _save_altered(tmp_path, monkeypatch, lambda items: items[:-1])
    with pytest.raises(pt.WeightMappingError, match="295 tensors"):
        pt.lite0_state_dict_for_timm()


def test_real_photos_are_classified_correctly(lite0, photo_batch):
    """Top-1 in the photo's acceptable set on real photos: these are trained ImageNet weights."""
    assert len(LABELLED) >= 6, "need the labelled photos from skimage/matplotlib/ultralytics"
    predictions = pt.predict_topk(lite0, photo_batch, k=5)
    top1_hits = 0
    for photo, top5 in zip(LABELLED, predictions):
        print(photo.name, [(s.index, s.name.split(",")[0], round(s.probability, 3)) for s in top5])
        top1_hits += top5[0].index in photo.imagenet_classes
        assert {s.index for s in top5} & photo.imagenet_classes, f"{photo.name}: not even top-5"
    assert top1_hits >= 5
    assert top1_hits / len(LABELLED) >= 0.8  # 11/12 with opencv-doc, 5/6 without (Grace Hopper)


def _true_set_probability(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        probs = model(x).softmax(dim=1)
    return np.array([float(probs[i, sorted(p.imagenet_classes)].sum())
                     for i, p in enumerate(LABELLED)])


def test_wrong_normalisation_hurts(lite0, photo_batch):
    right = _true_set_probability(lite0, photo_batch)
    std, mean = (torch.tensor(v).view(1, 3, 1, 1) for v in (pt.LITE0_STD, pt.LITE0_MEAN))
    unit = photo_batch * std + mean  # back to [0, 1]
    raw01 = _true_set_probability(lite0, unit)
    raw255 = _true_set_probability(lite0, unit * 255)
    print(f"mean P(true class): (x*255-127)/128 {right.mean():.3f}, raw [0,1] {raw01.mean():.3f}, "
          f"raw [0,255] {raw255.mean():.3f}")
    # A shift to [0, 1] costs little (0.75 -> 0.69 seen, orange became lemon); unscaled pixels
    # [0, 255] wreck the predictions.
    assert right.mean() > raw01.mean()
    assert raw255.mean() < 0.2 < right.mean()


def test_features_only_model_equals_full_model_blocks(lite0):
    features = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True,
                                 out_indices=(2, 3, 4))
    report = pt.load_lite0_weights(features)
    assert report.skipped == [] and len([k for k in report.loaded if "num_batches" not in k]) == 240
    features.eval()
    captured = {}
    modules = dict(lite0.named_modules())
    names = features.feature_info.module_name()  # blocks.2, blocks.4, blocks.6
    hooks = [modules[name].register_forward_hook(
        lambda m, i, o, name=name: captured.__setitem__(name, o)) for name in names]
    x = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lite0(x)
        outputs = features(x)
    for hook in hooks:
        hook.remove()
    assert [o.shape[1] for o in outputs] == [40, 112, 320]
    for name, out in zip(names, outputs):
        torch.testing.assert_close(out, captured[name], rtol=0, atol=1e-6)


def test_new_head_keeps_the_pretrained_backbone(lite0):
    model = pt.efficientnet_lite0(num_classes=10)
    assert model.classifier.weight.shape == (10, 1280)
    torch.testing.assert_close(model.blocks[3][0].conv_pw.weight, lite0.blocks[3][0].conv_pw.weight)
    report = pt.load_lite0_weights(pt.efficientnet_lite0(num_classes=10, pretrained=False))
    assert report.skipped == ["classifier.weight", "classifier.bias"]


def test_prefixed_keys_are_found_and_unrelated_models_refused():
    wrapper = nn.Module()
    wrapper.model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    report = pt.load_lite0_weights(wrapper)  # keys "model.conv_stem.weight"... like smp's encoder
    assert report.skipped == [] and report.loaded[0] == "model.conv_stem.weight"
    with pytest.raises(pt.WeightMappingError):
        pt.load_lite0_weights(nn.Linear(3, 3))


# --- preprocessing and predictions -------------------------------------------------------------


def test_transform_scales_tf_lite_style():
    for value, expected in [(127, 0.0), (255, 1.0), (0, -127 / 128)]:
        x = pt.preprocess_photo(np.full((300, 400, 3), value, np.uint8))
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32
        torch.testing.assert_close(x, torch.full_like(x, expected), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        pt.preprocess_photo(np.zeros((10, 10), np.uint8))


def test_imagenet_class_names():
    names = pt.imagenet_class_names()
    assert len(names) == 1000 and names[281] == "tabby, tabby cat"
    assert pt.imagenet_class_names(short=True)[967] == "espresso"


def test_predict_topk_sorts_and_restores_train_mode(lite0):
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Dropout(0.5)).train()
    x = torch.randn(2, 3, 2, 2)
    result = pt.predict_topk(model, x, k=3, class_names=list("abcd"))
    assert model.training and len(result) == 2 and len(result[0]) == 3
    probs = [s.probability for s in result[0]]
    assert probs == sorted(probs, reverse=True) and all(0 <= p <= 1 for p in probs)
    with torch.no_grad():  # the reference: eval mode (dropout off), softmax, topk
        reference = model.eval()(x).softmax(1).topk(3)
    model.train()
    for row, values, indices in zip(result, reference.values, reference.indices):
        assert [s.index for s in row] == indices.tolist() and [s.name for s in row] == [list("abcd")[i] for i in indices]
        assert [s.probability for s in row] == pytest.approx(values.tolist(), abs=1e-6)


# --- layer groups and fine-tuning --------------------------------------------------------------


def _ids(modules) -> list[int]:
    return [id(p) for m in modules for p in m.parameters()]


@pytest.mark.parametrize("build, n_groups", [
    (lambda: pt.efficientnet_lite0(pretrained=False), 10),
    (lambda: timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True), 8),
    (lambda: torchvision.models.resnet18(weights=None), 6),
])
def test_layer_groups_cover_every_parameter_once(build, n_groups):
    model = build()
    groups = freezing.layer_groups(model)
    assert len(groups) == n_groups
    grouped = [i for g in groups for i in _ids(g)]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    first = groups[0][0]
    assert isinstance(first, nn.Conv2d) and first.in_channels == 3, "ordered input -> output"


def test_layer_groups_rejects_unknown_models():
    with pytest.raises(TypeError, match="not Sequential"):
        freezing.layer_groups(nn.Sequential(nn.Linear(2, 2)))


def test_gradual_unfreezing_and_discriminative_lrs():
    model = pt.efficientnet_lite0(num_classes=5, pretrained=False)
    groups = freezing.layer_groups(model)
    assert freezing.unfreeze_last_groups(groups, 0) == 0
    assert freezing.unfreeze_last_groups(groups, 1) == 1280 * 5 + 5  # the new head only
    trainable = freezing.unfreeze_last_groups(groups, 3)
    assert trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    # which ones: exactly the last three groups, counted from the groups, not from the flags
    assert trainable == sum(p.numel() for group in groups[-3:] for m in group for p in m.parameters())
    assert not any(p.requires_grad for group in groups[:-3] for m in group for p in m.parameters())
    param_groups = freezing.discriminative_param_groups(groups, base_lr=1e-3, decay=0.5)
    assert [g["lr"] for g in param_groups] == pytest.approx([2.5e-4, 5e-4, 1e-3])
    assert all(p.requires_grad for g in param_groups for p in g["params"])
    torch.optim.AdamW(param_groups)  # accepted as is
    assert freezing.unfreeze_last_groups(groups, 99) == sum(p.numel() for p in model.parameters())
    lrs = [g["lr"] for g in freezing.discriminative_param_groups(groups, base_lr=1e-2)]
    assert len(lrs) == 10 and all(a < b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == 1e-2


# --- torchvision ResNet-50 from the cache only -------------------------------------------------


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME; any download attempt fails the test loudly."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("CVC_ONLINE", raising=False)  # the switch is off, whatever the shell says
    # torch.hub.set_dir() called elsewhere would win over TORCH_HOME: undo it for this test.
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path


def test_resnet50_missing_weights_fail_at_once_with_instructions(torch_home):
    with pytest.raises(pt.WeightsNotCachedError) as info:
        pt.resnet50_imagenet()
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "resnet50-11ad3fa6.pth" in message
    assert str(torch_home / "hub" / "checkpoints") in message
    assert "IMAGENET1K_V2" in message and "CVC_ONLINE=1" in message and "ONLINE = True" in message
    assert list(torch_home.iterdir()) == [], "nothing created, nothing fetched"


def test_resnet50_loads_a_cached_checkpoint(torch_home):
    torch.manual_seed(0)
    state = torchvision.models.resnet50(weights=None).state_dict()  # stands in for the real file
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / "resnet50-11ad3fa6.pth")
    model, transforms = pt.resnet50_imagenet()
    assert not model.training
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert transforms.crop_size == [224] and transforms.resize_size == [232]
