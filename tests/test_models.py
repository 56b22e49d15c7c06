"""SmallCNN: shapes, options, and that it can learn."""

import pytest
import torch
from torch import nn

from cvhelpers.models.cnn import SmallCNN, conv_block


@pytest.mark.parametrize(
    ("kwargs", "input_shape"),
    [
        ({}, (4, 1, 28, 28)),
        ({"in_channels": 3, "num_classes": 5, "width": 8}, (2, 3, 28, 28)),
        ({"blocks": 3, "image_size": 32, "in_channels": 3, "width": 8}, (2, 3, 32, 32)),
        ({"head": "avg", "width": 8}, (2, 1, 40, 52)),  # any input size with global pooling
        ({"norm": "none", "dropout": 0.5, "width": 8}, (2, 1, 28, 28)),
    ],
)
def test_output_shape_and_dtype(kwargs, input_shape):
    model = SmallCNN(**kwargs)
    out = model(torch.rand(input_shape))
    assert out.shape == (input_shape[0], kwargs.get("num_classes", 10))
    assert out.dtype == torch.float32


def test_width_32_layout_matches_the_docstring():
    model = SmallCNN(width=32)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 4
    assert all(c.bias is None for c in convs)  # BatchNorm's shift replaces the bias
    linear = model.head[-1]
    assert linear.in_features == 64 * 7 * 7 and linear.out_features == 10
    assert model.features(torch.zeros(1, 1, 28, 28)).shape == (1, 64, 7, 7)


def test_norm_none_has_no_batchnorm_and_biased_convs():
    model = SmallCNN(norm="none", width=8)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_conv_block_halves_the_size():
    assert conv_block(3, 16)(torch.zeros(2, 3, 10, 12)).shape == (2, 16, 5, 6)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"norm": "layer"}, "norm must be 'batch' or 'none'"), ({"blocks": 4}, "blocks must be 2 or 3"),
     ({"head": "max"}, "head must be 'flatten' or 'avg'"), ({"image_size": 30}, "image_size=30 must be divisible")],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SmallCNN(**kwargs)


def test_learns_a_tiny_batch():
    torch.manual_seed(0)
    model = SmallCNN(width=8)
    x, y = torch.rand(16, 1, 28, 28), torch.arange(16) % 10
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        loss = nn.functional.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * first


def test_eval_mode_restores_the_callers_mode_even_after_an_error():
    import pytest

    from cvhelpers.models.freezing import eval_mode

    model = SmallCNN(in_channels=1, num_classes=10, width=8).train()
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not model.training and not any(m.training for m in model.modules())
            raise RuntimeError("interrupted mid-evaluation")
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training  # a model that was in eval mode stays there
