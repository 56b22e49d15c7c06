"""Train the course CNN with data parallelism: one process per GPU (or per CPU core).

The same file runs as one process or under torchrun:

    python scripts/ddp_train.py --epochs 2                                   # 1 process
    torchrun --standalone --nproc_per_node=2 scripts/ddp_train.py --epochs 2  # 2 processes
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=HOST:29500 --rdzv_id=job42 scripts/ddp_train.py --device auto
        # the same command on each of 2 machines with 8 GPUs

``--batch-size`` is per process: the global batch is batch size x processes x
``--grad-accum``. Rank 0 writes ``<out>/results.json`` (losses, throughput, how far the ranks'
parameters differ) and every rank ``<out>/rank<r>.pt`` (its final weights), so a test can check
that the copies stayed identical and match a single-process run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils.data import Subset, TensorDataset

from cvhelpers.env import seed_everything, setup, usable_cores
from cvhelpers.models.cnn import SmallCNN
from cvhelpers.train.distributed import (cleanup_distributed, get_world_size, init_distributed, is_ddp,
                                         make_distributed_loader, unwrap_model, wrap_model)
from cvhelpers.train.engine import fit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", choices=["synthetic", "fashion-mnist"], default="synthetic")
    p.add_argument("--data-dir", default="datasets", help="where Fashion-MNIST is")
    p.add_argument("--num-samples", type=int, default=512, help="training images used")
    p.add_argument("--val-samples", type=int, default=0, help="validation images (rank 0)")
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--width", type=int, default=16, help="SmallCNN width")
    p.add_argument("--norm", choices=["batch", "none"], default="none",
                   help="'none': a sample's gradient does not depend on its batch, so DDP "
                        "matches one process exactly")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm (GPUs only)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    p.add_argument("--checkpoint", help="best checkpoint path (the _last one is kept beside it)")
    p.add_argument("--resume", help="a _last checkpoint to continue from")
    p.add_argument("--threads", type=int, help="torch threads per process (default: cores / "
                                                 "processes on this machine)")
    p.add_argument("--device", default="auto", help="'auto' (GPU LOCAL_RANK if any) or 'cpu'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="build/ddp_train", help="folder for results and weights")
    return p.parse_args(argv)


def make_datasets(args: argparse.Namespace) -> tuple[TensorDataset, TensorDataset | None]:
    """Fashion-MNIST subsets, or synthetic 28x28 noise images whose label (0-3) is the quadrant
    made brighter."""
    if args.data == "fashion-mnist":
        from cvhelpers.data.fashion_mnist import load_fashion_mnist, to_tensor_dataset

        train = to_tensor_dataset(*load_fashion_mnist(args.data_dir, "train"))
        test = to_tensor_dataset(*load_fashion_mnist(args.data_dir, "test"))
        val = Subset(test, range(args.val_samples)) if args.val_samples else None
        return Subset(train, range(args.num_samples)), val
    g = torch.Generator().manual_seed(1234)  # the same data on every process
    n = args.num_samples + args.val_samples
    labels = torch.randint(0, 4, (n,), generator=g)
    images = torch.rand(n, 1, 28, 28, generator=g) - 0.5  # centred noise
    for i, label in enumerate(labels.tolist()):
        row, col = divmod(label, 2)
        images[i, :, 14 * row:14 * row + 14, 14 * col:14 * col + 14] += 0.5
    train = TensorDataset(images[:args.num_samples], labels[:args.num_samples])
    if not args.val_samples:
        return train, None
    return train, TensorDataset(images[args.num_samples:], labels[args.num_samples:])


def max_difference_between_ranks(tensors: list[torch.Tensor]) -> float:
    """Largest |t_rank0 - t_rank_r| over these tensors and all ranks (0.0: identical copies)."""
    if get_world_size() == 1 or not tensors:
        return 0.0
    flat = torch.cat([t.detach().float().flatten() for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(get_world_size())]
    dist.all_gather(gathered, flat)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def count_gradient_allreduces(model: torch.nn.Module) -> list[int]:
    """Make a DDP model count its gradient all-reduces (one per bucket per synchronised
    backward): ``no_sync`` during gradient accumulation should leave out all but the last."""
    calls = [0]
    if not is_ddp(model):
        return calls

    # no annotations: DDP checks them, and `from __future__ import annotations` makes them strings
    def counting_allreduce(state, bucket):  # (None, dist.GradBucket) -> torch.futures.Future
        calls[0] += 1
        return allreduce_hook(state, bucket)  # DDP's default: average the bucket's gradients

    model.register_comm_hook(None, counting_allreduce)
    return calls


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    setup(threads=args.threads or max(1, usable_cores() // local_world))
    info = init_distributed(device=args.device)
    seed_everything(args.seed)  # the same initial weights everywhere (DDP also copies rank 0's)

    train_set, val_set = make_datasets(args)
    num_classes = 10 if args.data == "fashion-mnist" else 4
    model = SmallCNN(in_channels=1, num_classes=num_classes, width=args.width, norm=args.norm)
    model = wrap_model(model, info.device, sync_batchnorm=args.sync_bn)
    allreduces = count_gradient_allreduces(model)
    train_loader = make_distributed_loader(train_set, args.batch_size, shuffle=True, seed=args.seed)
    val_loader = (torch.utils.data.DataLoader(val_set, batch_size=256) if val_set else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]

    start = time.perf_counter()
    history = fit(model, train_loader, val_loader, epochs=args.epochs, optimizer=optimizer,
                  device=info.device, amp_dtype=amp_dtype, grad_accum_steps=args.grad_accum,
                  monitor="val_loss" if val_loader else "train_loss",
                  checkpoint_path=args.checkpoint, resume_from=args.resume,
                  restore_best=False, progress=False, log_fn=print)
    seconds = time.perf_counter() - start

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(unwrap_model(model).state_dict(), out / f"rank{info.rank}.pt")
    # Parameters must agree bit for bit. BatchNorm's running statistics (buffers) may not: each
    # process updates them from its own samples (DDP copies rank 0's at every forward pass).
    plain = unwrap_model(model)
    diff = max_difference_between_ranks(list(plain.parameters()))
    buffer_diff = max_difference_between_ranks(list(plain.buffers()))
    images_per_epoch = len(train_loader.sampler) * info.world_size  # padded to equal shares
    results = {
        "world_size": info.world_size, "backend": info.backend, "device": str(info.device),
        "threads_per_process": torch.get_num_threads(), "batch_size_per_process": args.batch_size,
        "global_batch": args.batch_size * info.world_size * args.grad_accum,
        "history": history.to_dict(), "seconds": seconds,
        # the last epoch's speed: the first one also pays for start-up and warm-up
        "images_per_s": images_per_epoch / history.epoch_seconds[-1],
        "gradient_allreduces": allreduces[0],
        "max_param_diff_between_ranks": diff, "max_buffer_diff_between_ranks": buffer_diff,
    }
    if info.is_main:
        (out / "results.json").write_text(json.dumps(results, indent=1))
        print(f"world size {info.world_size}: final train loss {history.train_loss[-1]:.4f}, "
              f"{results['images_per_s']:.0f} img/s, parameters differ between ranks by {diff:.3g}")
    cleanup_distributed()
    return results


if __name__ == "__main__":
    main()
