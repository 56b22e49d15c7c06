"""checkpoint.py: full round trips, weights_only loading, RNG states, and crash-safe writes."""

import random

import numpy as np
import pytest
import torch
from torch import nn

from cvhelpers.train.checkpoint import (capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint)


def make_training_objects(seed: int, scale: float = 65536.0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    return model, optimizer, scheduler, scaler


def train_steps(model, optimizer, scheduler, steps: int = 3) -> None:
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(torch.randn(6, 4)), torch.randint(0, 3, (6,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_round_trip_restores_model_optimizer_scheduler_scaler(tmp_path):
    model, optimizer, scheduler, scaler = make_training_objects(0, scale=1024.0)
    train_steps(model, optimizer, scheduler)
    path = save_checkpoint(tmp_path / "sub" / "ckpt.pt", model, optimizer, scheduler, scaler,
                           epoch=7, extra={"note": "hello", "values": [1.0, 2.0]})
    assert path.exists()

    model2, optimizer2, scheduler2, scaler2 = make_training_objects(1)  # different init
    ckpt = load_checkpoint(path, model2, optimizer2, scheduler2, scaler2)
    assert ckpt["epoch"] == 7 and ckpt["extra"] == {"note": "hello", "values": [1.0, 2.0]}
    assert_same_state(model.state_dict(), model2.state_dict())
    assert scheduler2.last_epoch == scheduler.last_epoch == 3
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for p, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.equal(optimizer.state[p]["exp_avg"], optimizer2.state[p2]["exp_avg"])
    assert scaler2.get_scale() == 1024.0

    # the same next step from both: nothing that matters was left out
    torch.manual_seed(5)
    train_steps(model, optimizer, scheduler, 1)
    torch.manual_seed(5)
    train_steps(model2, optimizer2, scheduler2, 1)
    assert_same_state(model.state_dict(), model2.state_dict())


def test_file_is_weights_only_loadable(tmp_path):
    model, optimizer, scheduler, scaler = make_training_objects(0)
    train_steps(model, optimizer, scheduler)
    save_checkpoint(tmp_path / "c.pt", model, optimizer, scheduler, scaler, epoch=1)
    raw = torch.load(tmp_path / "c.pt", weights_only=True)  # raises on any pickled class
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "epoch", "extra"} <= raw.keys()
    assert isinstance(raw["torch_version"], str)


def draw_random_numbers():
    return (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())


def test_rng_states_are_saved_and_restored(tmp_path):
    model = nn.Linear(2, 2)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    np.random.randn()  # leave a cached gaussian in NumPy's state
    save_checkpoint(tmp_path / "c.pt", model)
    expected = draw_random_numbers()

    load_checkpoint(tmp_path / "c.pt", model)  # restore_rng=False: RNGs untouched
    assert draw_random_numbers() != expected
    load_checkpoint(tmp_path / "c.pt", model, restore_rng=True)
    assert draw_random_numbers() == expected

    state = capture_rng_state()
    first = draw_random_numbers()
    restore_rng_state(state)
    assert draw_random_numbers() == first


def test_crash_during_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    model = nn.Linear(3, 2)
    save_checkpoint(path, model, epoch=1)
    good_weights = {k: v.clone() for k, v in model.state_dict().items()}

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip file")  # some bytes reach the temp file...
        raise OSError("disk full")  # ...then the write dies

    with torch.no_grad():
        model.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, model, epoch=2)
    monkeypatch.undo()

    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]  # no temp file left behind
    fresh = nn.Linear(3, 2)
    ckpt = load_checkpoint(path, fresh)
    assert ckpt["epoch"] == 1
    assert_same_state(fresh.state_dict(), good_weights)


def test_overwrite_replaces_the_file(tmp_path):
    model = nn.Linear(3, 2)
    save_checkpoint(tmp_path / "c.pt", model, epoch=1)
    save_checkpoint(tmp_path / "c.pt", model, epoch=2)
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 2
    assert len(list(tmp_path.iterdir())) == 1


def test_compiled_style_wrapper_is_saved_unwrapped(tmp_path):
    class Wrapper(nn.Module):  # torch.compile's OptimizedModule keeps the model as _orig_mod
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._orig_mod = inner

    inner = nn.Linear(3, 2)
    save_checkpoint(tmp_path / "c.pt", Wrapper(inner))
    plain = nn.Linear(3, 2)
    load_checkpoint(tmp_path / "c.pt", plain)  # keys have no "_orig_mod." prefix
    assert_same_state(plain.state_dict(), inner.state_dict())


def test_clear_errors(tmp_path):
    torch.save({"weight": torch.zeros(1)}, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="not a cvhelpers checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")
    model = nn.Linear(2, 2)
    save_checkpoint(tmp_path / "c.pt", model)
    with pytest.raises(ValueError, match="no optimizer state"):
        load_checkpoint(tmp_path / "c.pt", model, torch.optim.SGD(model.parameters(), lr=0.1))
