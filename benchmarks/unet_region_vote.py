"""Does one class per region fix the U-Net's mixed-class objects? Measured on the validation split.

Notebook 06b's recipe (smp U-Net on the Lite0 ImageNet encoder, 96 px crops of the real-objects
scenes, class-weighted cross-entropy + Dice, AdamW 3e-3, warm-up + cosine, batch 16, 750 steps)
finds the objects far better than it names them, and some objects come out painted in several
classes. This script trains that recipe once and scores its predictions on the **validation**
scenes (the test split stays the lesson's) three ways:

- per pixel, as predicted;
- one class per connected region of predicted foreground (:func:`vote_regions`, 8- and
  4-connected): a post-process any deployed model can run;
- one class per *true* object (:func:`vote_objects`: the majority over the object's predicted
  object pixels): it needs the truth, so it is the most any vote could give, not a method.

Run from the project root::

    .venv/bin/python benchmarks/unet_region_vote.py            # the recorded run (~16 min on 2 cores)
    .venv/bin/python benchmarks/unet_region_vote.py --quick    # a few seconds, to check it runs

Prints a Markdown table and writes ``docs/results/unet_region_vote.json`` (``--out`` to change;
with the machine and library versions), which notebook 06b's exercise on region votes points to.
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
from cvhelpers.data.objects import CLASS_NAMES, make_objects_dataset  # noqa: E402
from cvhelpers.data.scenes import load_scenes  # noqa: E402
from cvhelpers.files import write_json_atomic  # noqa: E402
from cvhelpers.segmentation.data import SegmentationDataset  # noqa: E402
from cvhelpers.segmentation.losses import CEDiceLoss, class_weights  # noqa: E402
from cvhelpers.segmentation.metrics import segmentation_scores  # noqa: E402
from cvhelpers.segmentation.models import smp_model  # noqa: E402
from cvhelpers.segmentation.postprocess import vote_objects, vote_regions  # noqa: E402
from cvhelpers.segmentation.steps import predict_masks  # noqa: E402
from cvhelpers.train.engine import fit  # noqa: E402
from cvhelpers.train.schedules import warmup_cosine  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=750)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--data-dir", type=Path, default=Path("datasets"))
    parser.add_argument("--out", type=Path, default=None,
                        help="default docs/results/unet_region_vote.json (build/benchmarks/ with --quick)")
    parser.add_argument("--quick", action="store_true", help="a few steps on a few scenes, written to build/")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps = 2
    if args.out is None:
        args.out = Path("build/benchmarks" if args.quick else "docs/results") / "unet_region_vote.json"
    print(environment_report())

    root = make_objects_dataset(args.data_dir / "objects", fashion_root=args.data_dir)
    n_train, n_val = (64, 16) if args.quick else (1200, 300)
    train_set = SegmentationDataset.from_scenes(load_scenes(root, "train")[:n_train], augment=True, rotate=False,
                                                crop=args.crop)
    val_scenes = load_scenes(root, "val")[:n_val]
    val_set = SegmentationDataset.from_scenes(val_scenes)
    val_masks = np.stack(val_set.masks)
    num_classes = len(CLASS_NAMES) + 1
    seed_everything(0)
    model = smp_model("unet", num_classes, pretrained=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    history = fit(model, make_loader(train_set, args.batch, shuffle=True, seed=0, drop_last=True), None,
                  optimizer=optimizer, max_steps=args.steps, loss_fn=CEDiceLoss(weight=class_weights(train_set.masks,
                                                                                                     num_classes)),
                  monitor="train_loss", restore_best=False, lr_schedule=warmup_cosine(0.05), progress=False)
    pred = predict_masks(model, val_set)
    variants = {
        "per pixel (as predicted)": pred,
        "one class per predicted region, 8-connected": vote_regions(pred, connectivity=8),
        "one class per predicted region, 4-connected": vote_regions(pred, connectivity=4),
        "one class per true object (needs the truth: a ceiling)": np.stack(
            [vote_objects(p, scene.masks) for p, scene in zip(pred, val_scenes)]),
    }
    found = ((pred > 0) & (val_masks > 0)).sum() / max(((pred > 0) | (val_masks > 0)).sum(), 1)
    rows = []
    for name, masks in variants.items():
        scores = segmentation_scores(masks, val_masks, num_classes)
        rows.append({"variant": name, "val_miou": float(scores.miou), "val_mdice": float(scores.mdice)})
    record = {"benchmark": "unet_region_vote", "machine": machine_info(), "versions": package_versions(),
              "settings": {k: v for k, v in vars(args).items() if k not in ("data_dir", "out")},
              "split": "val", "scenes": len(val_scenes), "train_seconds": history.seconds,
              "object_vs_background_iou": float(found), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, record)
    print(f"\nsmp U-Net, Lite0 ImageNet, {args.steps} steps ({history.seconds:.0f} s of training); "
          f"{len(val_scenes)} validation scenes; object-vs-background IoU {found:.3f}\n")
    print("| predictions | val mIoU | val mDice |\n| --- | ---: | ---: |")
    for row in rows:
        print(f"| {row['variant']} | {row['val_miou']:.3f} | {row['val_mdice']:.3f} |")
    print(f"\nwritten {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
