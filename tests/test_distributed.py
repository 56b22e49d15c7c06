"""distributed.py + fit under DDP: torchrun with 2 CPU processes (gloo) against one process.

Why the two can agree: with ``norm="none"`` (no BatchNorm) a sample's gradient does not depend
on the other samples in its batch, DDP averages the two processes' gradients (each the mean
over its half of the global batch), and the DistributedSampler gives the two processes together
exactly the samples of the single process's batch. What differs is the order of float32
additions, hence a tolerance of 1e-5 rather than bitwise equality. BatchNorm would break the
equivalence (statistics over 8 samples per process instead of 16), and SyncBatchNorm, which
would restore it, runs on CUDA only.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from cvhelpers.train.checkpoint import load_checkpoint
from cvhelpers.train.distributed import (broadcast_object, get_rank, get_world_size, init_distributed, is_ddp, is_main_process, make_distributed_loader, no_sync_if, unwrap_model, wrap_model)
from cvhelpers.models.cnn import SmallCNN
from cvhelpers.train.engine import fit, last_checkpoint_path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCRIPT = PROJECT_ROOT / "scripts" / "ddp_train.py"
# 128 samples; per process 8 per batch x 2 accumulated = a global batch of 32 with 2 processes
COMMON = ["--num-samples", "128", "--grad-accum", "2", "--width", "8", "--lr", "0.1",
          "--threads", "1", "--norm", "none"]
TOLERANCE = 1e-5


def run_script(out: Path, *args: str, nproc: int = 1) -> subprocess.CompletedProcess:
    if nproc == 1:
        command = [sys.executable, str(SCRIPT)]
    else:  # the same as `torchrun --standalone --nproc_per_node=2 scripts/ddp_train.py ...`
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={nproc}", str(SCRIPT)]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run([*command, *COMMON, *args, "--out", str(out)], env=env,
                            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four runs: 1 process for 1 epoch then resumed to 2; 2 processes for 2 epochs; and 2
    processes resuming from the 1-process checkpoint of epoch 1."""
    root = tmp_path_factory.mktemp("ddp")
    single_ckpt = root / "single" / "best.pt"
    run_script(root / "single_1", "--epochs", "1", "--batch-size", "16",
               "--checkpoint", str(single_ckpt))
    epoch1 = root / "single_epoch1_last.pt"
    epoch1.write_bytes(last_checkpoint_path(single_ckpt).read_bytes())
    run_script(root / "single", "--epochs", "2", "--batch-size", "16",
               "--checkpoint", str(single_ckpt), "--resume", str(epoch1))
    ddp = run_script(root / "ddp", "--epochs", "2", "--batch-size", "8", "--checkpoint",
                     str(root / "ddp_ckpt" / "best.pt"), nproc=2)
    run_script(root / "ddp_resumed", "--epochs", "2", "--batch-size", "8", "--resume",
               str(epoch1), nproc=2)
    return root, ddp.stdout


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow
def test_both_ranks_end_with_identical_weights(runs):
    root, _ = runs
    assert max_abs_diff(weights(root / "ddp" / "rank0.pt"), weights(root / "ddp" / "rank1.pt")) == 0
    results = json.loads((root / "ddp" / "results.json").read_text())
    assert results["world_size"] == 2 and results["backend"] == "gloo"
    assert results["global_batch"] == 32 and results["max_param_diff_between_ranks"] == 0


@pytest.mark.slow
def test_gradient_accumulation_all_reduces_only_once_per_optimizer_step(runs):
    root, _ = runs
    results = json.loads((root / "ddp" / "results.json").read_text())
    # 128 samples / 2 processes / 8 per batch = 8 batches per epoch; groups of 2 -> 4 optimizer
    # steps per epoch, 2 epochs; the small model's gradients fit in one DDP bucket. Without
    # no_sync every batch would all-reduce: 16.
    assert results["gradient_allreduces"] == 2 * 4


@pytest.mark.slow
def test_ddp_matches_one_process_with_the_same_global_batch(runs):
    root, _ = runs
    single, ddp = weights(root / "single" / "rank0.pt"), weights(root / "ddp" / "rank0.pt")
    assert max_abs_diff(single, ddp) <= TOLERANCE
    assert max_abs_diff(single, weights(root / "single_1" / "rank0.pt")) > 1e-3  # it trained
    single_history = json.loads((root / "single" / "results.json").read_text())["history"]
    ddp_history = json.loads((root / "ddp" / "results.json").read_text())["history"]
    # losses are averaged over both processes: the same numbers as one process sees
    assert ddp_history["train_loss"] == pytest.approx(single_history["train_loss"], abs=TOLERANCE)
    assert ddp_history["train_accuracy"] == single_history["train_accuracy"]


@pytest.mark.slow
def test_ddp_resumes_from_a_single_process_checkpoint(runs):
    root, _ = runs
    resumed = weights(root / "ddp_resumed" / "rank0.pt")
    assert max_abs_diff(resumed, weights(root / "ddp_resumed" / "rank1.pt")) == 0
    assert max_abs_diff(resumed, weights(root / "ddp" / "rank0.pt")) <= TOLERANCE
    history = json.loads((root / "ddp_resumed" / "results.json").read_text())["history"]
    assert history["epoch"] == [1, 2]  # epoch 1 came from the single-process run


@pytest.mark.slow
def test_rank0_writes_plain_checkpoints_and_logs_once(runs):
    root, stdout = runs
    plain = SmallCNN(in_channels=1, num_classes=4, width=8, norm="none")
    checkpoint = load_checkpoint(last_checkpoint_path(root / "ddp_ckpt" / "best.pt"), plain)
    assert checkpoint["epoch"] == 2
    assert not any(k.startswith("module.") for k in checkpoint["model"])
    assert max_abs_diff(plain.state_dict(), weights(root / "ddp" / "rank0.pt")) == 0
    assert stdout.count("'epoch': 1,") == 1 and stdout.count("'epoch': 2,") == 1


def test_without_torchrun_everything_is_one_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed(device="cpu")
    assert (info.rank, info.world_size, info.backend, info.is_main) == (0, 1, None, True)
    assert (get_rank(), get_world_size(), is_main_process()) == (0, 1, True)
    assert broadcast_object({"a": 1}) == {"a": 1}
    model = wrap_model(nn.Linear(2, 2), "cpu")
    assert isinstance(model, nn.Linear) and not is_ddp(model)
    with no_sync_if(model, skip_sync=True):  # a no-op outside DDP
        model(torch.zeros(1, 2)).sum().backward()


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    """Process LOCAL_RANK uses GPU LOCAL_RANK: on a 1-GPU machine the second process must say
    so (before touching CUDA or the process group), not die in set_device."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("set_device was called"))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="needs GPU 1.*device='cpu'"):
        init_distributed()


def test_unwrap_model_removes_compile_and_dataparallel_wrappers():
    inner = nn.Linear(3, 2)

    class CompiledLike(nn.Module):  # torch.compile's OptimizedModule keeps the model as _orig_mod
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self._orig_mod = module

    wrapped = CompiledLike(nn.DataParallel(inner))
    assert unwrap_model(wrapped) is inner and unwrap_model(inner) is inner
    assert list(unwrap_model(wrapped).state_dict()) == ["weight", "bias"]


def test_distributed_sampler_shares_add_up_to_the_single_process_batches():
    dataset = TensorDataset(torch.arange(40))
    for epoch in (0, 1):
        loaders = [make_distributed_loader(dataset, 4, shuffle=True, seed=3, num_replicas=2,
                                           rank=r) for r in (0, 1)]
        single = make_distributed_loader(dataset, 8, shuffle=True, seed=3, num_replicas=1, rank=0)
        for loader in (*loaders, single):
            loader.sampler.set_epoch(epoch)
        shares = [[batch[0] for batch in loader] for loader in loaders]
        whole = [batch[0] for batch in single]
        assert len(whole) == len(shares[0]) == len(shares[1]) == 5
        for k, batch in enumerate(whole):
            both = torch.cat([shares[0][k], shares[1][k]])
            assert sorted(both.tolist()) == sorted(batch.tolist())
        assert sorted(torch.cat(whole).tolist()) == list(range(40))  # every sample once
    # a new epoch is a new order
    epoch0 = make_distributed_loader(dataset, 8, shuffle=True, seed=3, num_replicas=1, rank=0)
    first = torch.cat([b[0] for b in epoch0])
    epoch0.sampler.set_epoch(1)
    assert not torch.equal(first, torch.cat([b[0] for b in epoch0]))


def test_fit_calls_set_epoch_on_the_sampler():
    dataset = TensorDataset(torch.randn(8, 2), torch.randint(0, 2, (8,)))
    loader = make_distributed_loader(dataset, 4, shuffle=True, num_replicas=1, rank=0)
    epochs_seen = []
    original = loader.sampler.set_epoch
    loader.sampler.set_epoch = lambda e: (epochs_seen.append(e), original(e))
    model = nn.Linear(2, 2)
    fit(model, loader, None, epochs=3, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        monitor="train_loss", progress=False)
    assert epochs_seen == [0, 1, 2]
