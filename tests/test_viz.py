"""viz.py: what comes back (figures, axes, arrays) and which pixels the drawings change."""

import matplotlib

matplotlib.use("Agg")  # no display in tests

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cvhelpers.viz import (  # noqa: E402
    PALETTE,
    draw_boxes,
    overlay_mask,
    plot_confusion_matrix,
    plot_history,
    show_images,
    show_mistakes,
    to_rgb_uint8,
)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize(
    ("images", "count"),
    [
        (np.zeros((5, 28, 28), np.uint8), 5),  # N x H x W grayscale batch
        (torch.rand(10, 1, 28, 28), 10),  # N x C x H x W float batch
        (torch.rand(3, 3, 16, 16), 3),
        (np.zeros((4, 16, 16, 3), np.uint8), 4),  # N x H x W x C uint8
        ([np.zeros((8, 8, 3), np.uint8), torch.rand(3, 8, 8), np.zeros((8, 8))], 3),  # mixed
        (np.zeros((20, 30, 3), np.uint8), 1),  # one H x W x 3 image
        (torch.rand(1, 28, 28), 1),  # one C x H x W tensor
    ],
)
def test_show_images_makes_one_axis_per_image(images, count):
    fig = show_images(images, titles=[f"img {i}" for i in range(count)], ncols=4)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == count
    assert fig.axes[0].get_title() == "img 0"


@pytest.mark.parametrize(("ncols", "size"), [(4, 2.8), (4, 2.2), (6, 2.2), (8, 1.1)])
def test_show_images_titles_clear_of_every_image(ncols, size):
    # the lessons' grids: long titles over square images, two rows or more
    images = np.zeros((2 * ncols, 160, 160, 3), np.uint8)
    fig = show_images(images, titles=[f"test[{i}]: Mask R-CNN (score >= 0.5)" for i in range(2 * ncols)],
                      ncols=ncols, size=size, suptitle="Test scenes")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    image_boxes = [ax.get_window_extent(renderer) for ax in fig.axes]
    for ax in fig.axes:
        title = ax.title.get_window_extent(renderer)
        overlaps = [k for k, box in enumerate(image_boxes) if title.overlaps(box)]
        assert not overlaps, f"title of {ax.get_title()!r} overlaps image(s) {overlaps}"


def test_show_images_rescales_normalised_floats():
    fig = show_images([torch.randn(3, 8, 8) * 5])  # mean/std-normalised: outside [0, 1]
    data = fig.axes[0].get_images()[0].get_array()
    assert data.min() >= 0.0 and data.max() <= 1.0


def test_to_rgb_uint8_layouts():
    assert to_rgb_uint8(np.zeros((5, 6))).shape == (5, 6, 3)
    out = to_rgb_uint8(torch.ones(3, 5, 6))
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8 and out.max() == 255
    assert to_rgb_uint8(np.zeros((5, 6, 4), np.uint8)).shape == (5, 6, 3)


def test_plot_history_two_labelled_axes():
    history = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.6, 0.4], "val_loss": [0.9, 0.7, 0.8],
               "train_accuracy": [0.5, 0.7, 0.8], "val_accuracy": [0.55, 0.68, 0.66],
               "best_epoch": 2}
    fig = plot_history(history)
    assert len(fig.axes) == 2
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_xlabel() == "epoch" and loss_ax.get_ylabel() == "loss"
    assert acc_ax.get_ylabel() == "accuracy"
    assert {t.get_text() for t in loss_ax.get_legend().get_texts()} == {"train", "val", "best"}


def test_plot_history_without_accuracy_has_one_axis():
    nan = float("nan")
    fig = plot_history({"train_loss": [1.0, 0.5], "val_loss": [1.1, 0.7],
                        "train_accuracy": [nan, nan], "val_accuracy": [nan, nan]})
    assert len(fig.axes) == 1


def test_plot_confusion_matrix_normalises_rows():
    cm = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])  # last class has no samples
    fig = plot_confusion_matrix(cm, ["a", "b", "c"], normalize=True)
    assert len(fig.axes) == 2  # matrix + colour bar
    ax = fig.axes[0]
    shown = ax.get_images()[0].get_array()
    np.testing.assert_allclose(shown, [[0.8, 0.2, 0], [0.25, 0.75, 0], [0, 0, 0]])
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    counts_fig = plot_confusion_matrix(cm, normalize=False)
    assert "8" in [t.get_text() for t in counts_fig.axes[0].texts]


def test_draw_boxes_changes_only_the_box_edge():
    image = np.zeros((40, 50, 3), np.uint8)
    out = draw_boxes(image, np.array([[10, 12, 30, 25]], np.float32), width=1)
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    assert image.max() == 0  # input untouched
    changed = out.any(axis=-1)
    expected = np.zeros((40, 50), bool)
    # x2/y2 are exclusive: the outline covers columns 10..29 and rows 12..24
    expected[12, 10:30] = expected[24, 10:30] = True
    expected[12:25, 10] = expected[12:25, 29] = True
    np.testing.assert_array_equal(changed, expected)
    assert tuple(out[12, 15]) == PALETTE[0]


def test_draw_boxes_with_labels_and_scores_puts_captions_above():
    image = np.full((60, 60), 0.5, np.float32)  # grayscale float in, RGB uint8 out
    boxes = torch.tensor([[20.0, 30.0, 50.0, 55.0], [5.0, 0.0, 15.0, 10.0]])
    out = draw_boxes(image, boxes, labels=torch.tensor([1, 3]), class_names=["a", "b", "c", "d"],
                     scores=torch.tensor([0.9, 0.5]), width=2)
    assert out.shape == (60, 60, 3) and out.dtype == np.uint8
    background = to_rgb_uint8(image)
    changed = (out != background).any(axis=-1)
    assert changed[:30, 20:40].any()  # caption above box 0
    assert not changed[33:53, 23:48].any()  # inside box 0 (beyond the 2-px line) untouched
    assert tuple(out[30, 35]) == PALETTE[1] and tuple(out[9, 5]) == PALETTE[3]


def test_overlay_mask_blends_objects_and_keeps_background():
    image = np.full((6, 6, 3), 100, np.uint8)
    mask = np.zeros((6, 6), np.uint8)
    mask[1:3, 1:3] = 1  # class 0
    mask[4, 4] = 3  # class 2
    out = overlay_mask(image, mask, alpha=0.5)
    assert out.shape == (6, 6, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])
    expected = np.round(0.5 * 100 + 0.5 * np.array(PALETTE[0])).astype(np.uint8)
    np.testing.assert_array_equal(out[1, 1], expected)
    expected = np.round(0.5 * 100 + 0.5 * np.array(PALETTE[2])).astype(np.uint8)
    np.testing.assert_array_equal(out[4, 4], expected)
    with pytest.raises(ValueError, match="does not match"):
        overlay_mask(image, np.zeros((5, 6)))


def test_show_mistakes_titles_true_and_pred():
    images = torch.rand(3, 1, 28, 28)
    fig = show_mistakes(images, [0, 1, 2], [0, 2, 1], ["cat", "dog", "bird"],
                        confidences=[0.9, 0.8, 0.7], ncols=2)
    assert len(fig.axes) == 3
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[1] == "true: dog\npred: bird (0.80)"
    assert fig.axes[0].title.get_color() == "black" and fig.axes[1].title.get_color() == "red"


def test_plot_history_marks_where_early_stopping_fired():
    from cvhelpers.viz import plot_history

    history = {"train_loss": [1.0, 0.6, 0.5, 0.45, 0.4], "val_loss": [1.0, 0.7, 0.72, 0.75, 0.8],
               "best_epoch": 2, "stop_reason": "early_stopping"}
    ax = plot_history(history).axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert "best" in labels and "early stopping fired" in labels
    fired = [line for line in ax.get_lines() if line.get_label() == "early stopping fired"][0]
    assert fired.get_xdata()[0] == 5  # the last epoch run
    no_stop = plot_history(dict(history, stop_reason="epochs")).axes[0]
    assert "early stopping fired" not in no_stop.get_legend_handles_labels()[1]


def test_show_confused_pair_counts_both_directions_like_sklearn():
    from sklearn.metrics import confusion_matrix

    from cvhelpers.viz import show_confused_pair

    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.3, rng.integers(0, 4, 200), true)
    fig = show_confused_pair(rng.random((200, 28, 28)), true, pred, (1, 2), ["a", "b", "c", "d"], per_row=5)
    cm = confusion_matrix(true, pred, labels=range(4))
    assert fig.counts == (cm[1, 2], cm[2, 1])
    assert len(fig.axes) == 10 and "b vs c" in fig._suptitle.get_text()


@pytest.mark.parametrize("per_row", [8, 4, 3, 2, 1])
def test_show_confused_pair_text_inside_the_figure_and_clear_of_images(per_row):
    # Fashion-MNIST's names (06b, 01); with 3 or fewer columns the title used to run off both edges
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    from cvhelpers.viz import show_confused_pair

    rng = np.random.default_rng(0)
    true = rng.integers(0, 10, 400)
    pred = np.where(rng.random(400) < 0.5, rng.integers(0, 10, 400), true)
    fig = show_confused_pair(rng.random((400, 28, 28)), true, pred, (6, 0), names, per_row=per_row)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    image_boxes = [ax.get_window_extent(renderer) for ax in fig.axes]
    texts = [fig._suptitle] + [ax.yaxis.label for ax in fig.axes if ax.get_ylabel()]
    assert len(texts) == 3  # the title and one label per row
    for text in texts:
        box = text.get_window_extent(renderer)
        inside = fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1
        assert inside, f"{text.get_text()!r} is cut off by the figure's edge"
        overlaps = [k for k, image in enumerate(image_boxes) if box.overlaps(image)]
        assert not overlaps, f"{text.get_text()!r} overlaps image(s) {overlaps}"


def test_unet_data_flow_traces_every_stage_and_pairs_skips_of_equal_size():
    from cvhelpers.segmentation.unet import UNet, unet_data_flow
    from cvhelpers.viz import plot_data_flow

    model = UNet(in_channels=3, num_classes=5, width=4, depth=3).train()
    stages, skips = unet_data_flow(model, torch.zeros(1, 3, 32, 32))
    names = [n for n, _ in stages]
    assert names == ["input", "stem", "encoder 1", "encoder 2", "bottleneck",
                     "decoder 1", "decoder 2", "decoder 3", "head"]
    shapes = dict(stages)
    assert shapes["head"] == (5, 32, 32) and shapes["bottleneck"] == (32, 4, 4)
    assert model.training  # put back as it was
    assert len(skips) == 3
    for source, target in skips:  # a skip joins an encoder and a decoder output of one size
        assert stages[source][1][1:] == stages[target][1][1:]
    fig = plot_data_flow(stages, skips, title="U-Net")
    ax = fig.axes[0]
    assert ax.get_title() == "U-Net" and "px" in ax.get_yticklabels()[0].get_text()


def test_fpn_data_flow_pairs_each_lite0_stage_with_its_pyramid_level():
    from cvhelpers.detection.models import LITE0_CHANNELS, fpn_data_flow, lite0_fpn_backbone
    from cvhelpers.viz import plot_data_flow

    backbone = lite0_fpn_backbone(pretrained=False, out_channels=16).train()
    stages, laterals = fpn_data_flow(backbone, torch.zeros(1, 3, 64, 64))
    assert [n for n, _ in stages] == ["input", "C3 (stride 8)", "C4 (stride 16)", "C5 (stride 32)", "P5", "P4", "P3"]
    shapes = dict(stages)
    assert [shapes[f"C{3 + i} (stride {s})"] for i, s in enumerate((8, 16, 32))] == [
        (c, 64 // s, 64 // s) for c, s in zip(LITE0_CHANNELS, (8, 16, 32))]
    assert shapes["P3"] == (16, 8, 8) and shapes["P5"] == (16, 2, 2)
    assert backbone.training
    with torch.no_grad():  # the traced pyramid is what the backbone returns
        out = backbone.eval()(torch.zeros(1, 3, 64, 64))
    assert [tuple(v.shape[1:]) for v in out.values()] == [shapes["P3"], shapes["P4"], shapes["P5"]]
    for c, p in laterals:  # a lateral joins a C stage and the P level of its size
        assert stages[c][1][1:] == stages[p][1][1:] and stages[p][0] == "P" + stages[c][0][1]
    fig = plot_data_flow(stages, laterals, title="FPN", skip_label="lateral: 1x1 conv, then added")
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "lateral: 1x1 conv, then added"
