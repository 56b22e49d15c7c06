"""Resumable runs: RNG states and safe checkpoints.

Stop a run and continue it later as if it had never stopped: a checkpoint also keeps every
random-number generator's state (seeds and seeded loaders: :mod:`cvhelpers.data.loading`).

A checkpoint is one ``torch.save`` file holding a plain dict:

=================  ==========================================================================
key                what
=================  ==========================================================================
``format``         ``"cvhelpers-checkpoint-v1"``
``epoch``          number of finished epochs (``int``)
``model``          ``model.state_dict()``
``optimizer``      ``optimizer.state_dict()`` or ``None`` (same for ``scheduler``, ``scaler``)
``rng``            random-number-generator states: Python ``random``, NumPy, torch CPU, CUDA
``extra``          your own dict (``fit`` keeps its history and early-stopping state here)
``torch_version``  the torch version that wrote it
=================  ==========================================================================

Two safety properties matter when a run can be killed at any moment (a laptop lid, a cluster
time limit, a notebook restart):

* **Atomic writes.** :func:`save_checkpoint` writes through :func:`cvhelpers.files.atomic_write`:
  a temporary file in the same folder, flushed to disk (``fsync``), then renamed over the old
  file with ``os.replace``, which either fully happens or not at all. A crash mid-write leaves
  the previous checkpoint untouched.
* **Safe loading.** :func:`load_checkpoint` uses ``torch.load(weights_only=True)``, which refuses
  to run arbitrary pickled code from a file. So everything saved here is a tensor, a number, a
  string, ``None``, or a list/dict of those (the RNG states are converted into tensors).

Example::

    save_checkpoint("runs/demo/model.pt", model, optimizer, epoch=3)
    checkpoint = load_checkpoint("runs/demo/model.pt", model, optimizer)
    print(checkpoint["epoch"])  # 3
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

# torch.compile and DistributedDataParallel wrap the model, and their state_dict keys gain an
# "_orig_mod." or "module." prefix. Saving the plain module inside keeps every checkpoint
# loadable into a plain model, and lets single-process and DDP runs resume from each other's.
from cvhelpers.files import atomic_write
from cvhelpers.train.distributed import unwrap_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "capture_rng_state",
    "restore_rng_state",
    "save_checkpoint",
    "load_checkpoint",
]

CHECKPOINT_FORMAT = "cvhelpers-checkpoint-v1"


def capture_rng_state() -> dict[str, Any]:
    """Return the states of Python ``random``, NumPy's global RNG, torch (CPU and CUDA).

    Everything is stored as tensors, numbers or strings so that
    ``torch.load(weights_only=True)`` can read it back.
    """
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": py_version,
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "numpy": {
            "bit_generator": str(np_name),
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    # Only if CUDA is already in use: asking for its RNG state would otherwise start it.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back RNG states captured by :func:`capture_rng_state`."""
    py = state["python"]
    internal = tuple(int(v) for v in py["internal"].tolist())
    random.setstate((py["version"], internal, py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(
        (
            npy["bit_generator"],
            npy["keys"].cpu().numpy().astype(np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )
    # set_rng_state wants a CPU ByteTensor, even if map_location moved the file to a GPU.
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    *,
    epoch: int = 0,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint to ``path`` atomically and return the path.

    Args:
        path: target file, e.g. ``"runs/fmnist/best.pt"``; missing folders are created.
        model: its ``state_dict()`` is saved (the plain module inside ``torch.compile`` or
            ``DistributedDataParallel``).
        optimizer, scheduler, scaler: saved with ``state_dict()`` when given (a learning-rate
            scheduler and a ``torch.amp.GradScaler`` have state that resuming needs).
        epoch: number of finished epochs.
        extra: your own data. Keep it ``weights_only``-loadable: tensors, numbers, strings,
            ``None``, and lists/tuples/dicts of those.

    The RNG states of Python, NumPy and torch are always saved (see :func:`capture_rng_state`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "epoch": int(epoch),
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng_state(),
        "extra": extra if extra is not None else {},
        "torch_version": str(torch.__version__),  # a str subclass that weights_only refuses
    }

    with atomic_write(path) as f:
        torch.save(checkpoint, f)
    return path


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    scaler: torch.amp.GradScaler | None = None,
    *,
    map_location: str | torch.device = "cpu",
    restore_rng: bool = False,
    strict: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` and load it into the given objects.

    Args:
        path: the checkpoint file.
        model, optimizer, scheduler, scaler: when given, their ``load_state_dict`` is called.
            ``load_state_dict`` copies into tensors that already exist, so the model keeps its
            device even with the default ``map_location="cpu"``.
        map_location: where tensors are put while reading (``"cpu"`` works everywhere).
        restore_rng: also put back the saved RNG states. ``fit(resume_from=...)`` does this so a
            resumed run continues exactly; leave it off when you only want the weights.
        strict: passed to ``model.load_state_dict``.

    Returns:
        The whole checkpoint dict (``"epoch"``, ``"extra"``, the state dicts, ...).

    Uses ``torch.load(weights_only=True)``: a file that needs arbitrary pickled classes fails to
    load instead of running code.
    """
    checkpoint = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path}: not a cvhelpers checkpoint (no format={CHECKPOINT_FORMAT!r} entry); "
            "for a bare state_dict use model.load_state_dict(torch.load(path, weights_only=True))"
        )
    if model is not None:
        unwrap_model(model).load_state_dict(checkpoint["model"], strict=strict)
    for name, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("scaler", scaler)):
        if obj is None:
            continue
        if checkpoint[name] is None:
            raise ValueError(f"{path}: you passed a {name} but the checkpoint holds no "
                             f"{name} state")
        obj.load_state_dict(checkpoint[name])
    if restore_rng:
        restore_rng_state(checkpoint["rng"])
    return checkpoint
