"""How fast are the augmentation presets? torchvision v2 vs albumentations, and DataLoader workers.

Run from the project root::

    .venv/bin/python benchmarks/augmentation.py            # ~1-2 minutes on 2 cores
    .venv/bin/python benchmarks/augmentation.py --quick    # a few seconds, to check it runs

Prints two Markdown tables and writes ``build/benchmarks/augmentation.json`` (with the machine
and library versions):

1. images/s of each training preset (``cvhelpers.augment.presets.train_preset``) in both libraries on
   the same images: the scenes benchmark (160 px, with boxes/masks for detection and
   segmentation) and real photos (~512 px, cropped to 224). One thread each (torch and OpenCV),
   as inside a DataLoader worker.
2. images/s of a DataLoader over the scenes with each library's classification preset, for
   ``num_workers`` 0, 1, 2 and ``pin_memory`` off/on (pinning only matters with a GPU; without
   one PyTorch ignores it). With ``num_workers=0`` the transforms run in the main process with
   all its torch threads, which slows torchvision's small per-image ops down badly on a busy
   machine; a row with 1 main thread shows it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cvhelpers.env import environment_report, setup  # noqa: E402

setup()
import cv2  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from cvhelpers.data.photos import list_photos  # noqa: E402
from cvhelpers.data.scenes import generate_scenes  # noqa: E402
from cvhelpers.augment.presets import BACKENDS, TASKS, AugmentedDataset, train_preset  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "build" / "benchmarks" / "augmentation.json"


def _samples(scenes, task: str) -> list[dict]:
    """The inputs each task really transforms: boxes + labels for detection, masks for
    segmentation, the image alone for classification."""
    if task == "detection":
        return [{"image": s.image, "boxes": s.boxes, "labels": s.labels} for s in scenes]
    if task == "segmentation":
        return [{"image": s.image, "mask": s.semantic, "masks": s.masks} for s in scenes]
    return [{"image": s.image} for s in scenes]


def images_per_second(preset, samples: list[dict], repeats: int) -> float:
    """Best of ``repeats`` passes over ``samples`` (the best pass is the least disturbed by
    other processes on a shared machine)."""
    for sample in samples[:4]:  # warm-up: first calls build caches
        preset(**sample)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for sample in samples:
            preset(**sample)
        best = min(best, time.perf_counter() - start)
    return len(samples) / best


def pipeline_table(n_images: int, repeats: int) -> list[dict]:
    scenes = generate_scenes("val", n_images, seed=0)
    photos = [p.load() for p in list_photos()][:max(4, n_images // 4)]
    image_sets = {"scenes 160px": (scenes, 160), "photos ->224px": (photos, 224)}
    rows = []
    for task in TASKS:
        for set_name, (items, size) in image_sets.items():
            if set_name.startswith("photos"):
                samples = [{"image": photo} for photo in items]
                if task != "classification":
                    continue  # photos carry no boxes or masks
            else:
                samples = _samples(items, task)
            speed = {backend: images_per_second(train_preset(task, backend, size=size), samples,
                                                repeats) for backend in BACKENDS}
            faster = max(speed, key=speed.get)
            rows.append({"task": task, "images": set_name, "n": len(samples), **speed,
                         "ratio_albu_over_tv": speed["albumentations"] / speed["torchvision"],
                         "faster": faster})
    return rows


def loader_table(n_images: int, default_threads: int) -> list[dict]:
    scenes = generate_scenes("val", n_images, seed=0)
    images = np.stack([s.image for s in scenes])
    labels = np.array([int(s.labels[0]) for s in scenes])  # the first object's class
    rows = []
    for backend in BACKENDS:
        preset = train_preset("classification", backend, size=160)
        dataset = AugmentedDataset(images, labels, preset)
        # num_workers=0 transforms in the main process, with all its torch threads; the extra
        # 1-thread row shows what that costs (workers always run torch with 1 thread).
        for workers, main_threads in ((0, default_threads), (0, 1), (1, default_threads),
                                      (2, default_threads)):
            torch.set_num_threads(main_threads)
            for pin in (False, True):
                loader = DataLoader(dataset, batch_size=32, shuffle=True, num_workers=workers,
                                    pin_memory=pin)
                start = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "pin_memory ... no accelerator is found"
                    seen = sum(len(batch[0]) for batch in loader)
                seconds = time.perf_counter() - start  # includes starting the workers
                rows.append({"backend": backend, "num_workers": workers,
                             "main_threads": main_threads, "pin_memory": pin,
                             "images_per_s": seen / seconds, "epoch_s": seconds})
            torch.set_num_threads(default_threads)
    return rows


def markdown(rows: list[dict], columns: list[str]) -> str:
    def fmt(value):
        return f"{value:,.1f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that it runs")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    n_images, repeats, n_loader = (8, 1, 64) if args.quick else (48, 3, 384)

    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    cv2.setNumThreads(1)
    pipelines = pipeline_table(n_images, repeats)
    torch.set_num_threads(default_threads)  # a training process's main thread has them all
    cv2.setNumThreads(-1)
    loaders = loader_table(n_loader, default_threads)

    recommended = {}
    for task in TASKS:
        task_rows = [r for r in pipelines if r["task"] == task]
        wins = [r["faster"] for r in task_rows]
        recommended[task] = max(set(wins), key=wins.count)
    print("## Training presets, images/s (1 thread; best of", repeats, "passes)\n")
    print(markdown(pipelines, ["task", "images", "n", "torchvision", "albumentations",
                               "ratio_albu_over_tv", "faster"]))
    print(f"\n## DataLoader over {n_loader} scenes, classification preset, batch 32 "
          "(one epoch, worker start included)\n")
    print(markdown(loaders, ["backend", "num_workers", "main_threads", "pin_memory",
                             "images_per_s", "epoch_s"]))
    print("\nrecommended backend per task:", recommended)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "augmentation", "quick": args.quick, "pipelines": pipelines,
        "dataloader": loaders, "recommended_backend": recommended,
        "environment": environment_report()}, indent=2))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
