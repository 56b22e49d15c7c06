"""Bad inputs to cvhelpers.data.validate: each gives a DatasetError that starts with the path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from cvhelpers.data.validate import (ALPHA_BACKGROUND, DatasetError, check_boxes, check_class_ids, check_mask, check_polygon, load_image, load_label_mask, pair_images_and_labels)


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def save(path: Path, image: Image.Image | np.ndarray, **kwargs) -> Path:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, **kwargs)
    return path


def raises_for(path: Path | str, **kwargs) -> str:
    """load_image(path) must raise a DatasetError whose message starts with the path."""
    with pytest.raises(DatasetError) as info:
        load_image(path, **kwargs)
    message = str(info.value)
    assert message.startswith(str(path)), message
    return message


# ------------------------------------------------------------------------- files that do not load
def test_missing_file(tmp_path):
    assert "not found" in raises_for(tmp_path / "nope.png")


def test_zero_byte_file(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    assert "empty" in raises_for(path)


def test_not_an_image(tmp_path):
    path = tmp_path / "text.png"
    path.write_text("hello, I am not a PNG")
    assert "not an image" in raises_for(path)


def test_not_an_image_after_ultralytics_patches_pil(tmp_path, monkeypatch):
    # ultralytics replaces Image.open with a wrapper that, on an unknown file, imports the
    # optional pi_heif plugin: without it the error is a ModuleNotFoundError, not PIL's own.
    from PIL import Image

    original = Image.open

    def ultralytics_like_open(*args, **kwargs):
        try:
            return original(*args, **kwargs)
        except Image.UnidentifiedImageError:
            raise ModuleNotFoundError("No module named 'pi_heif'")

    monkeypatch.setattr(Image, "open", ultralytics_like_open)
    path = tmp_path / "text.png"
    path.write_text("hello, I am not a PNG")
    assert "not an image" in raises_for(path)


def test_truncated_png(tmp_path, rgb):
    data = save(tmp_path / "full.png", rgb).read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in raises_for(path)


def test_truncated_jpeg_even_with_load_truncated_images(tmp_path, rgb, monkeypatch):
    # verify() passes on a cut JPEG; only a full decode finds it, and PIL's global flag would
    # hide it by padding with grey.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = save(tmp_path / "full.jpg", rgb, quality=95).read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in raises_for(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_corrupt_bytes_inside_png(tmp_path, rgb):
    data = bytearray(save(tmp_path / "full.png", rgb).read_bytes())
    data[60:80] = bytes(20)  # inside the IDAT chunk: the CRC no longer matches
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    raises_for(path)


# --------------------------------------------------------------------------------------- modes
def test_rgb_loads_unchanged(tmp_path, rgb):
    image = load_image(save(tmp_path / "rgb.png", rgb))
    assert image.dtype == np.uint8 and image.shape == (24, 32, 3)
    np.testing.assert_array_equal(image, rgb)


def test_grey_L_becomes_rgb(tmp_path, rgb):
    grey = rgb[..., 0]
    image = load_image(save(tmp_path / "grey.png", grey))
    assert image.shape == (24, 32, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], grey)


def test_palette_P_becomes_rgb(tmp_path, rgb):
    palette_image = Image.fromarray(rgb).quantize(16)
    image = load_image(save(tmp_path / "palette.png", palette_image))
    np.testing.assert_array_equal(image, np.asarray(palette_image.convert("RGB")))


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 3, 4), np.uint8)
    rgba[0] = (200, 10, 10, 255)  # opaque: colour kept
    rgba[1] = (200, 10, 10, 0)  # transparent: background
    rgba[2] = (0, 0, 0, 128)  # half: a blend of black and white
    image = load_image(save(tmp_path / "rgba.png", rgba))
    assert ALPHA_BACKGROUND == (255, 255, 255)
    np.testing.assert_array_equal(image[0], [[200, 10, 10]] * 3)
    np.testing.assert_array_equal(image[1], [[255, 255, 255]] * 3)
    assert np.all(np.abs(image[2].astype(int) - 127) <= 1)
    assert "mode_policy='strict'" in raises_for(tmp_path / "rgba.png", mode_policy="strict")


def test_grey_alpha_LA_is_composited(tmp_path):
    la = Image.new("LA", (2, 2), (0, 0))  # black, fully transparent
    image = load_image(save(tmp_path / "la.png", la))
    np.testing.assert_array_equal(image, np.full((2, 2, 3), 255, np.uint8))


def test_16_bit_is_scaled_by_257(tmp_path):
    values = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    path = save(tmp_path / "depth16.png", values)
    assert Image.open(path).mode.startswith("I")  # I;16 (or I on older Pillow)
    image = load_image(path)
    np.testing.assert_array_equal(image[..., 0], [[0, 1, 255, 128]])
    assert "mode_policy='strict'" in raises_for(path, mode_policy="strict")


def test_32_bit_integer_I_is_clipped_and_scaled(tmp_path):
    values = np.array([[-5, 514, 70000]], dtype=np.int32)
    path = save(tmp_path / "int32.tif", Image.fromarray(values))
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(load_image(path)[..., 1], [[0, 2, 255]])


def test_cmyk_is_converted(tmp_path, rgb):
    cmyk = Image.fromarray(rgb).convert("CMYK")
    path = save(tmp_path / "cmyk.jpg", cmyk, quality=100)
    with Image.open(path) as stored:
        assert stored.mode == "CMYK"
        expected = np.asarray(stored.convert("RGB"))
    np.testing.assert_array_equal(load_image(path), expected)
    raises_for(path, mode_policy="strict")


def test_float_mode_F_is_refused(tmp_path):
    path = save(tmp_path / "float.tif", Image.fromarray(np.ones((3, 3), np.float32)))
    assert "unsupported image mode F" in raises_for(path)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)  # stored W=40, H=20: left red, right blue
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(tmp_path / "phone.jpg", stored, exif=exif.tobytes(), quality=95)
    image = load_image(path)
    assert image.shape == (40, 20, 3)  # upright: H and W swapped
    # turning clockwise puts the stored left (red) half on top
    assert image[5, 10, 0] > 200 and image[5, 10, 2] < 50
    assert image[35, 10, 2] > 200 and image[35, 10, 0] < 50


def test_bad_mode_policy_value(tmp_path, rgb):
    with pytest.raises(ValueError, match="mode_policy"):
        load_image(save(tmp_path / "x.png", rgb), mode_policy="lenient")


def test_label_mask_reads_palette_indices_and_refuses_rgb(tmp_path, rgb):
    indices = np.array([[0, 1], [2, 3]], np.uint8)
    palette_mask = Image.frombytes("P", (2, 2), indices.tobytes())
    palette_mask.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0])
    np.testing.assert_array_equal(load_label_mask(save(tmp_path / "voc.png", palette_mask)), indices)
    with pytest.raises(DatasetError) as info:
        load_label_mask(save(tmp_path / "colour.png", rgb))
    assert str(info.value).startswith(str(tmp_path / "colour.png"))


# ------------------------------------------------------------------------------- annotations
def test_box_outside_image():
    with pytest.raises(DatasetError, match=r"^labels\.json: box 1 .*outside the 32x24 image"):
        check_boxes([[0, 0, 10, 10], [20, 5, 35, 10]], 32, 24, "labels.json")


def test_box_within_tolerance_is_clipped():
    boxes = check_boxes([[-0.5, 0, 32.8, 24]], 32, 24, "labels.json")
    assert boxes.dtype == np.float32
    np.testing.assert_array_equal(boxes, [[0, 0, 32, 24]])


@pytest.mark.parametrize("box", [[5, 5, 5, 10], [5, 10, 9, 3]])
def test_degenerate_box(box):
    with pytest.raises(DatasetError, match=r"^a\.txt:3: box 0 .*degenerate"):
        check_boxes([box], 32, 24, "a.txt:3")


def test_nan_box():
    with pytest.raises(DatasetError, match=r"^a\.json: .*NaN"):
        check_boxes(np.array([[1, 1, np.nan, 4]]), 32, 24, "a.json")


def test_no_boxes_is_fine():
    assert check_boxes(np.zeros((0, 4)), 32, 24, "a.json").shape == (0, 4)


@pytest.mark.parametrize("ids", [[0, 3], [-1], [1.5]])
def test_class_id_out_of_range_or_not_integer(ids):
    with pytest.raises(DatasetError, match=r"^data/x\.txt:7: class id"):
        check_class_ids(ids, 3, "data/x.txt:7")


def test_class_ids_are_int64():
    ids = check_class_ids([0.0, 2.0], 3, "x")
    assert ids.dtype == np.int64 and ids.tolist() == [0, 2]


def test_mask_size_mismatch():
    with pytest.raises(DatasetError, match=r"^masks/a\.png: mask size 30x20 \(WxH\) does not match .* 32x24"):
        check_mask(np.zeros((20, 30), np.uint8), (24, 32, 3), "masks/a.png")
    check_mask(np.zeros((2, 24, 32), bool), (24, 32), "masks/a.png")


@pytest.mark.parametrize("points", [[1, 2, 3, 4], [[1, 2], [3, 4]], []])
def test_polygon_with_fewer_than_3_points(points):
    with pytest.raises(DatasetError, match=r"^a\.json: .*at least 3"):
        check_polygon(points, "a.json")


def test_polygon_shape():
    assert check_polygon([0, 0, 4, 0, 4, 4], "a.json").shape == (3, 2)


# ----------------------------------------------------------------------------------- pairing
def test_label_without_image():
    with pytest.raises(DatasetError) as info:
        pair_images_and_labels(["im/a.png"], ["lb/a.txt", "lb/b.txt"], allow_unlabelled=True)
    assert str(info.value).startswith(str(Path("lb/b.txt")))
    assert "no image" in str(info.value)


def test_image_without_label():
    with pytest.raises(DatasetError) as info:
        pair_images_and_labels(["im/a.png", "im/b.png"], ["lb/a.txt"])
    assert str(info.value).startswith(str(Path("im/b.png")))
    assert "allow_unlabelled=True" in str(info.value)


def test_image_without_label_allowed_as_background():
    pairs = pair_images_and_labels(["im/a.png", "im/b.png"], ["lb/a.txt"], allow_unlabelled=True)
    assert pairs == [(Path("im/a.png"), Path("lb/a.txt")), (Path("im/b.png"), None)]


def test_duplicate_stems():
    with pytest.raises(DatasetError, match="same stem"):
        pair_images_and_labels(["im/a.png", "im/sub/a.jpg"], [])
