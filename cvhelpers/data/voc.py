"""Pascal VOC XML annotations: read and write them, with the same checks as the COCO and YOLO readers.

A VOC dataset is a folder of one XML file per image (``Annotations/``) beside the images
(``JPEGImages/``); each ``<object>`` has a ``<name>`` (the class), a ``<bndbox>``
(``xmin, ymin, xmax, ymax`` in pixels) and the flags ``<difficult>`` (evaluation ignores it)
and ``<truncated>`` (the object continues outside the image). labelme's ``labelme2voc.py``,
CVAT and LabelImg write this layout.

Pixel convention: the original PASCAL VOC devkit numbers pixels from 1 and its ``xmax`` is
inclusive; tools such as labelme write 0-based floats. In memory (``AnnotatedImage``) boxes are
0-based ``xyxy`` with exclusive ``x2, y2``: ``one_based=True`` converts the devkit's integers
(``x1 = xmin - 1``, ``x2 = xmax``); the default reads the values as written, which is what
labelme means and what :func:`write_voc` writes.

Example:
    >>> samples, names = read_voc("VOCdevkit/VOC2012", one_based=True)   # doctest: +SKIP
    >>> write_voc_dataset(samples, "out/voc", names)                      # doctest: +SKIP
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cvhelpers.data.coco import AnnotatedImage
from cvhelpers.data.validate import DatasetError, PathLike, check_boxes, load_image

__all__ = ["VOC_BACKGROUND", "read_voc", "read_voc_file", "write_voc", "write_voc_dataset"]

#: The name labelme and the VOC segmentation files give class 0; it is never an object class.
VOC_BACKGROUND = "_background_"


def _text(element: ET.Element, tag: str, where: str, required: bool = True) -> str | None:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        if required:
            raise DatasetError(f"{where}: <{tag}> is missing or empty")
        return None
    return child.text.strip()


def _number(element: ET.Element, tag: str, where: str) -> float:
    text = _text(element, tag, where)
    try:
        value = float(text)  # type: ignore[arg-type]
    except ValueError:
        raise DatasetError(f"{where}: <{tag}> is {text!r}, not a number") from None
    if not math.isfinite(value):
        raise DatasetError(f"{where}: <{tag}> is {text!r}, not a finite number")
    return value


def _flag(element: ET.Element, tag: str, where: str) -> bool:
    text = _text(element, tag, where, required=False)  # labelme writes empty <difficult/>
    if text is None:
        return False
    if text not in ("0", "1"):
        raise DatasetError(f"{where}: <{tag}> is {text!r}, expected 0 or 1")
    return text == "1"


def read_voc_file(xml_path: PathLike, images_dir: PathLike, class_names: Sequence[str], *,
                  one_based: bool = False) -> AnnotatedImage:
    """Read one VOC XML file and its image, checking everything on the way.

    Args:
        xml_path: the annotation file.
        images_dir: the folder ``<filename>`` is relative to.
        class_names: class id = position of ``<name>`` in this list.
        one_based: the devkit's 1-based inclusive coordinates (see the module docstring).

    Returns:
        An :class:`AnnotatedImage` with ``difficult`` and ``truncated`` flags, no masks.

    Raises:
        DatasetError: the message starts with ``xml_path`` and names the element: malformed XML
            (with its line), missing ``<filename>`` / ``<size>`` / ``<name>`` / a coordinate, a
            coordinate that is not a number, an unknown class name, a size that differs from
            the image file, a box outside the image or degenerate, a missing image file.
    """
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        raise DatasetError(f"{xml_path}: annotation file not found")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as error:
        raise DatasetError(f"{xml_path}: not well-formed XML ({error})") from None
    if root.tag != "annotation":
        raise DatasetError(f"{xml_path}: the root element is <{root.tag}>, expected <annotation>")
    file_name = _text(root, "filename", str(xml_path))
    image_path = Path(images_dir) / file_name  # type: ignore[operator]
    if not image_path.is_file():
        raise DatasetError(f"{xml_path}: <filename> {file_name!r}: image file {image_path} not found")
    image = load_image(image_path)
    height, width = image.shape[:2]
    size = root.find("size")
    if size is None:
        raise DatasetError(f"{xml_path}: <size> is missing")
    declared = (_number(size, "width", f"{xml_path}: <size>"), _number(size, "height", f"{xml_path}: <size>"))
    if declared != (width, height):
        raise DatasetError(f"{xml_path}: <size> says {declared[0]:g}x{declared[1]:g} but {image_path} is "
                           f"{width}x{height} (after EXIF rotation)")
    index = {name: k for k, name in enumerate(class_names)}
    boxes, labels, difficult, truncated = [], [], [], []
    for k, obj in enumerate(root.findall("object")):
        where = f"{xml_path}: <object> {k}"
        name = _text(obj, "name", where)
        if name not in index:
            raise DatasetError(f"{where}: class {name!r} is not one of the {len(class_names)} class names "
                               f"({', '.join(class_names[:6])}{'...' if len(class_names) > 6 else ''})")
        where = f"{where} ({name})"
        box = obj.find("bndbox")
        if box is None:
            raise DatasetError(f"{where}: <bndbox> is missing")
        x1, y1, x2, y2 = (_number(box, tag, f"{where} <bndbox>") for tag in ("xmin", "ymin", "xmax", "ymax"))
        if one_based:
            x1, y1 = x1 - 1, y1 - 1
        boxes.append(check_boxes([[x1, y1, x2, y2]], width, height, where)[0])
        labels.append(index[name])
        difficult.append(_flag(obj, "difficult", where))
        truncated.append(_flag(obj, "truncated", where))
    return AnnotatedImage(image=image, boxes=np.array(boxes, np.float32).reshape(-1, 4),
                          labels=np.array(labels, np.int64), file_name=str(file_name),
                          iscrowd=np.zeros(len(labels), bool), difficult=np.array(difficult, bool),
                          truncated=np.array(truncated, bool))


def _voc_folders(root: Path, images_dir: PathLike | None) -> tuple[Path, Path]:
    annotations = root / "Annotations" if (root / "Annotations").is_dir() else root
    images = Path(images_dir) if images_dir is not None else root / "JPEGImages"
    if not images.is_dir():
        raise DatasetError(f"{images}: images folder not found (pass images_dir)")
    return annotations, images


def read_voc(root: PathLike, images_dir: PathLike | None = None, class_names: Sequence[str] | None = None, *,
             one_based: bool = False) -> tuple[list[AnnotatedImage], list[str]]:
    """Read a VOC folder: ``root/Annotations/*.xml`` (or ``root/*.xml``) and ``root/JPEGImages``.

    Args:
        root: the dataset folder (or the folder of the XML files, with ``images_dir``).
        images_dir: default ``root/JPEGImages``.
        class_names: class id = position in this list. Default: ``root/class_names.txt`` (one
            name per line; labelme's first line ``_background_`` is dropped), else the sorted
            names found in the files.
        one_based: see :func:`read_voc_file`.

    Returns:
        ``(samples, class_names)``, samples in file-name order.
    """
    root = Path(root)
    annotations, images = _voc_folders(root, images_dir)
    files = sorted(annotations.glob("*.xml"))
    if not files:
        raise DatasetError(f"{annotations}: no .xml annotation files")
    if class_names is None:
        names_file = root / "class_names.txt"
        if names_file.is_file():
            class_names = [n.strip() for n in names_file.read_text(encoding="utf-8").splitlines() if n.strip()]
            class_names = [n for n in class_names if n != VOC_BACKGROUND]
        else:
            found: set[str] = set()
            for path in files:
                try:
                    found |= {(o.findtext("name") or "").strip() for o in ET.parse(path).getroot().findall("object")}
                except ET.ParseError as error:
                    raise DatasetError(f"{path}: not well-formed XML ({error})") from None
            class_names = sorted(found - {""})
    names = list(class_names)
    return [read_voc_file(path, images, names, one_based=one_based) for path in files], names


def _sub(parent: ET.Element, tag: str, text: Any = None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = str(text)
    return child


def write_voc(sample: AnnotatedImage, xml_path: PathLike, class_names: Sequence[str]) -> Path:
    """Write one sample's boxes as a VOC XML file (0-based coordinates, as :func:`read_voc_file`
    reads them by default); ``difficult`` / ``truncated`` default to 0. Returns the path."""
    height, width = np.asarray(sample.image).shape[:2]
    depth = 1 if np.asarray(sample.image).ndim == 2 else np.asarray(sample.image).shape[2]
    root = ET.Element("annotation")
    _sub(root, "filename", sample.file_name)
    size = _sub(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", depth)):
        _sub(size, tag, value)
    n = len(sample.labels)
    difficult = sample.difficult if sample.difficult is not None else np.zeros(n, bool)
    truncated = sample.truncated if sample.truncated is not None else np.zeros(n, bool)
    for box, label, diff, trunc in zip(np.asarray(sample.boxes, np.float64).reshape(-1, 4), sample.labels,
                                       difficult, truncated):
        obj = _sub(root, "object")
        _sub(obj, "name", class_names[int(label)])
        _sub(obj, "truncated", int(bool(trunc)))
        _sub(obj, "difficult", int(bool(diff)))
        bndbox = _sub(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box.tolist()):
            _sub(bndbox, tag, repr(float(value)))
    ET.indent(root)
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(xml_path, encoding="utf-8", xml_declaration=True)
    return xml_path


def write_voc_dataset(samples: Sequence[AnnotatedImage], root: PathLike, class_names: Sequence[str],
                      write_images: bool = True) -> Path:
    """Write ``root/Annotations/<stem>.xml``, ``root/JPEGImages/<file_name>`` and
    ``root/class_names.txt``; returns ``root``."""
    root = Path(root)
    for sample in samples:
        if not sample.file_name:
            raise ValueError("every sample needs a file_name to be written as VOC")
        write_voc(sample, root / "Annotations" / (Path(sample.file_name).stem + ".xml"), class_names)
        if write_images:
            (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(sample.image)).save(root / "JPEGImages" / sample.file_name)
    (root / "class_names.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")
    return root
