"""What does the course's own U-Net need, from scratch, to segment the scenes? A measured curve.

Notebook 06 trains the course U-Net for a few hundred steps; this script trains it much longer
with the same data, loss (class-weighted cross-entropy + Dice), optimizer and schedule as the
notebook, and scores the validation scenes after every epoch, so the lesson can show how
long the flat start lasts and when (if ever) mIoU passes 0.50. Run from the project root::

    .venv/bin/python benchmarks/course_unet_curve.py              # the recorded run (~15 min on 2 cores)
    .venv/bin/python benchmarks/course_unet_curve.py --quick      # a few seconds, to check it runs

Prints a Markdown table and writes ``docs/results/course_unet_curve.json`` (``--out`` to change;
with the machine and library versions), which notebook 06 plots. Each point of the curve is the
point "after s steps of one long run whose cosine schedule spans all of them", not "a run of s
steps"; the final test mIoU is scored once, at the end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cvhelpers.env import environment_report, machine_info, package_versions, seed_everything, setup  # noqa: E402

setup()
import numpy as np  # noqa: E402
import torch  # noqa: E402

from cvhelpers.data.loading import make_loader  # noqa: E402
from cvhelpers.data.scenes import load_scenes, make_scenes_dataset  # noqa: E402
from cvhelpers.files import write_json_atomic  # noqa: E402
from cvhelpers.segmentation.data import SegmentationDataset  # noqa: E402
from cvhelpers.segmentation.losses import CEDiceLoss, class_weights  # noqa: E402
from cvhelpers.segmentation.metrics import segmentation_scores  # noqa: E402
from cvhelpers.segmentation.models import ResizedInput  # noqa: E402
from cvhelpers.segmentation.steps import SegmentationValidator, predict_masks  # noqa: E402
from cvhelpers.segmentation.unet import UNet  # noqa: E402
from cvhelpers.train.engine import fit  # noqa: E402
from cvhelpers.train.schedules import warmup_cosine  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--scale", type=float, default=0.5, help="input scale (ResizedInput)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--warmup", type=float, default=0.05, help="warm-up share of the steps (warmup_cosine)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--data-dir", type=Path, default=Path("datasets"))
    parser.add_argument("--out", type=Path, default=None,
                        help="default docs/results/course_unet_curve.json (build/benchmarks/ with --quick)")
    parser.add_argument("--quick", action="store_true", help="a few steps on a few images, written to build/")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 6
    if args.out is None:
        args.out = Path("build/benchmarks" if args.quick else "docs/results") / "course_unet_curve.json"
    print(environment_report())

    root = make_scenes_dataset(args.data_dir / "scenes")
    n = 32 if args.quick else None
    train_set = SegmentationDataset.from_scenes(load_scenes(root, "train")[:n], augment=True)
    val_set = SegmentationDataset.from_scenes(load_scenes(root, "val")[:n])
    test_set = SegmentationDataset.from_scenes(load_scenes(root, "test")[:n])
    test_masks = np.stack(test_set.masks)
    num_classes = 5
    loss_fn = CEDiceLoss(weight=class_weights(train_set.masks, num_classes))
    seed_everything(0)
    model = ResizedInput(UNet(3, num_classes, width=args.width), args.scale)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    loader = make_loader(train_set, args.batch, shuffle=True, seed=0)
    # one run; fit scores the validation scenes after every epoch (600 scenes / 16 = 38 steps)
    history = fit(model, loader, make_loader(val_set, 32, shuffle=False), optimizer=optimizer, max_steps=args.steps,
                  loss_fn=loss_fn, validator=SegmentationValidator(num_classes), monitor="val_miou",
                  restore_best=False, lr_schedule=warmup_cosine(args.warmup), progress=False)
    elapsed = np.cumsum(history.epoch_seconds)
    curve = [{"steps": int(s), "seconds": round(float(t), 1), "val_miou": float(m)}
             for s, t, m in zip(history.steps, elapsed, history.val_metrics["miou"])]
    test = segmentation_scores(predict_masks(model, test_set), test_masks, num_classes)
    first_half = next((p["steps"] for p in curve if p["val_miou"] >= 0.5), None)
    record = {"benchmark": "course_unet_curve", "machine": machine_info(), "versions": package_versions(),
              "settings": {k: v for k, v in vars(args).items() if k not in ("data_dir", "out")},
              "curve": curve, "test_miou": test.miou, "first_step_val_miou_0_5": first_half,
              "train_seconds": curve[-1]["seconds"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, record)
    print("\n| steps | seconds | val mIoU |\n| ---: | ---: | ---: |")
    for p in curve:
        print(f"| {p['steps']} | {p['seconds']:.0f} | {p['val_miou']:.3f} |")
    print(f"\ntest mIoU after {args.steps} steps: {test.miou:.3f}; val mIoU first >= 0.50 at step {first_half}; "
          f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
