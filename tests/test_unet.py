"""The course U-Net: shapes, skips, and that it can learn."""

import torch

from cvhelpers.segmentation.unet import UNet


def test_output_shape_and_parameter_count():
    model = UNet(3, 5, width=8)
    assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 5, 64, 64)
    assert sum(p.numel() for p in UNet(3, 5, width=16).parameters()) == 1_942_645


def test_odd_sizes_are_padded_back():
    model = UNet(3, 2, width=4, depth=3).eval()
    assert model(torch.zeros(1, 3, 50, 37)).shape == (1, 2, 50, 37)


def test_skip_connections_carry_fine_detail():
    """The decoder's first block sees the stem's features: its input has both halves."""
    model = UNet(3, 2, width=4, depth=2).eval()
    assert model.decoder[-1].conv[0].in_channels == 4 + 4  # upsampled + skip
    assert len(model.decoder) == 2
    seen = []
    model.decoder[-1].conv[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
        stem = model.stem(x)
    torch.testing.assert_close(seen[0][:, :4], stem)  # the skip half is the stem's full-resolution output
    assert not torch.allclose(seen[0][:, 4:], stem)  # the other half is the upsampled decoder path


def test_it_overfits_a_tiny_batch():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    y = (x[:, 0] > 0.5).long()  # the class is readable pixel by pixel
    model = UNet(3, 2, width=4, depth=2)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(); loss.backward(); opt.step()
    model.eval()
    assert (model(x).argmax(1) == y).float().mean() > 0.9
