"""Parameter and FLOP counts checked by hand; the latency harness's structure (no timed asserts)."""

import json

import pytest
import torch
from torch import nn

from cvhelpers.evaluation import bench
from cvhelpers.evaluation.bench import (LatencyResult, count_flops, count_parameters, latency_vs_batch, measure_latency)


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 16 * 16, 10))


def test_count_parameters_by_hand():
    model = tiny_net()
    conv, linear = 8 * 3 * 3 * 3 + 8, 8 * 16 * 16 * 10 + 10
    assert count_parameters(model) == conv + linear
    model[0].requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == linear


def test_shared_parameters_count_once():
    layer = nn.Linear(4, 4)
    assert count_parameters(nn.Sequential(layer, layer)) == 20


def test_count_flops_by_hand():
    # A multiply-add is 2 FLOPs; bias adds and ReLU are not counted by FlopCounterMode.
    batch = 2
    conv = 2 * batch * (16 * 16) * 8 * (3 * 3 * 3)  # output pixels x out channels x kernel volume
    linear = 2 * batch * (8 * 16 * 16) * 10
    model = tiny_net().train()
    assert count_flops(model, (batch, 3, 16, 16)) == conv + linear
    assert model.training, "mode restored"


def test_count_flops_grouped_strided_conv():
    conv = nn.Conv2d(4, 6, 3, stride=2, groups=2, bias=False)  # 9x9 -> 4x4, 2 input ch per group
    assert count_flops(conv, (1, 4, 9, 9)) == 2 * (4 * 4) * 6 * (2 * 3 * 3)


def test_measure_latency_structure():
    model = tiny_net().train()
    before = torch.get_num_threads()
    result = measure_latency(model, torch.randn(4, 3, 16, 16), warmup=1, iters=7, num_threads=1)
    assert result.num_threads == 1 and torch.get_num_threads() == before
    assert model.training, "mode restored"
    assert result.batch_size == 4 and result.iters == 7 and len(result.samples_ms) == 7
    assert 0 < result.min_ms <= result.p50_ms <= result.p95_ms <= result.p99_ms
    assert result.throughput == pytest.approx(4 / (result.mean_ms / 1000))
    assert result.device == "cpu"
    record = result.to_dict()
    assert "samples_ms" not in record
    assert len(result.to_dict(include_samples=True)["samples_ms"]) == 7
    json.dumps(record)


class FakeClock:
    """Stands in for the ``time`` module: each call of the timed function advances it."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def test_latency_vs_batch_arithmetic_with_a_fake_clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(bench, "time", clock)

    def model(x):  # 1 ms per item plus 2 ms overhead per call
        clock.now += (2 + x.shape[0]) / 1000

    results = latency_vs_batch(model, lambda b: torch.zeros(b, 3), [1, 4, 16], warmup=0, iters=3)
    assert [r.batch_size for r in results] == [1, 4, 16]
    assert [r.p50_ms for r in results] == pytest.approx([3, 6, 18])
    throughputs = [r.throughput for r in results]
    assert throughputs == pytest.approx([1000 / 3, 4000 / 6, 16000 / 18])
    assert throughputs == sorted(throughputs), "batching amortises the per-call overhead"


def test_callables_tuples_and_lists():
    calls = []
    result = measure_latency(lambda a, b: calls.append((a.shape, b)), (torch.zeros(3, 2), 5),
                             warmup=2, iters=2)
    assert result.batch_size == 3 and calls[0] == ((3, 2), 5) and len(calls) == 4
    images = [torch.zeros(3, 8, 8) for _ in range(5)]  # torchvision detectors take a list
    assert measure_latency(lambda imgs: len(imgs), images, warmup=0, iters=1).batch_size == 5


@pytest.mark.parametrize("kwargs", [{"iters": 0}, {"warmup": -1}])
def test_bad_iteration_counts(kwargs):
    with pytest.raises(ValueError, match="need iters >= 1 and warmup >= 0"):
        measure_latency(tiny_net(), torch.zeros(1, 3, 16, 16), **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_measure_latency_on_cuda():
    result = measure_latency(tiny_net(), torch.randn(8, 3, 16, 16), device="cuda",
                             warmup=2, iters=5)
    assert result.device.startswith("cuda") and isinstance(result, LatencyResult)
