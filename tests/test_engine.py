"""The one engine trains every task: budgets, schedules, loss dicts, task validators, and exact
resumes after ``kill -9`` for a detector and a segmenter too (classification: test_train.py)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from cvhelpers.data.loading import make_loader
from cvhelpers.detection.data import DetectionDataset, collate_detection
from cvhelpers.detection.steps import DetectionValidator, detection_step
from cvhelpers.env import seed_everything
from cvhelpers.segmentation.data import SegmentationDataset
from cvhelpers.segmentation.losses import CEDiceLoss
from cvhelpers.segmentation.steps import SegmentationValidator
from cvhelpers.train.checkpoint import load_checkpoint
from cvhelpers.train.engine import fit, last_checkpoint_path
from cvhelpers.train.loop import Budget, NonFiniteLossError
from cvhelpers.train.schedules import warmup_cosine

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def tiny_classification(n: int = 32) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


# ------------------------------------------------------------------------------ budgets
def test_budget_progress_and_limits():
    budget = Budget(epochs=2, max_steps=None, time_budget_s=None, steps_per_epoch=5)
    assert budget.total_steps == 10 and budget.progress(5, 1e9) == 0.5
    both = Budget(epochs=2, max_steps=4, time_budget_s=10.0, steps_per_epoch=5)
    assert both.total_steps == 4
    assert both.progress(1, 5.0) == 0.5  # the clock is further along than the steps
    assert both.exhausted(4, 0.0) == "max_steps" and both.exhausted(1, 10.0) == "time_budget"
    assert both.exhausted(3, 9.9) is None
    with pytest.raises(ValueError, match="epochs, max_steps or time_budget_s"):
        Budget(None, None, None, 5)
    with pytest.raises(ValueError, match="max_steps must be > 0"):
        Budget(None, 0, None, 5)


def test_max_steps_ends_mid_epoch_and_the_schedule_ends_with_it():
    seed_everything(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen_lrs = []
    history = fit(model, make_loader(tiny_classification(), 4, shuffle=True), None,
                  optimizer=optimizer, max_steps=11, lr_schedule=warmup_cosine(warmup=0.0),
                  monitor="train_loss", progress=False,
                  log_fn=lambda m: seen_lrs.append(m["lr"]))
    assert history.steps == [8, 11] and history.total_steps == 11  # 8 batches an epoch
    assert history.stop_reason == "max_steps" and len(history.step_loss) == 11
    # the last step's factor is the cosine at progress 10/11: small, and the schedule is monotone
    assert seen_lrs[0] > seen_lrs[1] and seen_lrs[1] == pytest.approx(
        0.1 * warmup_cosine(warmup=0.0)(10 / 11))


def test_time_budget_stops_the_run():
    model = nn.Linear(4, 3)
    slow = lambda m, batch, loss_fn: (time.sleep(0.02) or loss_fn(m(batch[0]), batch[1]), None, None)  # noqa: E731
    history = fit(model, make_loader(tiny_classification(), 1, shuffle=False), None,
                  optimizer=torch.optim.SGD(model.parameters(), lr=0.01), time_budget_s=0.2,
                  step_fn=slow, monitor="train_loss", progress=False)
    assert history.stop_reason == "time_budget"
    assert 3 <= history.total_steps < 32  # stopped inside the first epoch of 32 steps
    assert history.seconds >= 0.2


def test_loss_dicts_are_summed_logged_and_named_when_they_break():
    model = nn.Linear(4, 3)

    def two_losses(m, batch, loss_fn):
        out = m(batch[0])
        return {"a": loss_fn(out, batch[1]), "b": out.pow(2).mean()}, out, batch[1]

    history = fit(model, make_loader(tiny_classification(), 8, shuffle=False), None,
                  optimizer=torch.optim.SGD(model.parameters(), lr=0.01), epochs=2,
                  step_fn=two_losses, monitor="train_loss", progress=False)
    assert set(history.train_parts) == {"a", "b"} and len(history.train_parts["a"]) == 2
    for epoch in range(2):
        assert history.train_loss[epoch] == pytest.approx(
            history.train_parts["a"][epoch] + history.train_parts["b"][epoch], rel=1e-5)
    assert history.metric("train_b") == history.train_parts["b"]

    def nan_box_loss(m, batch, loss_fn):
        return {"loss_classifier": m(batch[0]).mean(), "loss_box_reg": torch.tensor(math.nan)}, None, None

    with pytest.raises(NonFiniteLossError, match=r"loss_box_reg.*epoch 1, step 1 of 4"):
        fit(model, make_loader(tiny_classification(), 8, shuffle=False), None,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.01), epochs=1,
            step_fn=nan_box_loss, monitor="train_loss", progress=False)


def test_monitor_must_name_a_metric_of_the_run():
    model = nn.Linear(4, 3)
    data = make_loader(tiny_classification(), 8, shuffle=False)
    with pytest.raises(KeyError, match="val_miou.*val_accuracy"):
        fit(model, data, data, optimizer=torch.optim.SGD(model.parameters(), lr=0.01), epochs=1,
            monitor="val_miou", progress=False)
    with pytest.raises(ValueError, match="scheduler or lr_schedule"):
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        fit(model, data, None, optimizer=opt, epochs=1, monitor="train_loss", progress=False,
            scheduler=torch.optim.lr_scheduler.StepLR(opt, 1), lr_schedule=warmup_cosine())


# ------------------------------------------------------------------------- tiny tasks
def tiny_detection_samples(n: int = 6, size: int = 64, seed: int = 0) -> list[dict]:
    """Bright squares on dark noise, 1-2 objects of 2 classes each."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(n):
        image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        boxes, labels, masks = [], [], []
        for _ in range(int(rng.integers(1, 3))):
            w = int(rng.integers(12, 28))
            x, y = (int(v) for v in rng.integers(0, size - w, 2))
            label = int(rng.integers(0, 2))
            image[y:y + w, x:x + w] = (220, 40, 40) if label == 0 else (40, 220, 40)
            mask = np.zeros((size, size), bool)
            mask[y:y + w, x:x + w] = True
            boxes.append([x, y, x + w, y + w]), labels.append(label), masks.append(mask)
        samples.append(Sample(image, np.array(boxes, np.float32), np.array(labels), np.stack(masks)))
    return samples


class Sample:
    def __init__(self, image, boxes, labels, masks):
        self.image, self.boxes, self.labels, self.masks = image, boxes, labels, masks


def run_tiny_task(task: str, checkpoint_path, epochs: int, resume_from=None, log_fn=None):
    """A detector or a segmenter trained by ``fit`` with its task's step, validator and
    augmentation (random flips from torch's RNG), checkpointing every epoch."""
    seed_everything(0)
    samples = tiny_detection_samples()
    if task == "detection":
        from cvhelpers.detection.models import faster_rcnn_lite0

        model = faster_rcnn_lite0(num_classes=2, pretrained=False, min_size=64, fpn_channels=16,
                                  anchor_sizes=((16,), (32,), (64,)), box_batch_size_per_image=16)
        train = make_loader(DetectionDataset(samples, augment=True, with_masks=False), 2,
                            shuffle=True, collate_fn=collate_detection)
        val = make_loader(DetectionDataset(samples[:2], with_masks=False), 2, shuffle=False,
                          collate_fn=collate_detection)
        kwargs = dict(step_fn=detection_step, validator=DetectionValidator(2), monitor="val_map50")
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01,
                                    momentum=0.9)
    else:
        from cvhelpers.segmentation.unet import UNet

        model = UNet(3, 3, width=4)
        masks = [np.max(s.masks * (s.labels[:, None, None] + 1), axis=0).astype(np.uint8)
                 for s in samples]
        images = [s.image for s in samples]
        train = make_loader(SegmentationDataset(images, masks, augment=True), 2, shuffle=True)
        val = make_loader(SegmentationDataset(images[:2], masks[:2]), 2, shuffle=False)
        kwargs = dict(loss_fn=CEDiceLoss(), validator=SegmentationValidator(3), monitor="val_miou")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    history = fit(model, train, val, optimizer=optimizer, epochs=epochs,
                  lr_schedule=warmup_cosine(0.2), checkpoint_path=checkpoint_path,
                  resume_from=resume_from, restore_best=False, progress=False, log_fn=log_fn,
                  **kwargs)
    return model, history


TASK_SCRIPT = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[5])
from tests.test_engine import run_tiny_task
from cvhelpers.train.engine import last_checkpoint_path
out, sleep, resume, task = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3] == "resume", sys.argv[4]
ckpt = out / "best.pt"
model, history = run_tiny_task(task, ckpt, epochs=3,
                               resume_from=last_checkpoint_path(ckpt) if resume else None,
                               log_fn=lambda m: time.sleep(sleep))
torch.save(model.state_dict(), out / "final.pt")
torch.save(history.to_dict(), out / "history.pt")
"""


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detection", "segmentation"])
def test_resume_after_sigkill_gives_the_same_weights(tmp_path, task):
    script = tmp_path / "task_script.py"
    script.write_text(TASK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}

    def start(out: Path, sleep: float, mode: str) -> subprocess.Popen:
        out.mkdir(exist_ok=True)
        return subprocess.Popen([sys.executable, str(script), str(out), str(sleep), mode, task,
                                 str(PROJECT_ROOT)], env=env, cwd=tmp_path,
                                stderr=subprocess.PIPE, text=True)

    full = start(tmp_path / "full", 0.0, "fresh")
    _, err = full.communicate(timeout=300)
    assert full.returncode == 0, err

    victim = start(tmp_path / "killed", 30.0, "fresh")  # waits after each epoch: killed there
    last = last_checkpoint_path(tmp_path / "killed" / "best.pt")
    deadline = time.monotonic() + 300
    while not last.exists():
        assert victim.poll() is None, f"training ended before it was killed: {victim.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert load_checkpoint(last)["epoch"] == 1
    assert not (tmp_path / "killed" / "final.pt").exists()

    resumed = start(tmp_path / "killed", 0.0, "resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    final = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    reference = torch.load(tmp_path / "full" / "final.pt", weights_only=True)
    assert final.keys() == reference.keys()
    for key in reference:
        assert torch.equal(final[key], reference[key]), f"{key} differs after the resume"
    resumed_history = torch.load(tmp_path / "killed" / "history.pt", weights_only=False)
    full_history = torch.load(tmp_path / "full" / "history.pt", weights_only=False)
    assert resumed_history["step_loss"] == full_history["step_loss"]
    assert resumed_history["val_metrics"] == full_history["val_metrics"]
    assert resumed_history["epoch"] == [1, 2, 3]


def test_detection_and_segmentation_validators_report_their_metric():
    _, history = run_tiny_task("detection", None, epochs=1)
    assert set(history.val_metrics) == {"map50", "map50_95"}
    assert 0 <= history.val_metrics["map50"][0] <= 1 and math.isnan(history.val_loss[0])
    assert set(history.train_parts) == {"loss_classifier", "loss_box_reg", "loss_objectness",
                                        "loss_rpn_box_reg"}
    _, history = run_tiny_task("segmentation", None, epochs=1)
    assert set(history.val_metrics) == {"miou", "mdice", "pixel_accuracy"}
    assert history.best_epoch == 1


def test_augmentation_differs_between_workers_and_epochs_but_repeats_with_the_seed():
    """Flips come from torch's RNG, which DataLoader workers re-seed per worker and per epoch."""
    samples = tiny_detection_samples(n=16)

    def flips(num_workers: int) -> list[list[bool]]:
        seed_everything(0)
        data = DetectionDataset(samples, augment=True, with_masks=False)
        loader = make_loader(data, 1, shuffle=False, num_workers=num_workers,
                             collate_fn=collate_detection)
        epochs = []
        for _ in range(2):
            epochs.append([bool(t[0]["boxes"][0, 0] != samples[i].boxes[0, 0])
                           for i, (_, t) in enumerate(loader)])
        return epochs

    first, again = flips(2), flips(2)
    assert first == again  # the same seed gives the same run
    assert first[0] != first[1]  # each epoch draws new flips
    worker0, worker1 = first[0][0::2], first[0][1::2]  # workers take alternate batches
    assert worker0 != worker1  # the two workers do not replay one stream
