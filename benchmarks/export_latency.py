"""Latency of one classifier across runtimes: PyTorch eager, torch.compile, ONNX Runtime fp32/INT8.

    .venv/bin/python benchmarks/export_latency.py                # ~2-3 min on 2 cores
    .venv/bin/python benchmarks/export_latency.py --epochs 0.2 --no-compile --iters 30   # quick

Trains the course SmallCNN on Fashion-MNIST (or loads ``--checkpoint``), exports it with the
dynamo ONNX exporter, quantises it to INT8 (static, QDQ, per-channel, calibrated on training
images), then times every runtime in one run on the same inputs at batch 1 and 32 with
``cvhelpers.evaluation.bench.measure_latency`` (warm-up calls excluded; runtimes interleaved, median of
``--repeats``). Prints Markdown tables and writes build/benchmarks/export_latency.json with the
machine and package versions.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {  # the targets, on the course's 2-core machine
    "ort_vs_eager_latency_ratio": "<= 0.9",
    "int8_speedup": ">= 1.5",
    "int8_accuracy_drop": "<= 0.01",
    "onnx_max_abs_diff": "<= 1e-4",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT / "datasets"))
    parser.add_argument("--checkpoint",
                        help="a cvhelpers checkpoint of SmallCNN() to use instead of training")
    parser.add_argument("--epochs", type=float, default=1.0, help="training epochs (fractions allowed)")
    parser.add_argument("--iters", type=int, default=100, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls before timing")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; median reported")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile)")
    parser.add_argument("--variants", action="store_true",
                        help="also time INT8 variants: QDQ/QOperator, per-channel/per-tensor, 1/2 threads")
    parser.add_argument("--out", default=str(ROOT / "build" / "benchmarks" / "export_latency.json"))
    return parser.parse_args(argv)


def train_smallcnn(data_dir: str, epochs: float, seed: int = 0):
    """SmallCNN trained on (a fraction of) Fashion-MNIST with the course loop."""
    import torch

    from cvhelpers.data.fashion_mnist import load_fashion_mnist, to_tensor_dataset
    from cvhelpers.data.loading import make_loader
    from cvhelpers.env import seed_everything
    from cvhelpers.models.cnn import SmallCNN
    from cvhelpers.train.engine import fit

    images, labels = load_fashion_mnist(data_dir, "train")
    n = len(images) if epochs >= 1 else int(len(images) * epochs)
    seed_everything(seed)
    loader = make_loader(to_tensor_dataset(images[:n], labels[:n]), batch_size=128, shuffle=True, seed=seed)
    model = SmallCNN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    total = max(1, math.ceil(epochs)) if epochs >= 1 else 1
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=total * len(loader))
    fit(model, loader, None, epochs=total, optimizer=optimizer, scheduler=scheduler, device="cpu",
        monitor="train_loss", progress=False)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from cvhelpers.env import environment_report, setup

    setup()
    import torch

    from cvhelpers.train.checkpoint import load_checkpoint
    from cvhelpers.data.fashion_mnist import (CLASS_NAMES, MEAN, STD, load_fashion_mnist, to_tensor_dataset)
    from cvhelpers.deploy.runtime import (compare_latency, compare_with_pytorch, latency_lookup, latency_markdown, ort_runner, ort_session, session_accuracy)
    from cvhelpers.deploy.export import ExportMetadata, export_onnx, op_counts, quantize_int8
    from cvhelpers.evaluation.metrics import accuracy
    from cvhelpers.models.cnn import SmallCNN
    from cvhelpers.course.results import Target
    from cvhelpers.files import write_json_atomic
    from cvhelpers.data.loading import make_loader
    from cvhelpers.train.evaluate import predict

    started = time.perf_counter()
    if args.checkpoint:
        model = SmallCNN()
        load_checkpoint(args.checkpoint, model)
        model.eval()
    else:
        model = train_smallcnn(args.data_dir, args.epochs)
    print(f"model ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)

    train_images, train_labels = load_fashion_mnist(args.data_dir, "train")
    test_set = to_tensor_dataset(*load_fashion_mnist(args.data_dir, "test"))
    test_x, test_y = test_set.tensors
    # Calibration: 2,000 training images (never the test images the accuracy is measured on).
    calibration_x = to_tensor_dataset(train_images[-2000:], train_labels[-2000:]).tensors[0]

    work = Path(tempfile.mkdtemp(prefix="export_latency_"))
    meta = ExportMetadata(input_shape=(1, 28, 28), class_names=CLASS_NAMES, color_mode="L",
                          mean=(MEAN,), std=(STD,))
    fp32_path = export_onnx(model, work / "smallcnn.onnx", meta)
    int8_path = quantize_int8(fp32_path, work / "smallcnn_int8.onnx", calibration_x.numpy())
    fp32, int8 = ort_session(fp32_path), ort_session(int8_path, optimized_model_path=work / "int8_ort.onnx")

    parity = compare_with_pytorch(model, fp32, test_x[:1000])
    acc = {
        "pytorch_fp32": accuracy(predict(model, make_loader(test_set, 500, shuffle=False))[0], test_y),
        "onnxruntime_fp32": session_accuracy(fp32, test_x, test_y),
        "onnxruntime_int8": session_accuracy(int8, test_x, test_y),
    }

    runtimes = {"pytorch eager": model}
    compile_seconds = None
    if not args.no_compile:
        compiled = torch.compile(model)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in args.batch_sizes:  # compile once per input shape, outside the timing
                compiled(test_x[:b])
        compile_seconds = time.perf_counter() - t0
        runtimes["torch.compile"] = compiled
    runtimes["onnxruntime fp32"] = ort_runner(fp32)
    runtimes["onnxruntime int8"] = ort_runner(int8)
    rows = compare_latency(runtimes, lambda b: test_x[:b].contiguous(), args.batch_sizes,
                           warmup=args.warmup, iters=args.iters, repeats=args.repeats)

    small, large = min(args.batch_sizes), max(args.batch_sizes)
    p50 = lambda name, b: latency_lookup(rows, name, b)["p50_ms"]  # noqa: E731
    summary = {
        "ort_vs_eager_latency_ratio": p50("onnxruntime fp32", small) / p50("pytorch eager", small),
        "int8_speedup": p50("onnxruntime fp32", large) / p50("onnxruntime int8", large),
        "int8_speedup_batch1": p50("onnxruntime fp32", small) / p50("onnxruntime int8", small),
        "int8_accuracy_drop": acc["onnxruntime_fp32"] - acc["onnxruntime_int8"],
        "onnx_max_abs_diff": parity.max_abs_diff,
    }
    verdicts = {k: Target.parse(t).met_by(summary[k]) for k, t in TARGETS.items()}
    result = {
        "benchmark": "export_latency",
        "command": " ".join(["benchmarks/export_latency.py", *(argv or sys.argv[1:])]),
        "environment": environment_report(),
        "config": {**vars(args), "compile_seconds": compile_seconds,
                   "ratio_batch": small, "int8_speedup_batch": large},
        "rows": rows,
        "accuracy": acc,
        "parity": vars(parity),
        "summary": summary,
        "targets": {k: {"target": t, "value": summary[k], "met": verdicts[k]} for k, t in TARGETS.items()},
        "int8_ops_in_file": dict(op_counts(int8_path)),
        "int8_ops_ort_runs": dict(op_counts(work / "int8_ort.onnx")),
    }
    if args.variants:
        result["int8_variants"] = int8_variants(fp32_path, work, calibration_x, test_x, test_y, args)
    write_json_atomic(args.out, result)

    print(f"## SmallCNN (Fashion-MNIST), {rows[0]['threads']} threads, "
          f"{environment_report()['machine']['cpu']}\n")
    print(latency_markdown(rows))
    print(f"\ntorch.compile: {compile_seconds:.1f} s to compile" if compile_seconds else "")
    print("\n| metric | value | target | met |\n| --- | ---: | --- | --- |")
    for key, target in TARGETS.items():
        batch = {"ort_vs_eager_latency_ratio": f" (batch {small})",
                 "int8_speedup": f" (batch {large})"}.get(key, "")
        print(f"| {key}{batch} | {summary[key]:.4g} | {target} | {'yes' if verdicts[key] else 'NO'} |")
    print(f"| int8_speedup_batch1 | {summary['int8_speedup_batch1']:.4g} | (info) | |")
    print("\naccuracy on the 10,000 test images: " + ", ".join(f"{k} {v:.4f}" for k, v in acc.items()))
    if args.variants:
        print("\n## INT8 variants (ONNX Runtime; accuracy on the 10,000 test images)\n")
        print(latency_markdown(result["int8_variants"]["rows"]))
        print("\n| variant | accuracy |\n| --- | ---: |")
        for name, value in result["int8_variants"]["accuracy"].items():
            print(f"| {name} | {value:.4f} |")
    print(f"wrote {args.out}")
    return 0


def int8_variants(fp32_path, work, calibration_x, test_x, test_y, args) -> dict:
    """Where does the INT8 speed come from? Format, weight granularity and threads, side by side."""
    from cvhelpers.deploy.runtime import compare_latency, ort_runner, ort_session, session_accuracy
    from cvhelpers.deploy.export import quantize_int8

    runtimes, accuracy = {}, {}
    for threads in (1, 2):
        runtimes[f"fp32, {threads} thread(s)"] = ort_runner(ort_session(fp32_path, threads))
    for quant_format in ("QDQ", "QOperator"):
        for per_channel in (True, False):
            name = f"{quant_format} {'per-channel' if per_channel else 'per-tensor'}"
            path = quantize_int8(fp32_path, work / f"{name.replace(' ', '_')}.onnx",
                                 calibration_x.numpy(), per_channel=per_channel, quant_format=quant_format)
            accuracy[name] = session_accuracy(ort_session(path), test_x, test_y)
            for threads in (1, 2):
                runtimes[f"{name}, {threads} thread(s)"] = ort_runner(ort_session(path, threads))
    rows = compare_latency(runtimes, lambda b: test_x[:b].contiguous(), args.batch_sizes,
                           warmup=args.warmup, iters=args.iters, repeats=args.repeats)
    return {"rows": rows, "accuracy": accuracy}


if __name__ == "__main__":
    sys.exit(main())
