"""Seconds per training step of the course's R-CNN detectors, variant by variant, on one CPU.

    python benchmarks/detector_step.py                  # Mask R-CNN Lite0-FPN (notebook 07's recipe)
    python benchmarks/detector_step.py --model faster   # Faster R-CNN Lite0-FPN (05b, 10, 12)
    python benchmarks/detector_step.py --quick          # a few small steps: does it run?

Mask R-CNN's 400 steps are most of notebooks 07 and 07c's run time. This measures what could
make a step cheaper without touching the lesson: each variant is a fresh model from the same
seed, and all of them take a step on **the same batch** in turn (the order rotated every step),
so a machine that speeds up or slows down mid-run moves every variant alike; the ratio to the
recipe is the median of the per-step ratios. Variants:

- ``recipe``: as the lessons build it (float32, NCHW, RoIAlign ``sampling_ratio=2``);
- ``channels_last``: weights stored ``N x H x W x C`` (oneDNN's preferred layout on a CPU): the
  same arithmetic in another order, so the first step's loss must match the recipe's closely;
- ``roi_sampling_1``: RoIAlign averages 1 x 1 instead of 2 x 2 samples per output cell (box and
  mask heads): its backward, a single-threaded scatter on a CPU, does a quarter of the work. This
  **changes the model**: a lesson that took it would need its scores measured again;
- ``channels_last+roi_sampling_1``: both;
- ``bf16`` (only with ``--variants``): the forward pass under bfloat16 autocast, fast only on
  CPUs with AVX512-BF16 or AMX.

Prints a Markdown table (median s/step, ratio to the recipe, the loss's difference from the
recipe's at the first step and the largest over the run, every variant having trained on the same
batches with the same sampling draws) and writes
build/benchmarks/detector_step.json with the machine. No target: the numbers depend on the CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from cvhelpers.env import environment_report, seed_everything, setup
from cvhelpers.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "benchmarks" / "detector_step.json"
VARIANTS = ("recipe", "channels_last", "roi_sampling_1", "channels_last+roi_sampling_1")
KNOWN = (*VARIANTS, "bf16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=("mask", "faster"), default="mask")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup-steps", type=int, default=1, help="untimed steps first")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--images", type=int, default=200, help="real-objects training scenes drawn from")
    p.add_argument("--min-size", type=int, default=320, help="the detector's input side (07: 320)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(KNOWN)}")
    p.add_argument("--data-dir", type=Path, default=ROOT / "datasets")
    p.add_argument("--quick", action="store_true", help="1 timed step of batch 2 on 16 scenes")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup_steps, args.batch_size, args.images = 1, 0, 2, 16
    args.variants = args.variants.split(",")
    unknown = [v for v in args.variants if v not in KNOWN]
    if unknown or "recipe" not in args.variants:
        p.error(f"--variants must include 'recipe' and name only {', '.join(KNOWN)} (got {unknown or args.variants})")
    return args


def build_variant(name: str, model: str, num_classes: int, min_size: int) -> torch.nn.Module:
    """The lesson's detector (07's Mask R-CNN or 05b's Faster R-CNN), changed as ``name`` says."""
    from cvhelpers.detection.models import faster_rcnn_lite0, mask_rcnn_lite0

    seed_everything(0)
    build = mask_rcnn_lite0 if model == "mask" else faster_rcnn_lite0
    detector = build(num_classes, pretrained=True, min_size=min_size)
    if "roi_sampling_1" in name:
        for pool in (detector.roi_heads.box_roi_pool, getattr(detector.roi_heads, "mask_roi_pool", None)):
            if pool is not None:
                pool.sampling_ratio = 1
    if "channels_last" in name:
        detector = detector.to(memory_format=torch.channels_last)
    return detector.train()


def train_step(detector: torch.nn.Module, optimizer: torch.optim.Optimizer, images: list, targets: list,
               bf16: bool) -> float:
    """One step as the course's engine takes it (sum of the loss dict, clip to norm 10, SGD)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        losses = detector(images, targets)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in detector.parameters() if p.requires_grad], 10.0)
    optimizer.step()
    return float(loss.detach())


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    from cvhelpers.data.loading import make_loader
    from cvhelpers.data.objects import CLASS_NAMES, make_objects_dataset
    from cvhelpers.data.scenes import load_scenes
    from cvhelpers.detection.data import DetectionDataset, collate_detection

    root = make_objects_dataset(args.data_dir / "objects", fashion_root=args.data_dir)
    scenes = load_scenes(root, "train")[:args.images]
    loader = make_loader(DetectionDataset(scenes, augment=True, with_masks=args.model == "mask"), args.batch_size,
                         shuffle=True, seed=0, collate_fn=collate_detection, drop_last=True)
    models = {name: build_variant(name, args.model, len(CLASS_NAMES), args.min_size) for name in args.variants}
    optimizers = {name: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.02, momentum=0.9,
                                        weight_decay=1e-4) for name, m in models.items()}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    losses: dict[str, list[float]] = {name: [] for name in models}
    batches = iter(loader)
    for step in range(args.warmup_steps + args.steps):
        try:
            images, targets = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, targets = next(batches)
        order = list(models)[step % len(models):] + list(models)[:step % len(models)]
        for name in order:
            torch.manual_seed(step)  # the same RPN/RoI sampling draws for every variant of this step
            start = time.perf_counter()
            loss = train_step(models[name], optimizers[name], list(images), list(targets), name == "bf16")
            if step >= args.warmup_steps:
                seconds[name].append(time.perf_counter() - start)
            losses[name].append(loss)
    rows = []
    for name, times in seconds.items():
        ratios = [r / t for r, t in zip(seconds["recipe"], times)]
        rows.append({"variant": name, "median_s_per_step": statistics.median(times),
                     "speedup_vs_recipe": statistics.median(ratios),
                     "first_step_loss_diff": abs(losses[name][0] - losses["recipe"][0]),
                     "max_loss_diff": max(abs(a - b) for a, b in zip(losses[name], losses["recipe"])),
                     "changes_the_model": "roi_sampling_1" in name or name == "bf16"})
    return rows


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = ["| variant | s / step (median) | speed-up vs the recipe | loss diff, first step | loss diff, largest "
             "over the run | changes the model |", "| --- | ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['variant']} | {r['median_s_per_step']:.3f} | {r['speedup_vs_recipe']:.2f}x | "
              f"{r['first_step_loss_diff']:.1e} | {r['max_loss_diff']:.1e} | {'yes' if r['changes_the_model'] else 'no'} |"
              for r in rows]
    lines.append(f"\n{'Mask' if args.model == 'mask' else 'Faster'} R-CNN Lite0-FPN, batch {args.batch_size} at "
                 f"{args.min_size} px, {args.steps} timed steps per variant on the same batches in rotating order.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup()
    rows = measure(args)
    report = environment_report()
    print(table(rows, args))
    print(f"\nmachine: {report['machine']['cpu']} ({report['machine'].get('vector_isa')}), "
          f"{report['machine']['cores']} cores, torch {torch.__version__}, {torch.get_num_threads()} threads")
    write_json_atomic(args.out, {"model": args.model, "settings": {k: v for k, v in vars(args).items() if k not in
                                                                   ("out", "data_dir")},
                                 "rows": rows, "machine": report["machine"], "versions": report.get("versions")})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
