"""Training speed of ResNet-50 on synthetic data, mode by mode, through the course loop.

    python benchmarks/training_speed.py                 # GPU: batch 256, 224 px, every mode
    python benchmarks/training_speed.py --batch-size 16 --steps 5 --image-size 128   # a CPU

Modes on a GPU: fp32 -> TF32 -> AMP fp16 -> AMP bf16 -> bf16 + channels_last -> + torch.compile;
on a CPU: fp32 -> AMP bf16 -> + channels_last (``--compile`` adds torch.compile). Every mode
trains a fresh ResNet-50 with SGD through ``cvhelpers.train.engine.fit``; the fastest mode is then
run again in a bare hand-written loop (``cvhelpers.train.speed.bare_training_loop``) to show what
the course loop costs on top. Prints a Markdown table and the targets (set for one H100:
best mode >= 5,000 img/s, >= 2.5x its own TF32 mode, course loop within 10 % of the bare
loop), and writes build/benchmarks/training_speed.json.

Imports only torch, torchvision, numpy and cvhelpers modules that need nothing else (tqdm
aside), so it runs on a bare GPU image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torchvision

from cvhelpers.env import environment_report, pick_device, setup
from cvhelpers.files import write_json_atomic
from cvhelpers.train.speed import (SpeedResult, cpu_ladder, describe, gpu_ladder, measure_ladder, measure_mode, speed_table, synthetic_batch)

OUT = Path(__file__).resolve().parents[1] / "build" / "benchmarks" / "training_speed.json"
TARGETS = {"best_images_per_s": 5000.0, "best_vs_tf32": 2.5, "loop_vs_bare": 0.9}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="resnet50", help="a torchvision.models name")
    p.add_argument("--batch-size", type=int, help="default: 256 on a GPU, 16 on a CPU")
    p.add_argument("--image-size", type=int, help="default: 224 on a GPU, 128 on a CPU")
    p.add_argument("--steps", type=int, help="timed steps per mode; default 30 GPU, 5 CPU")
    p.add_argument("--warmup-steps", type=int, help="untimed steps first; default 10 GPU, 2 CPU")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of --steps steps per mode; "
                                                          "the fastest counts")
    p.add_argument("--modes", help="comma-separated subset of the ladder, e.g. fp32,amp_bf16")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="include the torch.compile mode (default: on a GPU only)")
    p.add_argument("--bare", default="best", help="'best', 'all', 'none' or a mode name")
    p.add_argument("--sync-every", type=int, help="fit(sync_every=...); default 25 on a GPU, 1 on "
                                                  "a CPU (where it changes nothing)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=OUT)
    return p.parse_args(argv)


def evaluate_targets(results: list[SpeedResult], device: torch.device) -> list[dict]:
    """The three targets with their values; ``applies`` is False where the hardware is not the
    H100 the throughput targets were set for (the loop-vs-bare ratio applies everywhere)."""
    loop = {r.mode: r for r in results if r.loop == "cvhelpers"}
    bare = {r.mode: r for r in results if r.loop == "bare"}
    best = max(loop.values(), key=lambda r: r.images_per_s)
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    on_h100 = "H100" in gpu_name
    rows = [{"name": "best_images_per_s", "mode": best.mode, "value": best.images_per_s,
             "target": f">= {TARGETS['best_images_per_s']:g}", "applies": on_h100}]
    if "tf32" in loop:
        rows.append({"name": "best_vs_tf32", "mode": best.mode,
                     "value": best.images_per_s / loop["tf32"].images_per_s,
                     "target": f">= {TARGETS['best_vs_tf32']:g}", "applies": on_h100})
    else:
        rows.append({"name": "best_vs_fp32", "mode": best.mode,
                     "value": best.images_per_s / loop[results[0].mode].images_per_s,
                     "target": None, "applies": False})
    if best.mode in bare:
        rows.append({"name": "loop_vs_bare", "mode": best.mode,
                     "value": best.images_per_s / bare[best.mode].images_per_s,
                     "target": f">= {TARGETS['loop_vs_bare']:g}", "applies": True})
    for row in rows:
        threshold = TARGETS.get(row["name"])
        row["passed"] = None if threshold is None else row["value"] >= threshold
        row["hardware"] = gpu_name
    return rows


def targets_table(rows: list[dict]) -> str:
    lines = ["| target | mode | value | required | verdict |", "| --- | --- | ---: | --- | --- |"]
    for row in rows:
        if row["passed"] is None:
            verdict = "information"
        elif not row["applies"]:
            verdict = f"n/a: an H100 target, measured on {row['hardware']}"
        else:
            verdict = "pass" if row["passed"] else "FAIL"
        lines.append(f"| {row['name']} | {row['mode']} | {row['value']:.2f} | "
                     f"{row['target'] or '-'} | {verdict} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup(offline=False)  # threads only: nothing here downloads (weights=None)
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    batch_size = args.batch_size or (256 if gpu else 16)
    image_size = args.image_size or (224 if gpu else 128)
    steps = args.steps or (30 if gpu else 5)
    warmup_steps = args.warmup_steps if args.warmup_steps is not None else (10 if gpu else 2)
    sync_every = args.sync_every or (25 if gpu else 1)
    use_compile = args.compile if args.compile is not None else gpu
    modes = gpu_ladder(use_compile) if gpu else cpu_ladder(use_compile)
    if args.modes:
        wanted = args.modes.split(",")
        modes = [m for m in modes if m.name in wanted]
        if not modes:
            raise SystemExit(f"--modes {args.modes!r} matches none of the ladder's modes")
    if gpu:
        torch.backends.cudnn.benchmark = True  # fixed input size: cuDNN may pick faster kernels

    def make_model() -> torch.nn.Module:
        return getattr(torchvision.models, args.model)(weights=None)

    settings = {"model": args.model, "batch_size": batch_size, "image_size": image_size,
                "steps": steps, "warmup_steps": warmup_steps, "repeats": args.repeats,
                "sync_every": sync_every,
                "device": str(device), "modes": [m.name for m in modes], "bare": args.bare}
    print(f"{args.model}, batch {batch_size}, {image_size} px, best of {args.repeats} x {steps} "
          f"timed steps after {warmup_steps} warm-up steps, on {device}", flush=True)
    results = measure_ladder(make_model, modes, batch_size=batch_size, image_size=image_size,
                             steps=steps, warmup_steps=warmup_steps, device=device,
                             sync_every=sync_every, repeats=args.repeats,
                             log=lambda line: print(line, flush=True))

    best = max(results, key=lambda r: r.images_per_s)
    bare_names = {"best": [best.mode], "all": [m.name for m in modes], "none": []}.get(
        args.bare, [args.bare])
    images, labels = synthetic_batch(batch_size, image_size, 1000, device=device)
    for mode in [m for m in modes if m.name in bare_names]:
        result = measure_mode(make_model, mode, images, labels, loop="bare", steps=steps,
                              warmup_steps=warmup_steps, repeats=args.repeats)
        results.append(result)
        print(describe(result), flush=True)
    if gpu and sync_every != 1:  # what the loop's default costs, for information
        mode = next(m for m in modes if m.name == best.mode)
        result = measure_mode(make_model, mode, images, labels, steps=steps,
                              warmup_steps=warmup_steps, sync_every=1, repeats=args.repeats)
        result.loop = "cvhelpers, sync_every=1"
        results.append(result)
        print(describe(result), flush=True)

    rows = evaluate_targets(results, device)
    print()
    print(speed_table(results))
    print()
    print(targets_table(rows))
    report = {"benchmark": "training_speed", "settings": settings,
              "results": [r.to_dict() for r in results], "targets": rows,
              "environment": environment_report()}
    write_json_atomic(args.out, report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
