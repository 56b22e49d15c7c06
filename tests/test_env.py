import os

import torch

from cvhelpers import env


def test_setup_sets_offline_switches_and_threads(monkeypatch, tmp_path):
    monkeypatch.setenv("CVC_CACHE_DIR", str(tmp_path))
    for key in env.OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    before = torch.get_num_threads()
    try:
        info = env.setup(threads=1)
        assert info["threads"] == torch.get_num_threads() == 1
        assert all(os.environ[k] == v for k, v in env.OFFLINE_ENV.items())
        font = tmp_path / "ultralytics" / "Ultralytics" / "Arial.ttf"
        assert font.stat().st_size > 10_000 and os.environ["YOLO_CONFIG_DIR"] == str(font.parents[1])
    finally:
        torch.set_num_threads(before)


def test_pick_device_auto_is_usable():
    device = env.pick_device()
    torch.zeros(1, device=device)
    assert env.pick_device("cpu") == torch.device("cpu")
    # "auto": CUDA, then Apple's MPS, then the CPU, as the lessons' DEVICE parameter says
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert device.type == expected


def test_environment_report_names_versions_and_machine():
    report = env.environment_report()
    assert report["versions"]["torch"] == torch.__version__.split("+")[0]
    assert report["machine"]["cores"] >= 1
    assert env.package_versions(("no-such-package-xyz",)) == {"no-such-package-xyz": None}


_GUARD_PROBE = r"""
import socket
from cvhelpers.env import NetworkBlockedError, network_allowed, setup
setup()
print("guard", getattr(socket.socket.connect, "_cvc_guard", False))
for attempt in (lambda: socket.create_connection(("203.0.113.1", 80), timeout=1),  # TEST-NET-3
                lambda: socket.getaddrinfo("example.com", 443)):
    try:
        attempt()
        print("NOT BLOCKED")
    except NetworkBlockedError as err:
        print("blocked:", err)
    except OSError:
        print("NOT BLOCKED")  # tried, and the network said no: the guard did not stop it
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
socket.create_connection(("127.0.0.1", server.getsockname()[1]), timeout=2).close()
print("loopback ok")
with network_allowed():
    try:
        socket.create_connection(("203.0.113.1", 80), timeout=0.2).close()
        print("allowed through")
    except NetworkBlockedError:
        print("NOT ALLOWED")
    except OSError:
        print("allowed through")  # the attempt was made (and failed: no route from here)
"""


def _probe(tmp_path, **extra_env):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("CVC_BLOCK_NETWORK", "CVC_ONLINE")}
    env.update(CVC_CACHE_DIR=str(tmp_path), **extra_env)
    done = subprocess.run([sys.executable, "-c", _GUARD_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_runners_network_guard_refuses_other_machines_and_keeps_loopback(tmp_path):
    out = _probe(tmp_path, CVC_BLOCK_NETWORK="1")
    assert "guard True" in out and out.count("blocked:") == 2 and "NOT BLOCKED" not in out
    assert "203.0.113.1:80" in out and "CVC_ONLINE=1" in out  # the message says what and how
    assert "loopback ok" in out and "allowed through" in out


def test_without_the_variable_setup_installs_no_guard(tmp_path):
    out = _probe(tmp_path)
    assert "guard False" in out and "blocked:" not in out


def test_the_switch_reads_the_parameter_then_the_environment(monkeypatch):
    monkeypatch.delenv(env.ONLINE_ENV, raising=False)
    assert env.online() is False and env.online(True) is True
    monkeypatch.setenv(env.ONLINE_ENV, "yes")
    assert env.online() is True and env.online(False) is False


def test_vector_isa_names_the_widest_extension():
    from cvhelpers.env import vector_isa

    assert vector_isa("fpu sse2 avx avx2 fma") == "avx2"
    assert vector_isa("avx2 avx512f avx512bw avx512_vnni") == "avx512f"
    assert vector_isa("avx2 avx512f avx512_bf16 amx_bf16 amx_tile") == "amx_bf16"
    assert vector_isa("avx512f_not_a_flag") is None  # whole flags only
    assert "vector_isa" in env.machine_info()


def test_machine_label_names_the_extension_when_recorded():
    assert env.machine_label({"cpu": "AMD EPYC", "vector_isa": "avx2"}) == "AMD EPYC, AVX2 only"
    assert env.machine_label({"cpu": "Intel(R) Xeon(R) Processor", "vector_isa": "avx512_bf16"}) == (
        "Intel(R) Xeon(R) Processor, AVX-512 BF16")
    assert env.machine_label({"cpu": "Intel(R) Xeon(R) Processor"}) == "Intel(R) Xeon(R) Processor"  # older records
    assert env.machine_label({"cpu": "X", "vector_isa": "sve2"}) == "X, sve2"  # an extension without a name here
    label = env.machine_label(env.machine_info())
    assert label.startswith(env.machine_info()["cpu"])
