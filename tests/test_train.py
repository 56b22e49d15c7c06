"""train.py: the training loop, early stopping, best/last checkpoints, exact resuming, AMP."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from cvhelpers.train.checkpoint import load_checkpoint
from cvhelpers.models.cnn import SmallCNN
from cvhelpers.train.engine import EarlyStopping, History, fit, last_checkpoint_path
from cvhelpers.train.loop import NonFiniteLossError
from cvhelpers.train.evaluate import evaluate, predict
from cvhelpers.data.loading import make_loader
from cvhelpers.env import seed_everything

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def separable(n: int = 64, seed: int = 0, flip: bool = False) -> TensorDataset:
    """2-D points labelled by the side of a line (``flip`` swaps the labels)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return TensorDataset(x, 1 - y if flip else y)


def tiny_images(n: int = 32, seed: int = 123) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 8, 8, generator=g)
    return TensorDataset(images, torch.randint(0, 4, (n,), generator=g))


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def test_fit_reduces_loss_on_a_separable_problem():
    seed_everything(0)
    model = mlp()
    train_loader = make_loader(separable(), 16, shuffle=True)
    history = fit(model, train_loader, make_loader(separable(seed=1), 64, shuffle=False),
                  epochs=8, optimizer=torch.optim.Adam(model.parameters(), lr=0.05), progress=False)
    assert len(history.train_loss) == 8 and history.epoch == list(range(1, 9))
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    assert history.val_accuracy[-1] >= 0.9
    assert not history.stopped_early and history.best_epoch is not None
    assert all(s >= 0 for s in history.epoch_seconds)
    json.dumps(history.to_dict())  # plain numbers and lists
    assert History.from_dict(history.to_dict()) == history


def test_early_stopping_class():
    stopper = EarlyStopping(patience=2)
    assert [stopper.step(v) for v in [1.0, 0.8, 0.9, 0.85]] == [False, False, False, True]
    assert (stopper.best, stopper.best_epoch) == (0.8, 2)
    maxer = EarlyStopping(patience=1, mode="max", min_delta=0.05)
    assert maxer.step(0.5) is False and maxer.improved
    assert maxer.step(0.53) is True and not maxer.improved  # not better by more than min_delta
    never = EarlyStopping(patience=None)
    assert not any(never.step(v) for v in [1.0, 2.0, 3.0, float("nan")])
    copy = EarlyStopping(patience=2)
    copy.load_state_dict(stopper.state_dict())
    assert copy.should_stop and copy.best == 0.8


@pytest.mark.parametrize("with_checkpoint", [False, True])
def test_early_stopping_stops_after_patience_and_restores_best(tmp_path, with_checkpoint):
    # validation labels are the opposite of the training labels: the better the model fits the
    # training set, the worse its validation loss, so epoch 1 is the best one
    seed_everything(0)
    model = mlp()
    weights_per_epoch = []
    ckpt = tmp_path / "best.pt" if with_checkpoint else None
    train_loader = make_loader(separable(), 16, shuffle=True)
    history = fit(model, train_loader, make_loader(separable(flip=True), 64, shuffle=False),
                  epochs=20, optimizer=torch.optim.SGD(model.parameters(), lr=0.2),
                  early_stopping_patience=2, checkpoint_path=ckpt, progress=False,
                  log_fn=lambda m: weights_per_epoch.append(snapshot(model)))
    assert history.val_loss == sorted(history.val_loss), "precondition: val loss keeps rising"
    assert history.best_epoch == 1 and history.stopped_early
    assert len(history.train_loss) == 3  # epoch 1 best, then 2 epochs without improvement
    assert_same_weights(snapshot(model), weights_per_epoch[0])
    if with_checkpoint:
        best = load_checkpoint(ckpt)
        assert best["epoch"] == 1
        assert_same_weights(best["model"], weights_per_epoch[0])
        last = load_checkpoint(last_checkpoint_path(ckpt))
        assert last["epoch"] == 3
        assert_same_weights(last["model"], weights_per_epoch[2])


def test_best_checkpoint_follows_monitor_val_accuracy(tmp_path):
    seed_everything(0)
    model = mlp()
    weights_per_epoch = []
    train_loader = make_loader(separable(), 16, shuffle=True)
    history = fit(model, train_loader, make_loader(separable(seed=1), 64, shuffle=False),
                  epochs=4, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  monitor="val_accuracy", checkpoint_path=tmp_path / "best.pt", progress=False,
                  log_fn=lambda m: weights_per_epoch.append(snapshot(model)))
    best = history.best_epoch
    assert history.val_accuracy[best - 1] == max(history.val_accuracy)
    assert history.val_accuracy.index(max(history.val_accuracy)) == best - 1  # first of equals
    assert_same_weights(load_checkpoint(tmp_path / "best.pt")["model"], weights_per_epoch[best - 1])
    assert_same_weights(snapshot(model), weights_per_epoch[best - 1])  # restore_best=True


def run_tiny_cnn(checkpoint_path, epochs, total_epochs=4, resume_from=None, log_fn=None):
    """A run that uses every source of randomness: init, shuffling, dropout; plus BatchNorm,
    AdamW state and a per-batch OneCycle schedule."""
    seed_everything(0)
    model = SmallCNN(width=4, num_classes=4, image_size=8, dropout=0.3)
    train_loader = make_loader(tiny_images(), batch_size=8, shuffle=True, seed=0)
    val_loader = make_loader(tiny_images(16, seed=7), batch_size=8, shuffle=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.05,
                                                    total_steps=total_epochs * len(train_loader))
    history = fit(model, train_loader, val_loader, epochs=epochs, optimizer=optimizer,
                  scheduler=scheduler, checkpoint_path=checkpoint_path, resume_from=resume_from,
                  restore_best=False, progress=False, log_fn=log_fn)
    return model, history


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full_model, full_history = run_tiny_cnn(tmp_path / "a" / "best.pt", epochs=4)

    # stop after 2 epochs (a separate fit call), then resume in a fresh model to epoch 4
    run_tiny_cnn(tmp_path / "b" / "best.pt", epochs=2)
    last = last_checkpoint_path(tmp_path / "b" / "best.pt")
    assert load_checkpoint(last)["epoch"] == 2
    resumed_model, resumed_history = run_tiny_cnn(tmp_path / "b" / "best.pt", epochs=4,
                                                  resume_from=last)
    assert_same_weights(snapshot(resumed_model), snapshot(full_model))
    assert resumed_history.train_loss == full_history.train_loss
    assert resumed_history.val_loss == full_history.val_loss
    assert resumed_history.epoch == [1, 2, 3, 4]


def test_resume_after_keyboard_interrupt(tmp_path):
    full_model, _ = run_tiny_cnn(tmp_path / "a" / "best.pt", epochs=4)

    def interrupt_after_epoch_2(metrics):
        if metrics["epoch"] == 2:
            raise KeyboardInterrupt  # what the notebook's stop button does

    with pytest.raises(KeyboardInterrupt):
        run_tiny_cnn(tmp_path / "b" / "best.pt", epochs=4, log_fn=interrupt_after_epoch_2)
    resumed_model, _ = run_tiny_cnn(tmp_path / "b" / "best.pt", epochs=4,
                                    resume_from=last_checkpoint_path(tmp_path / "b" / "best.pt"))
    assert_same_weights(snapshot(resumed_model), snapshot(full_model))


def run_with_speed_switches(checkpoint_path, epochs, resume_from=None, **fit_kwargs):
    """Like run_tiny_cnn, with a per-step cosine schedule and whatever fit switches are given."""
    seed_everything(0)
    model = SmallCNN(width=4, num_classes=4, image_size=8, dropout=0.3)
    train_loader = make_loader(tiny_images(), batch_size=8, shuffle=True, seed=0)  # 4 batches
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    steps_per_epoch = math.ceil(len(train_loader) / fit_kwargs.get("grad_accum_steps", 1))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=4 * steps_per_epoch)
    fit(model, train_loader, None, epochs=epochs, optimizer=optimizer, scheduler=scheduler,
        monitor="train_loss", checkpoint_path=checkpoint_path, resume_from=resume_from,
        restore_best=False, progress=False, **fit_kwargs)
    return model, scheduler


@pytest.mark.filterwarnings("ignore:amp_dtype=torch.float16 on CPU")
@pytest.mark.parametrize("amp_dtype", [torch.bfloat16, torch.float16])  # float16: a GradScaler
def test_resume_with_amp_accumulation_clipping_and_cosine(tmp_path, amp_dtype):
    switches = dict(amp_dtype=amp_dtype, grad_accum_steps=3, grad_clip_norm=0.5, sync_every=2)
    full_model, full_scheduler = run_with_speed_switches(tmp_path / "a" / "best.pt", 4, **switches)
    run_with_speed_switches(tmp_path / "b" / "best.pt", 2, **switches)
    last = last_checkpoint_path(tmp_path / "b" / "best.pt")
    assert (load_checkpoint(last)["scaler"] is not None) == (amp_dtype == torch.float16)
    resumed_model, resumed_scheduler = run_with_speed_switches(
        tmp_path / "b" / "best.pt", 4, resume_from=last, **switches)
    assert_same_weights(snapshot(resumed_model), snapshot(full_model))
    assert resumed_scheduler.last_epoch == full_scheduler.last_epoch == 4 * 2  # ceil(4 / 3) = 2


TRAIN_SCRIPT = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[4])
from tests.test_train import run_tiny_cnn
from cvhelpers.train.engine import last_checkpoint_path
out, sleep, resume = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "resume"
ckpt = out / "best.pt"
model, _ = run_tiny_cnn(ckpt, epochs=6, total_epochs=6,
                        resume_from=last_checkpoint_path(ckpt) if resume else None,
                        log_fn=lambda m: time.sleep(sleep))
torch.save(model.state_dict(), out / "final.pt")
"""


@pytest.mark.slow
def test_resume_after_sigkill_in_a_subprocess(tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(TRAIN_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}

    def start(out: Path, sleep: float, mode: str) -> subprocess.Popen:
        out.mkdir(exist_ok=True)
        return subprocess.Popen([sys.executable, str(script), str(out), str(sleep), mode,
                                 str(PROJECT_ROOT)], env=env, cwd=tmp_path,
                                stderr=subprocess.PIPE, text=True)

    full = start(tmp_path / "full", 0.0, "fresh")
    _, err = full.communicate(timeout=120)
    assert full.returncode == 0, err

    # a slow run (1 s pause per epoch), killed without warning once a checkpoint exists
    victim = start(tmp_path / "killed", 1.0, "fresh")
    last = last_checkpoint_path(tmp_path / "killed" / "best.pt")
    deadline = time.monotonic() + 120
    while not last.exists():
        assert victim.poll() is None, f"training ended before it was killed: {victim.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert load_checkpoint(last)["epoch"] < 6
    assert not (tmp_path / "killed" / "final.pt").exists()

    resumed = start(tmp_path / "killed", 0.0, "resume")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert_same_weights(torch.load(tmp_path / "killed" / "final.pt", weights_only=True),
                        torch.load(tmp_path / "full" / "final.pt", weights_only=True))


def test_non_finite_loss_names_epoch_and_step():
    x, y = separable(16).tensors
    x = x.clone()
    x[9, 0] = float("nan")  # sample 9 is in the 3rd batch of 4
    model = mlp()
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 3 of 4.*learning rate") as info:
        fit(model, make_loader(TensorDataset(x, y), 4, shuffle=False), None, epochs=1,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1), monitor="train_loss",
            progress=False)
    assert isinstance(info.value, FloatingPointError)
    assert (info.value.epoch, info.value.step) == (1, 3)


def test_bfloat16_autocast_on_cpu_trains():
    seed_everything(0)
    model = SmallCNN(width=4, num_classes=4, image_size=8)
    loader = make_loader(tiny_images(), 8, True)
    seen = []  # the first convolution's output dtype, call by call: autocast is really on
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first_conv.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    history = fit(model, loader, loader, epochs=2, optimizer=torch.optim.Adam(model.parameters()),
                  amp_dtype=torch.bfloat16, device="cpu", progress=False)
    assert all(math.isfinite(v) for v in history.train_loss + history.val_loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay float32
    assert seen and set(seen) == {torch.bfloat16}  # training and validation forwards alike


def test_float16_on_cpu_warns_and_uses_a_grad_scaler(monkeypatch):
    model = mlp()
    loader = make_loader(separable(8), 4, False)
    scaled = []  # every backward goes through the scaler
    scale = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self, outputs: scaled.append(1) or scale(self, outputs))
    with pytest.warns(UserWarning, match="far slower"):
        history = fit(model, loader, None, epochs=1,
                      optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                      amp_dtype=torch.float16, device="cpu", monitor="train_loss", progress=False)
    assert math.isfinite(history.train_loss[0])
    assert len(scaled) == len(loader) == 2


def one_epoch_of_sgd(batches, grad_accum_steps):
    torch.manual_seed(0)
    model = nn.Linear(5, 3)  # no BatchNorm: a sample's gradient does not depend on its batch
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fit(model, batches, None, epochs=1, optimizer=optimizer, grad_accum_steps=grad_accum_steps,
        monitor="train_loss", progress=False)
    return snapshot(model)


@pytest.mark.parametrize("num_samples", [16, 12])  # 12: the last group holds a single batch
def test_grad_accumulation_equals_a_bigger_batch(num_samples):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(num_samples, 5, generator=g)
    y = torch.randint(0, 3, (num_samples,), generator=g)
    small = [(x[i:i + 4], y[i:i + 4]) for i in range(0, num_samples, 4)]  # a list works as loader
    big = [(x[i:i + 8], y[i:i + 8]) for i in range(0, num_samples, 8)]
    accumulated = one_epoch_of_sgd(small, grad_accum_steps=2)
    reference = one_epoch_of_sgd(big, grad_accum_steps=1)
    for key in reference:
        torch.testing.assert_close(accumulated[key], reference[key], atol=1e-6, rtol=0)


def test_per_batch_scheduler_counts_optimizer_steps():
    model = mlp()
    loader = make_loader(separable(40), 4, True)  # 10 batches
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = 3 * math.ceil(len(loader) / 3)  # OneCycleLR raises if stepped past total_steps
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=steps)
    fit(model, loader, None, epochs=3, optimizer=optimizer, scheduler=scheduler,
        grad_accum_steps=3, monitor="train_loss", progress=False)
    assert scheduler.last_epoch == steps


def test_per_epoch_scheduler_and_lr_history():
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    loader = make_loader(separable(16), 8, True)
    history = fit(model, loader, loader, epochs=3, optimizer=optimizer, scheduler=scheduler,
                  scheduler_interval="epoch", progress=False)
    assert history.lr == pytest.approx([0.1, 0.05, 0.025])


def test_grad_clip_limits_the_step():
    model = mlp()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    loader = [(torch.randn(8, 2) * 100, torch.randint(0, 2, (8,)))]
    fit(model, loader, None, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        grad_clip_norm=0.01, monitor="train_loss", progress=False)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert (after - before).norm() <= 0.01 + 1e-6


def test_custom_step_fn_with_dict_batches():
    x, y = separable(16).tensors
    batches = [{"image": x[i:i + 4], "label": y[i:i + 4]} for i in range(0, 16, 4)]

    def step(model, batch, loss_fn):
        return loss_fn(model(batch["image"]), batch["label"]), None, None

    model = mlp()
    history = fit(model, batches, batches, epochs=2,
                  optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                  step_fn=step, progress=False)
    assert math.isnan(history.train_accuracy[0]) and math.isfinite(history.val_loss[1])


def test_evaluate_and_predict_use_eval_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.Dropout(0.5), nn.Linear(32, 2))
    dataset = separable(10)
    loader = make_loader(dataset, 4, shuffle=False)  # batches of 4, 4, 2
    first = evaluate(model, loader, nn.CrossEntropyLoss(), "cpu")
    assert evaluate(model, loader, nn.CrossEntropyLoss(), "cpu") == first  # dropout is off
    assert model.training  # mode given back
    x, y = dataset.tensors
    model.eval()
    with torch.no_grad():
        logits = model(x)
    model.train()
    assert first["loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), abs=1e-6)
    assert first["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())

    probs, targets = predict(model, loader, "cpu", probs=True)
    assert probs.shape == (10, 2) and not probs.requires_grad
    torch.testing.assert_close(probs, logits.softmax(1))
    assert torch.equal(targets, y)
    outputs, no_targets = predict(model, [x[:3], x[3:]], "cpu")  # bare image batches
    assert no_targets is None and outputs.shape == (10, 2)


def test_bad_arguments():
    model = mlp()
    loader = make_loader(separable(8), 4, False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="needs a val_loader"):
        fit(model, loader, None, epochs=1, optimizer=opt, progress=False)
    with pytest.raises(ValueError, match="amp_dtype"):
        fit(model, loader, loader, epochs=1, optimizer=opt, amp_dtype=torch.float64, progress=False)


def test_make_loader_order_depends_only_on_seed():
    dataset = TensorDataset(torch.arange(20))

    def order(seed, global_seed):
        torch.manual_seed(global_seed)  # the global RNG must not matter
        return torch.cat([batch[0] for batch in make_loader(dataset, 5, True, seed)])

    assert torch.equal(order(0, global_seed=1), order(0, global_seed=2))
    assert not torch.equal(order(0, global_seed=1), order(1, global_seed=1))


def test_progress_prints_one_line_per_epoch(capsys):
    model = mlp()
    loader = make_loader(separable(16), 8, shuffle=True)
    fit(model, loader, loader, epochs=2, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        progress=True)
    lines = capsys.readouterr().out.strip().splitlines()  # the tqdm bars go to stderr
    assert len(lines) == 2 and lines[0].startswith("epoch 1/2") and "val loss" in lines[0]


def test_empty_train_loader_is_a_clear_error():
    model = mlp()
    loader = make_loader(separable(4), 8, shuffle=True, drop_last=True)
    with pytest.raises(ValueError, match="no batches"):
        fit(model, loader, None, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            monitor="train_loss", progress=False)
