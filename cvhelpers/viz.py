"""Pictures for the lessons: image grids, learning curves, confusion matrices, boxes and masks.

Only matplotlib, NumPy and Pillow: nothing else from ``cvhelpers`` is imported, so these
functions take plain arrays or tensors. Figure functions return the ``Figure`` (no
``plt.show()`` inside: a notebook displays a returned figure, a script can ``fig.savefig``);
drawing functions return a new ``H x W x 3`` ``uint8`` RGB array and leave the input untouched.

Accepted image layouts: ``H x W`` grayscale, ``H x W x 1|3|4`` (NumPy style) or
``1|3 x H x W`` (torch style); ``uint8`` in ``[0, 255]`` or float in ``[0, 1]`` (float images
outside ``[0, 1]``, e.g. normalised ones, are rescaled to their own min..max for display).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "PALETTE",
    "to_display_image",
    "to_rgb_uint8",
    "show_images",
    "plot_history",
    "plot_confusion_matrix",
    "draw_boxes",
    "overlay_mask",
    "show_mistakes",
    "show_confused_pair",
    "plot_data_flow",
]

# matplotlib's "tab10" colours as RGB bytes: class id k is drawn in PALETTE[k % 10].
PALETTE: list[tuple[int, int, int]] = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu()
        return (x.float() if str(x.dtype) == "torch.bfloat16" else x).numpy()
    return np.asarray(x)


def to_display_image(image: Any) -> np.ndarray:
    """One image as ``H x W`` (grayscale) or ``H x W x 3|4``, ``uint8`` or float in ``[0, 1]``."""
    img = _as_array(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3, 4):
        img = img.transpose(1, 2, 0)  # C x H x W -> H x W x C
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (3, 4)):
        raise ValueError(f"cannot show an image of shape {img.shape}; expected H x W, "
                         "H x W x C or C x H x W with C in 1, 3, (4)")
    if img.dtype == np.uint8:
        return img
    img = img.astype(np.float32)
    if img.size and (img.min() < 0.0 or img.max() > 1.0):
        low, high = float(img.min()), float(img.max())
        img = (img - low) / (high - low) if high > low else np.zeros_like(img)
    return img


def to_rgb_uint8(image: Any) -> np.ndarray:
    """One image as a new ``H x W x 3`` ``uint8`` RGB array (gray is repeated, alpha dropped)."""
    img = to_display_image(image)
    if img.dtype != np.uint8:
        img = np.round(img * 255.0).astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3])


def _split_batch(images: Any) -> list[Any]:
    if isinstance(images, (list, tuple)):
        return list(images)
    arr = images
    ndim = len(arr.shape)
    if ndim == 4:
        return [arr[i] for i in range(arr.shape[0])]
    if ndim == 3:
        is_tensor = hasattr(arr, "detach")
        # a single image after all: torch 1|3 x H x W, or NumPy H x W x 3|4
        if (is_tensor and arr.shape[0] in (1, 3)) or (not is_tensor and arr.shape[-1] in (3, 4)):
            return [arr]
        return [arr[i] for i in range(arr.shape[0])]  # N x H x W grayscale batch
    if ndim == 2:
        return [arr]
    raise ValueError(f"expected a list of images or a batch array, got shape {arr.shape}")


def show_images(images: Any, titles: Sequence[str] | None = None, ncols: int = 8, *,
                title_colors: Sequence[str] | None = None, cmap: str = "gray",
                size: float = 1.6, suptitle: str | None = None) -> Figure:
    """A grid of images, one subplot per image (unused grid cells are removed).

    Args:
        images: a list of images in any accepted layout, a batch ``N x C x H x W`` or
            ``N x H x W x C``, or ``N x H x W`` grayscale. A single 3-D array counts as one image
            when it looks like one (torch ``1|3 x H x W``, NumPy ``H x W x 3``).
        titles: one title per image.
        ncols: images per row.
        title_colors: one matplotlib colour per title (e.g. red for mistakes).
        cmap: colour map for grayscale images.
        size: inches per image.
        suptitle: a title for the whole figure.

    Returns:
        The figure, with ``len(images)`` axes.

    Example::

        fig = show_images(images[:16], titles=[class_names[i] for i in labels[:16]])
    """
    items = _split_batch(images)
    if not items:
        raise ValueError("show_images: no images given")
    if titles is not None and len(titles) != len(items):
        raise ValueError(f"{len(titles)} titles for {len(items)} images")
    ncols = max(1, min(ncols, len(items)))
    nrows = -(-len(items) // ncols)  # ceiling division
    # constrained layout, not tight_layout: it keeps each row's titles clear of the row above
    # when the images' fixed aspect leaves the axes narrower or shorter than their grid cell
    title_room = 0.25 if titles is not None else 0.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + title_room) * nrows + 0.4),
                             squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        if i >= len(items):
            fig.delaxes(ax)
            continue
        img = to_display_image(items[i])
        ax.imshow(img, cmap=cmap if img.ndim == 2 else None,
                  vmin=0, vmax=255 if img.dtype == np.uint8 else 1)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            color = title_colors[i] if title_colors is not None else "black"
            ax.set_title(str(titles[i]), fontsize=8, color=color)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def plot_history(history: Mapping[str, Any] | Any) -> Figure:
    """Learning curves: loss (left) and accuracy (right) per epoch, train vs. validation.

    Args:
        history: ``History.to_dict()`` from ``cvhelpers.train.engine.fit`` (or the ``History`` itself):
            lists ``train_loss``, ``val_loss`` and optionally ``train_accuracy``,
            ``val_accuracy``, ``epoch``; ``best_epoch`` (1-based) is marked with a dashed line,
            and when ``stop_reason`` is ``"early_stopping"`` the epoch it fired at gets a red
            line (the epochs between the two are the patience it spent).

    Returns:
        A figure with 2 axes, or 1 when there is no accuracy (e.g. detection).
    """
    h = history.to_dict() if hasattr(history, "to_dict") else dict(history)
    epochs = list(h.get("epoch") or range(1, len(h["train_loss"]) + 1))

    def has_values(key: str) -> bool:
        return key in h and len(h[key]) > 0 and not np.all(np.isnan(np.asarray(h[key], float)))

    panels = [("loss", "loss")]
    if has_values("train_accuracy") or has_values("val_accuracy"):
        panels.append(("accuracy", "accuracy"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (metric, label) in zip(axes.flat, panels):
        for split, style in (("train", "o-"), ("val", "s-")):
            key = f"{split}_{metric}"
            if has_values(key):
                ax.plot(epochs, h[key], style, label=split, markersize=4)
        if h.get("best_epoch") is not None:
            ax.axvline(h["best_epoch"], color="gray", linestyle="--", linewidth=1, label="best")
        if h.get("stop_reason") == "early_stopping":
            ax.axvline(epochs[-1], color="red", linewidth=1.2, label="early stopping fired")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return fig


def plot_confusion_matrix(cm: Any, class_names: Sequence[str] | None = None,
                          normalize: bool = True) -> Figure:
    """Show a confusion matrix (rows = true class, columns = predicted) as a heat map.

    Args:
        cm: ``K x K`` counts, e.g. from ``cvhelpers.evaluation.metrics.confusion_matrix``.
        class_names: ``K`` names for the ticks.
        normalize: divide each row by its total, so cells read as "fraction of class i
            predicted as j" and the diagonal is each class's recall (rows without samples
            stay 0). ``False`` shows raw counts.

    Returns:
        A figure with 2 axes: the matrix and its colour bar. Cells are annotated when K <= 20.
    """
    counts = _as_array(cm).astype(np.int64)
    k = counts.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    values = counts.astype(np.float64)
    if normalize:
        row_sums = values.sum(axis=1, keepdims=True)
        values = np.divide(values, row_sums, out=np.zeros_like(values), where=row_sums > 0)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * k, 0.5 + 0.5 * k))
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, label="fraction of true class" if normalize else "count")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix" + (" (rows sum to 1)" if normalize else " (counts)"))
    if k <= 20:
        threshold = values.max() / 2 if values.size else 0
        for i in range(k):
            for j in range(k):
                text = f"{values[i, j]:.2f}" if normalize else str(counts[i, j])
                ax.text(j, i, text, ha="center", va="center", fontsize=7,
                        color="white" if values[i, j] > threshold else "black")
    fig.tight_layout()
    return fig


def draw_boxes(image: Any, boxes_xyxy: Any, labels: Any | None = None,
               class_names: Sequence[str] | None = None, scores: Any | None = None, *,
               width: int = 2) -> np.ndarray:
    """Draw boxes (and optional class names and scores) on a copy of ``image``.

    Args:
        image: any accepted layout; the result is RGB.
        boxes_xyxy: ``N x 4`` absolute pixel ``x1, y1, x2, y2`` with ``x2, y2`` the exclusive
            edge (torchvision convention): the outline covers pixel columns ``x1 .. x2-1``.
        labels: ``N`` class ids (0-based); sets colour and caption. ``None``: plain boxes.
        class_names: names for the captions (default: the id).
        scores: ``N`` confidences, appended to captions as ``0.87``.
        width: line width in pixels, drawn inwards from the box edge.

    Returns:
        ``H x W x 3`` ``uint8`` RGB array. Captions sit on a filled label above the box (inside
        it when the box touches the top of the image).
    """
    canvas = Image.fromarray(to_rgb_uint8(image))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    boxes = _as_array(boxes_xyxy).reshape(-1, 4)
    label_ids = _as_array(labels).astype(int).ravel() if labels is not None else None
    score_values = _as_array(scores).ravel() if scores is not None else None
    for i, (x1, y1, x2, y2) in enumerate(np.round(boxes).astype(int)):
        class_id = int(label_ids[i]) if label_ids is not None else 0
        color = PALETTE[class_id % len(PALETTE)]
        # PIL includes both corners, so the exclusive x2/y2 edge becomes x2-1/y2-1
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=color, width=width)
        if label_ids is None and score_values is None:
            continue
        caption = ""
        if label_ids is not None:
            caption = class_names[class_id] if class_names is not None else str(class_id)
        if score_values is not None:
            caption = f"{caption} {score_values[i]:.2f}".strip()
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        text_w, text_h = right - left + 4, bottom - top + 4
        y_text = y1 - text_h if y1 - text_h >= 0 else y1 + width
        draw.rectangle([x1, y_text, x1 + text_w - 1, y_text + text_h - 1], fill=color)
        draw.text((x1 + 2 - left, y_text + 2 - top), caption, fill=(255, 255, 255), font=font)
    return np.asarray(canvas).copy()


def overlay_mask(image: Any, semantic_mask: Any, alpha: float = 0.5) -> np.ndarray:
    """Tint each object pixel with its class colour; background pixels stay unchanged.

    Args:
        image: any accepted layout, ``H x W``.
        semantic_mask: ``H x W`` integers, 0 = background, ``class_id + 1`` for objects (the
            course's mask convention); class id ``k`` gets ``PALETTE[k % 10]``.
        alpha: opacity of the colour, 0 (invisible) to 1 (solid).

    Returns:
        ``H x W x 3`` ``uint8`` RGB: ``(1 - alpha) * image + alpha * colour`` on object pixels.
    """
    rgb = to_rgb_uint8(image)
    mask = _as_array(semantic_mask).astype(np.int64)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image size {rgb.shape[:2]}")
    palette = np.array(PALETTE, dtype=np.float32)
    colors = palette[(mask - 1) % len(PALETTE)]  # H x W x 3; background rows are ignored below
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colors
    out = rgb.copy()
    objects = mask > 0
    out[objects] = np.round(blended[objects]).clip(0, 255).astype(np.uint8)
    return out


def show_mistakes(images: Any, true_labels: Any, pred_labels: Any,
                  class_names: Sequence[str] | None = None, confidences: Any | None = None,
                  ncols: int = 8) -> Figure:
    """A gallery of predictions titled ``true: X`` / ``pred: Y (0.97)``, wrong ones in red.

    Typical use with ``cvhelpers.evaluation.metrics.worst_mistakes``::

        idx = worst_mistakes(probs, targets, k=16)
        show_mistakes(images[idx], targets[idx], probs[idx].argmax(1), class_names,
                      confidences=probs[idx].max(1))

    Args:
        images: ``N`` images (any layout accepted by :func:`show_images`).
        true_labels, pred_labels: ``N`` class ids.
        class_names: names for the titles (default: the ids).
        confidences: ``N`` probabilities of the predicted class, shown in the title.
        ncols: images per row.

    Returns:
        The figure, with ``N`` axes.
    """
    true_ids = _as_array(true_labels).astype(int).ravel()
    pred_ids = _as_array(pred_labels).astype(int).ravel()
    conf = _as_array(confidences).ravel() if confidences is not None else None

    def name(i: int) -> str:
        return class_names[i] if class_names is not None else str(i)

    titles, colors = [], []
    for i, (t, p) in enumerate(zip(true_ids, pred_ids)):
        suffix = f" ({conf[i]:.2f})" if conf is not None else ""
        titles.append(f"true: {name(t)}\npred: {name(p)}{suffix}")
        colors.append("black" if t == p else "red")
    return show_images(images, titles=titles, ncols=ncols, title_colors=colors,
                       size=1.8, suptitle="predictions (wrong ones in red)")
def error_overlay(image: np.ndarray, pred: np.ndarray, target: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """``uint8 H x W x 3``: wrong pixels tinted red (missed object) or yellow (wrong class or
    false object), right ones left as they are."""
    out = image.astype(np.float32).copy()
    missed = (pred != target) & (pred == 0)
    wrong = (pred != target) & (pred != 0)
    for where, colour in ((missed, (255, 0, 0)), (wrong, (255, 220, 0))):
        out[where] = (1 - alpha) * out[where] + alpha * np.array(colour, np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def show_confused_pair(images: Any, true_labels: Any, pred_labels: Any, pair: tuple[int, int],
                       class_names: Sequence[str] | None = None, per_row: int = 8) -> Figure:
    """Two rows of examples for two confusable classes ``a, b``: ``a`` predicted as ``b``
    (top), ``b`` predicted as ``a`` (bottom), with how many there are of each.

    Args:
        images, true_labels, pred_labels: the evaluated images (``N``, any layout) and ids.
        pair: the two class ids, e.g. ``(6, 0)`` for Shirt vs T-shirt/top.
        per_row: at most this many examples per row (the first ones, in data order).

    Returns:
        A figure with ``2 x per_row`` axes; ``fig.counts`` is ``(a as b, b as a)``.
    """
    true_ids = _as_array(true_labels).astype(int).ravel()
    pred_ids = _as_array(pred_labels).astype(int).ravel()
    a, b = pair
    name = (lambda i: class_names[i]) if class_names is not None else str
    rows = [np.flatnonzero((true_ids == a) & (pred_ids == b)), np.flatnonzero((true_ids == b) & (pred_ids == a))]
    width = max(1.6 * per_row, 4.8)  # room for the row labels and the title, however few columns
    fig, axes = plt.subplots(2, per_row, figsize=(width, 4.0), squeeze=False)
    batch = _split_batch(images)
    for r, (found, (t, p)) in enumerate(zip(rows, ((a, b), (b, a)))):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([]), ax.set_yticks([])
            if c < len(found):
                ax.imshow(to_display_image(batch[found[c]]), cmap="gray")
            if c == 0:
                ax.set_ylabel(f"{name(t)}\nas {name(p)}\n({len(found)})", fontsize=8)
    title = (f"{name(a)} vs {name(b)}: true class predicted as the other "
             f"({len(rows[0])} and {len(rows[1])} test images)")
    fig.suptitle(textwrap.fill(title, width=int(7.5 * width)))  # about 7.5 characters an inch at 12 pt
    fig.tight_layout()
    fig.counts = (len(rows[0]), len(rows[1]))  # type: ignore[attr-defined]
    return fig


def plot_data_flow(stages: Sequence[tuple[str, Sequence[int]]], skips: Sequence[tuple[int, int]] = (),
                   title: str = "Data flow", skip_label: str = "skip: copied, then concatenated") -> Figure:
    """A network's data flow as a diagram: one box per stage, placed by resolution.

    Each stage is ``(name, (channels, height, width))`` in the order the forward pass visits
    them; a box's width grows with its channels and its row is its resolution (halving the
    size moves one row down), so an encoder-decoder draws its own "U". ``skips`` are pairs of
    stage indices joined by a dashed arrow (a U-Net's copy-and-concatenate, an FPN's lateral).
    :func:`cvhelpers.segmentation.unet.unet_data_flow` traces a U-Net's stages,
    :func:`cvhelpers.detection.models.fpn_data_flow` a feature pyramid's; ``skip_label`` names
    the dashed arrows in the legend.

    Returns:
        A figure with one axis: x is the order in the forward pass, y the feature map's size in
        pixels.
    """
    from matplotlib.patches import FancyArrowPatch, Rectangle

    sizes = [int(shape[1]) for _, shape in stages]
    channels = [int(shape[0]) for _, shape in stages]
    levels = [np.log2(sizes[0] / s) for s in sizes]
    widest = max(channels)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(stages)), 4.5))
    centres = []
    for i, ((name, shape), level, c) in enumerate(zip(stages, levels, channels)):
        x, y, w = 1.5 * i, -1.4 * level, 0.35 + 0.9 * c / widest
        centres.append((x, y, w))
        ax.add_patch(Rectangle((x - w / 2, y - 0.35), w, 0.7, facecolor=_unit_rgb(PALETTE[int(round(level)) % 10]),
                               alpha=0.55, edgecolor="black"))
        ax.text(x, y + 0.45, name, ha="center", va="bottom", fontsize=8)
        ax.text(x, y, f"{c} ch\n{shape[1]}x{shape[2]}", ha="center", va="center", fontsize=7)
        if i:
            px, py, pw = centres[i - 1]
            ax.add_patch(FancyArrowPatch((px + pw / 2, py), (x - w / 2, y), arrowstyle="-|>", mutation_scale=10))
    for a, b in skips:
        (ax_, ay, aw), (bx, by, bw) = centres[a], centres[b]
        ax.add_patch(FancyArrowPatch((ax_ + aw / 2, ay + 0.2), (bx - bw / 2, by + 0.2), arrowstyle="-|>",
                                     mutation_scale=10, linestyle="--", color="tab:red",
                                     connectionstyle="arc3,rad=-0.08"))
    ax.plot([], [], "--", color="tab:red", label=skip_label)
    ax.legend(loc="lower right", fontsize=8)
    unique = sorted(set(zip(levels, sizes)))
    ax.set_yticks([-1.4 * lv for lv, _ in unique], [f"{s} px" for _, s in unique])
    ax.set_xticks([1.5 * i for i in range(len(stages))], [str(i) for i in range(len(stages))])
    ax.set(xlim=(-1, 1.5 * len(stages) - 0.5), ylim=(-1.4 * max(levels) - 0.8, 1.0),
           xlabel="stage, in the order of the forward pass", ylabel="feature map size (height)", title=title)
    fig.tight_layout()
    return fig


def _unit_rgb(color: tuple[int, int, int]) -> tuple[float, float, float]:
    return (color[0] / 255, color[1] / 255, color[2] / 255)
