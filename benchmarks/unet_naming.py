"""What makes a segmentation network *name* the real objects? Trials on the validation split.

Notebook 06b's recipe (smp U-Net on the Lite0 ImageNet encoder, 96 px crops of the real-objects
scenes, class-weighted cross-entropy + Dice, AdamW 3e-3, warm-up + cosine, batch 16, 750 steps)
finds the objects (object-vs-background IoU ~0.87) far better than it names them (ten-class
mIoU ~0.34). This script trains one variant of that recipe and scores it on the **validation**
scenes (the test split stays the lesson's):

- ``--arch deeplabv3plus``: smp's DeepLabV3+ on the same encoder (atrous convolutions, output
  stride 16, a wider context per pixel), everything else the recipe's;
- ``--crop 128``: larger training crops (more context around each object, objects cut less),
  fewer steps for the same seconds;
- ``--cls-steps N``: first train the encoder to *name* objects, as a classifier (global average
  pool + linear head) on square crops around each object of the same training scenes (64 px,
  left-right flips, label smoothing 0.1, one-cycle AdamW), then the recipe; ``--enc-lr-mult``
  scales the encoder's learning rate in the segmentation stage (0.1: keep what it learned).

Run from the project root, one trial at a time (each ~10-13 min on 2 cores)::

    .venv/bin/python benchmarks/unet_naming.py --steps 750                      # the recipe
    .venv/bin/python benchmarks/unet_naming.py --steps 750 --arch deeplabv3plus
    .venv/bin/python benchmarks/unet_naming.py --steps 420 --crop 128
    .venv/bin/python benchmarks/unet_naming.py --cls-steps 300 --steps 570 --enc-lr-mult 0.1
    .venv/bin/python benchmarks/unet_naming.py --quick                          # seconds, to check it runs

Prints one line per trial and writes it to ``--out`` (JSON, with the machine and the versions).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from cvhelpers.env import machine_info, package_versions, seed_everything, setup  # noqa: E402

setup()
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

from cvhelpers.data.loading import make_loader  # noqa: E402
from cvhelpers.data.objects import CLASS_NAMES, make_objects_dataset  # noqa: E402
from cvhelpers.data.scenes import load_scenes  # noqa: E402
from cvhelpers.files import write_json_atomic  # noqa: E402
from cvhelpers.models.pretrained import LITE0_MEAN, LITE0_STD  # noqa: E402
from cvhelpers.segmentation.data import SegmentationDataset  # noqa: E402
from cvhelpers.segmentation.losses import CEDiceLoss, class_weights  # noqa: E402
from cvhelpers.segmentation.metrics import segmentation_scores  # noqa: E402
from cvhelpers.segmentation.models import smp_model  # noqa: E402
from cvhelpers.segmentation.steps import predict_masks  # noqa: E402
from cvhelpers.train.engine import fit  # noqa: E402
from cvhelpers.train.schedules import warmup_cosine  # noqa: E402


def object_crops(scenes, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A square crop around each object's visible box (15 % margin), resized to ``size``,
    normalised like the segmentation data; and the class ids."""
    mean, std = torch.tensor(LITE0_MEAN).view(3, 1, 1), torch.tensor(LITE0_STD).view(3, 1, 1)
    xs, ys = [], []
    for s in scenes:
        height, width = s.image.shape[:2]
        for (x0, y0, x1, y1), label in zip(s.boxes, s.labels):
            cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 1.15
            left, top = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
            right, bottom = int(min(width, cx + side / 2 + 1)), int(min(height, cy + side / 2 + 1))
            window = Image.fromarray(s.image[top:bottom, left:right])
            xs.append(np.asarray(window.resize((size, size), Image.Resampling.BILINEAR)))
            ys.append(int(label))
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255
    return (x - mean) / std, torch.tensor(ys)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=750, help="segmentation steps (batch 16)")
    parser.add_argument("--arch", default="unet", help="an smp architecture: unet, deeplabv3plus")
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--cls-steps", type=int, default=0, help="classifier steps first (0: none)")
    parser.add_argument("--cls-size", type=int, default=64)
    parser.add_argument("--cls-batch", type=int, default=64)
    parser.add_argument("--enc-lr-mult", type=float, default=1.0)
    parser.add_argument("--data-dir", type=Path, default=Path("datasets"))
    parser.add_argument("--out", type=Path, default=Path("build/benchmarks/unet_naming.json"))
    parser.add_argument("--quick", action="store_true", help="2 steps (and 2 classifier steps) on a few scenes")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.cls_steps = 2, min(args.cls_steps, 2) or 2

    root = make_objects_dataset(args.data_dir / "objects", fashion_root=args.data_dir)
    train_scenes, val_scenes = load_scenes(root, "train"), load_scenes(root, "val")
    if args.quick:
        train_scenes, val_scenes = train_scenes[:32], val_scenes[:8]
    seed_everything(0)
    model = smp_model(args.arch, len(CLASS_NAMES) + 1, pretrained=True)
    start, crop_accuracy = time.perf_counter(), None
    if args.cls_steps:
        x_train, y_train = object_crops(train_scenes, args.cls_size)
        x_val, y_val = object_crops(val_scenes, args.cls_size)
        head = nn.Linear(model.encoder.out_channels[-1], len(CLASS_NAMES))
        optimizer = torch.optim.AdamW([*model.encoder.parameters(), *head.parameters()], lr=args.lr,
                                      weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.cls_steps,
                                                       pct_start=0.1)
        generator = torch.Generator().manual_seed(0)
        model.encoder.train()
        for _ in range(args.cls_steps):
            index = torch.randint(0, len(x_train), (args.cls_batch,), generator=generator)
            flip = torch.rand(args.cls_batch, generator=generator) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x_train[index].flip(-1), x_train[index])
            logits = head(model.encoder(x)[-1].mean((2, 3)))
            loss = nn.functional.cross_entropy(logits, y_train[index], label_smoothing=0.1)
            optimizer.zero_grad(); loss.backward(); optimizer.step(); schedule.step()
        model.encoder.eval()
        with torch.no_grad():
            named = torch.cat([head(model.encoder(x_val[i:i + 256])[-1].mean((2, 3))).argmax(1)
                               for i in range(0, len(x_val), 256)])
        crop_accuracy = float((named == y_val).float().mean())
    classifier_seconds = time.perf_counter() - start

    train_set = SegmentationDataset.from_scenes(train_scenes, augment=True, rotate=False, crop=args.crop)
    val_set = SegmentationDataset.from_scenes(val_scenes)
    num_classes = len(CLASS_NAMES) + 1
    encoder = list(model.encoder.parameters())
    ids = {id(p) for p in encoder}
    optimizer = torch.optim.AdamW([{"params": encoder, "lr": args.lr * args.enc_lr_mult},
                                   {"params": [p for p in model.parameters() if id(p) not in ids]}],
                                  lr=args.lr, weight_decay=1e-4)
    history = fit(model, make_loader(train_set, 16, shuffle=True, seed=0, drop_last=True), None, optimizer=optimizer,
                  max_steps=args.steps, loss_fn=CEDiceLoss(weight=class_weights(train_set.masks, num_classes)),
                  monitor="train_loss", restore_best=False, lr_schedule=warmup_cosine(0.05), progress=False)
    pred, truth = predict_masks(model, val_set), np.stack(val_set.masks)
    scores = segmentation_scores(pred, truth, num_classes)
    found = float(((pred > 0) & (truth > 0)).sum() / max(((pred > 0) | (truth > 0)).sum(), 1))
    record = {"benchmark": "unet_naming", "machine": machine_info(), "versions": package_versions(),
              "settings": {k: v for k, v in vars(args).items() if k not in ("data_dir", "out")},
              "split": "val", "scenes": len(val_scenes), "classifier_seconds": classifier_seconds,
              "classifier_val_crop_accuracy": crop_accuracy, "segmentation_seconds": history.seconds,
              "val_miou": float(scores.miou), "val_mdice": float(scores.mdice), "object_vs_background_iou": found}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, record)
    print(f"{args.arch}, crop {args.crop}, {args.cls_steps} classifier steps (val crop accuracy {crop_accuracy}), "
          f"{args.steps} segmentation steps, encoder lr x{args.enc_lr_mult}: "
          f"{classifier_seconds:.0f} + {history.seconds:.0f} s; "
          f"val mIoU {scores.miou:.3f}, object-vs-background IoU {found:.3f}; written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
