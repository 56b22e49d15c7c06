"""speed.py and fit's speed switches: TF32, channels_last, torch.compile, sync_every, memory."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from cvhelpers.train.checkpoint import load_checkpoint
from cvhelpers.models.cnn import SmallCNN
from cvhelpers.train.speed import (PeakMemory, SpeedMode, SyntheticLoader, bare_training_loop, cpu_ladder, gpu_ladder, measure_ladder, measure_loader_speed, speed_table, synthetic_batch)
from cvhelpers.train.loop import NonFiniteLossError
from cvhelpers.train.engine import fit, tf32_mode
from cvhelpers.data.loading import make_loader
from cvhelpers.env import seed_everything


def tiny_images(n: int = 32, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 8, 8, generator=g)
    return TensorDataset(images, torch.randint(0, 4, (n,), generator=g))


def small_cnn(dropout: float = 0.2) -> nn.Module:
    return SmallCNN(width=4, num_classes=4, image_size=8, dropout=dropout)


def train(epochs: int = 2, dropout: float = 0.2, **fit_kwargs):
    seed_everything(0)
    model = small_cnn(dropout)
    loader = make_loader(tiny_images(), 8, shuffle=True, seed=0)
    history = fit(model, loader, make_loader(tiny_images(16, 1), 8, False), epochs=epochs,
                  optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2), progress=False,
                  **fit_kwargs)
    return model, history


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_tf32_mode_sets_pytorchs_switches_and_restores_them():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = (matmul.fp32_precision, conv.fp32_precision)
    with tf32_mode(True):
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
        with tf32_mode(False):
            assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        with tf32_mode(None):
            assert matmul.fp32_precision == "tf32"
    assert (matmul.fp32_precision, conv.fp32_precision) == before
    with pytest.raises(RuntimeError), tf32_mode(True):
        raise RuntimeError("restored even on errors")
    assert (matmul.fp32_precision, conv.fp32_precision) == before


def test_sync_every_changes_nothing_but_when_losses_are_read():
    reference, ref_history = train()
    for sync_every in (3, 100):
        model, history = train(sync_every=sync_every)
        for key, value in state(reference).items():
            assert torch.equal(state(model)[key], value), key
        assert history.train_loss == ref_history.train_loss
        assert history.train_accuracy == ref_history.train_accuracy


def test_non_finite_loss_names_its_step_even_when_read_late():
    x, y = tiny_images(16).tensors
    x = x.clone()
    x[9] = float("inf")  # sample 9 is in the 5th batch of 2
    model = small_cnn()
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 5 of 8") as info:
        fit(model, DataLoader(TensorDataset(x, y), batch_size=2), None, epochs=1,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1), monitor="train_loss",
            sync_every=4, progress=False)
    assert info.value.step == 5


def test_channels_last_keeps_the_math_and_converts_the_model():
    reference, ref_history = train()
    model, history = train(channels_last=True)
    conv = model.features[0][3].weight  # 4 x 4 x 3 x 3 (with 1 input channel both layouts agree)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for key, value in state(reference).items():  # same numbers up to float32 rounding
        torch.testing.assert_close(state(model)[key], value, atol=1e-5, rtol=1e-4)
    assert history.val_loss == pytest.approx(ref_history.val_loss, abs=1e-5)


def test_bfloat16_with_channels_last_trains():
    model, history = train(epochs=2, amp_dtype=torch.bfloat16, channels_last=True)
    assert all(math.isfinite(v) for v in history.train_loss + history.val_loss)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)  # the switch reached the weights
    _, fp32_history = train(epochs=2)  # bf16 rounds: close to float32's run, not the same run
    assert history.train_loss != fp32_history.train_loss
    assert history.train_loss == pytest.approx(fp32_history.train_loss, abs=0.1)


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_checkpoints(tmp_path):
    # no dropout: compiled code draws its random masks differently from eager PyTorch
    reference, _ = train(epochs=1, dropout=0.0)
    model, _ = train(epochs=1, dropout=0.0, compile_model=True,
                     checkpoint_path=tmp_path / "best.pt")
    for key, value in state(reference).items():
        torch.testing.assert_close(state(model)[key], value, atol=1e-5, rtol=1e-4)
    checkpoint = load_checkpoint(tmp_path / "best.pt", small_cnn())
    assert not any(k.startswith("_orig_mod") for k in checkpoint["model"])


def test_bare_loop_and_fit_take_the_same_steps():
    images, labels = synthetic_batch(8, 8, num_classes=4, channels=1)
    models = []
    for use_fit in (False, True):
        torch.manual_seed(0)
        model = SmallCNN(width=4, num_classes=4, image_size=8)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        if use_fit:
            fit(model, SyntheticLoader(images, labels, 3), None, epochs=1, optimizer=optimizer,
                monitor="train_loss", progress=False)
        else:
            bare_training_loop(model, images, labels, optimizer, steps=3)
        models.append(state(model))
    for key in models[0]:
        assert torch.equal(models[0][key], models[1][key]), key


def test_peak_memory_sees_a_large_temporary_tensor():
    with PeakMemory("cpu") as memory:
        big = torch.ones(50_000_000)  # 200 MB, freed at once
        del big
    if memory.mb is None:
        pytest.skip("peak memory is not measurable on this system")
    assert 150 <= memory.mb <= 400
    with PeakMemory("cpu") as nothing:
        pass
    assert nothing.mb < 50


def test_ladders_and_a_tiny_measurement():
    assert [m.name for m in gpu_ladder()] == [
        "fp32", "tf32", "amp_fp16", "amp_bf16", "bf16_channels_last", "bf16_channels_last_compile"]
    assert gpu_ladder()[0].tf32 is False and gpu_ladder()[1].tf32 is True
    assert all(m.amp_dtype != torch.float16 for m in cpu_ladder(compile_model=True))
    lines = []
    results = measure_ladder(lambda: SmallCNN(in_channels=3, width=4, num_classes=10, head="avg"),
                             cpu_ladder(), batch_size=4, image_size=16, num_classes=10,
                             steps=2, warmup_steps=1, repeats=2, device="cpu", bare=("fp32",),
                             log=lines.append)
    assert [(r.mode, r.loop) for r in results] == [
        ("fp32", "cvhelpers"), ("amp_bf16", "cvhelpers"), ("bf16_channels_last", "cvhelpers"),
        ("fp32", "bare")]
    assert len(lines) == 4
    for r in results:
        assert r.images_per_s > 0 and r.steps == 2 and r.batch_size == 4 and r.repeats == 2
        assert math.isfinite(r.final_loss)
        assert r.to_dict()["step_ms"] == pytest.approx(1000 * r.seconds / 2)
    table = speed_table(results)
    assert table.count("\n") == 5 and "| amp_bf16 | cvhelpers |" in table and "1.00x" in table


def test_measure_loader_speed_counts_every_image():
    loader = DataLoader(tiny_images(20), batch_size=8)
    result = measure_loader_speed(loader, epochs=2)
    assert result["images"] == 40 and result["images_per_s"] > 0 and result["first_batch_s"] >= 0
    assert measure_loader_speed(loader, max_batches=1)["images"] == 8


def test_speed_mode_passes_its_switches_to_fit():
    mode = SpeedMode("x", amp_dtype=torch.bfloat16, channels_last=True)
    assert mode.fit_kwargs() == {"amp_dtype": torch.bfloat16, "tf32": None,
                                 "channels_last": True, "compile_model": False}
