"""Faster R-CNN on the real-objects benchmark: ImageNet backbone vs from scratch, same work, test split.

The detection recipe of notebook 12 (:mod:`cvhelpers.recipes`: Faster R-CNN on the Lite0-FPN,
anchors fitted to the training boxes, SGD 0.02 at batch 8 with momentum 0.9 and weight decay
1e-4, warm-up + cosine, gradients clipped at 10, random flips; notebook 05b's settings) trained
twice on the same 1,200 training scenes of ``datasets/objects`` for the same number of steps:
once on the ImageNet Lite0 backbone, once from random weights. Both are scored once on the 300
test scenes, whose objects come from Fashion-MNIST's test photos (never seen in training), with
the course's COCO evaluator. Neither side is tuned on this data: both take the recipe as it is.
Run from the project root::

    .venv/bin/python benchmarks/real_objects.py             # the recorded run (~11 min on 2 cores)
    .venv/bin/python benchmarks/real_objects.py --quick     # seconds, to check it runs

Prints a Markdown table (overall and per-class AP@0.5) and writes
``docs/results/real_objects.json`` (``--out`` to change; with the machine and library versions).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cvhelpers.env import environment_report, machine_info, package_versions, seed_everything, setup  # noqa: E402

setup()
import numpy as np  # noqa: E402

from cvhelpers import recipes  # noqa: E402
from cvhelpers.data.objects import make_objects_dataset  # noqa: E402
from cvhelpers.data.owndata import load_own_data  # noqa: E402
from cvhelpers.files import write_json_atomic  # noqa: E402


def run(data, train_index: np.ndarray, test_index: np.ndarray, pretrained: bool, steps: int, seed: int) -> dict:
    prepared = recipes.prepare(data, train_index, test_index)
    seed_everything(seed)
    model = recipes.build_model(prepared, pretrained=pretrained)
    history = recipes.train(prepared, model, max_steps=steps, device="auto", seed=seed, progress=False)
    start = time.perf_counter()
    evaluation = recipes.evaluate(prepared, recipes.predict(prepared, model))
    return {"backbone": "ImageNet Lite0" if pretrained else "from scratch", "steps": history.total_steps,
            "train_seconds": round(history.seconds, 1), "eval_seconds": round(time.perf_counter() - start, 1),
            **{k: float(v) for k, v in evaluation["metrics"].items()},
            "per_class_ap50": {name: (float(ap) if np.isfinite(ap) else None)
                               for name, ap in evaluation["per_class_ap50"].items()},
            "settings": {k: (list(map(list, v)) if k == "anchor_sizes" else v) for k, v in prepared.settings.items()}}


def markdown(rows: list[dict], class_names: list[str]) -> str:
    head = "| backbone | steps | train s | mAP@0.5 | mAP@0.5:0.95 |\n| --- | ---: | ---: | ---: | ---: |\n"
    lines = [f"| {r['backbone']} | {r['steps']} | {r['train_seconds']:.0f} | {r['map50']:.3f} | {r['map50_95']:.3f} |"
             for r in rows]
    per_class = "\n\n| class | " + " | ".join(r["backbone"] for r in rows) + " |\n| --- |" + " ---: |" * len(rows) + "\n"
    per_class += "\n".join(f"| {name} | " + " | ".join((f"{r['per_class_ap50'][name]:.3f}" if r['per_class_ap50'].get(name) is not None else "-") for r in rows)
                           + " |" for name in class_names)
    return head + "\n".join(lines) + per_class


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="optimiser steps of batch 8, each side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=Path("datasets"))
    parser.add_argument("--out", type=Path, default=None,
                        help="default docs/results/real_objects.json (build/benchmarks/ with --quick)")
    parser.add_argument("--quick", action="store_true", help="2 steps on a few images, written to build/")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 2
    if args.out is None:
        args.out = Path("build/benchmarks" if args.quick else "docs/results") / "real_objects.json"
    print(environment_report())
    root = make_objects_dataset(args.data_dir / "objects", fashion_root=args.data_dir)
    data = load_own_data(root, max_images=16 if args.quick else None, seed=args.seed)
    split = np.array(data.split)
    train_index, test_index = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    rows = [run(data, train_index, test_index, pretrained, args.steps, args.seed) for pretrained in (True, False)]
    table = markdown(rows, data.class_names)
    print(table)
    print(f"\nSame data ({len(train_index)} training scenes), same recipe and steps ({args.steps} of batch 8), same seed;"
          f" scored on the {len(test_index)} test scenes. Neither side was tuned on this data.")
    write_json_atomic(args.out, {"benchmark": "real_objects", "steps": args.steps, "seed": args.seed,
                                 "train_images": len(train_index), "test_images": len(test_index), "rows": rows,
                                 "machine": machine_info(), "versions": package_versions()})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
