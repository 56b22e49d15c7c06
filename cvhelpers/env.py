"""The environment every notebook starts from: offline switches, threads, device, versions.

Call :func:`setup` first thing in a notebook or script, *before* importing ultralytics, timm,
albumentations or huggingface_hub: several of them read their switches at import time.

>>> from cvhelpers.env import setup
>>> info = setup()          # offline, all cores for torch
>>> info["offline"]
True
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Environment variables that stop the course's libraries from reaching the network.
OFFLINE_ENV: dict[str, str] = {
    "HF_HUB_OFFLINE": "1",  # timm / smp pretrained weights come from the Hugging Face hub
    "HF_DATASETS_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",  # albumentations GETs PyPI at import to check for updates
    "YOLO_OFFLINE": "1",  # ultralytics: no DNS probes, no GitHub asset downloads
    "YOLO_AUTOINSTALL": "0",  # ultralytics: no `pip install` of missing extras (e.g. onnxslim)
}

#: Packages whose versions the environment report lists, in this order.
REPORTED_PACKAGES = (
    "torch", "torchvision", "numpy", "pillow", "timm", "albumentations", "ultralytics",
    "segmentation-models-pytorch", "torchmetrics", "pycocotools", "onnx", "onnxruntime",
    "onnxscript", "scikit-learn", "scikit-image", "matplotlib", "papermill", "cvhelpers",
)


def default_cache_dir() -> Path:
    """Where the course keeps its own configuration files (``~/.cache/cv-cookbook``).

    Override with the ``CVC_CACHE_DIR`` environment variable.
    """
    return Path(os.environ.get("CVC_CACHE_DIR", Path.home() / ".cache" / "cv-cookbook"))


def _ultralytics_config_dir(cache_dir: Path) -> Path:
    """A YOLO_CONFIG_DIR with a font in it, so ultralytics never fetches Arial.ttf from GitHub."""
    config = cache_dir / "ultralytics"
    font = config / "Ultralytics" / "Arial.ttf"
    if not font.exists():
        import matplotlib  # ships DejaVuSans, a free TTF that ultralytics can draw labels with

        source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
        font.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, font)
    return config


#: The download switch's environment variable (a notebook's ``ONLINE`` parameter wins over it).
ONLINE_ENV = "CVC_ONLINE"


def online(value: bool | None = None) -> bool:
    """The download switch: ``value`` when given (a notebook's ``ONLINE`` parameter), else
    whether ``$CVC_ONLINE`` is ``1``/``true``/``yes``/``on``; off otherwise."""
    if value is not None:
        return bool(value)
    return os.environ.get(ONLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


#: ``CVC_BLOCK_NETWORK=1`` (the course runner sets it unless ``CVC_ONLINE=1``): :func:`setup`
#: then refuses every connection to another machine, so a hidden download fails at once.
NETWORK_GUARD_ENV = "CVC_BLOCK_NETWORK"
_network_allowed = False  # True inside network_allowed(): the one door the download switch opens


class NetworkBlockedError(ConnectionRefusedError):
    """A connection to another machine while the course runs offline (``CVC_BLOCK_NETWORK=1``)."""


def _is_local(host: Any) -> bool:
    import ipaddress
    import socket

    if not isinstance(host, str) or host in ("", "localhost", socket.gethostname()):
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host.endswith(".localhost")
    return address.is_loopback or address.is_unspecified


def block_network() -> bool:
    """Refuse connections and name lookups for any host but this machine, in this process.

    Unix sockets and loopback (the Jupyter kernel's own channels, a test's local server) stay
    open; :func:`network_allowed` opens the door for the download switch. Idempotent.

    Returns:
        True when the guard was installed by this call.
    """
    import socket

    if getattr(socket.socket.connect, "_cvc_guard", False):
        return False
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def refuse(host: Any, port: Any) -> None:
        raise NetworkBlockedError(
            f"connection to {host}:{port} refused: the course runs offline ({NETWORK_GUARD_ENV}=1). "
            f"Downloads happen only with the switch on (ONLINE = True, or CVC_ONLINE=1).")

    def check(sock: socket.socket, address: Any) -> None:
        if not _network_allowed and sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
            refuse(address[0], address[1])

    def guarded_connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        return connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return connect_ex(self, address)

    def guarded_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if not _network_allowed and not _is_local(host.decode() if isinstance(host, bytes) else host):
            refuse(host, port)
        return getaddrinfo(host, port, *args, **kwargs)

    for guarded in (guarded_connect, guarded_connect_ex, guarded_getaddrinfo):
        guarded._cvc_guard = True  # type: ignore[attr-defined]
    socket.socket.connect = guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = guarded_connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = guarded_getaddrinfo
    return True


class network_allowed:  # noqa: N801 (used as a context manager: `with network_allowed():`)
    """Let this block reach other machines although :func:`block_network` is on."""

    def __enter__(self) -> None:
        global _network_allowed
        self._previous, _network_allowed = _network_allowed, True

    def __exit__(self, *exc: object) -> None:
        global _network_allowed
        _network_allowed = self._previous


def setup(offline: bool = True, threads: int | None = None, quiet: bool = True) -> dict[str, Any]:
    """Make this process offline-safe and give torch the right number of threads.

    Args:
        offline: set the switches in :data:`OFFLINE_ENV` (existing values are overwritten) and
            point ultralytics at a config folder with its font, so nothing phones home.
        threads: torch intra-op threads; ``None`` means every core this process may use.
            (``import ultralytics`` sets ``OMP_NUM_THREADS=1``, which made torch ~1.7x slower
            here: setting the thread count explicitly undoes that.)
        quiet: silence ultralytics' banner and settings messages.

        With ``CVC_BLOCK_NETWORK=1`` in the environment, offline also means :func:`block_network`:
        a connection to another machine raises :class:`NetworkBlockedError` instead of hanging.

    Returns:
        A dict with ``offline``, ``threads``, ``torch_home`` and ``yolo_config_dir``.
    """
    import warnings

    import torch

    # Without ipywidgets, tqdm.auto falls back to text bars: fine, so say nothing about it.
    warnings.filterwarnings("ignore", message="IProgress not found")
    cache_dir = default_cache_dir()
    if offline:
        os.environ.update(OFFLINE_ENV)
        os.environ["YOLO_CONFIG_DIR"] = str(_ultralytics_config_dir(cache_dir))
        if os.environ.get(NETWORK_GUARD_ENV) == "1":
            block_network()
    if quiet:
        os.environ.setdefault("YOLO_VERBOSE", "False")
    # torch.hub reads TORCH_HOME; make the default explicit so lessons can say where weights go.
    os.environ.setdefault("TORCH_HOME", str(Path.home() / ".cache" / "torch"))
    n_threads = threads or usable_cores()
    torch.set_num_threads(n_threads)
    if "ultralytics" in sys.modules:
        configure_ultralytics()
    return {
        "offline": offline,
        "threads": torch.get_num_threads(),
        "torch_home": os.environ["TORCH_HOME"],
        "yolo_config_dir": os.environ.get("YOLO_CONFIG_DIR"),
    }


def configure_ultralytics() -> None:
    """Turn off ultralytics' analytics sync (call after :func:`setup`; imports ultralytics)."""
    import torch

    threads = torch.get_num_threads()
    from ultralytics.utils import SETTINGS

    SETTINGS.update({"sync": False})
    torch.set_num_threads(threads)  # importing ultralytics may have lowered it


def usable_cores() -> int:
    """The number of CPU cores this process may run on (respects affinity masks / containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def pick_device(preference: str = "auto") -> "torch.device":  # noqa: F821
    """Return a ``torch.device``: ``"auto"`` picks CUDA, then Apple MPS, then CPU.

    >>> pick_device("cpu").type
    'cpu'
    """
    import torch

    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy's global RNG and torch (CPU and every GPU): call it before
    building a model, so the same code gives the same weights."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def synchronize(device: "torch.device") -> None:  # noqa: F821
    """Wait for the device's queued work (GPU kernels run asynchronously): call it before
    reading a clock. A no-op on the CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def package_versions(names: tuple[str, ...] = REPORTED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of ``names`` (``None`` for a package that is not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


#: CPU instruction-set extensions that change how fast PyTorch's CPU kernels run, widest first:
#: the ``/proc/cpuinfo`` flag and the name a Time line prints.
VECTOR_ISA_NAMES = {"amx_bf16": "AMX", "avx512_bf16": "AVX-512 BF16", "avx512f": "AVX-512", "avx2": "AVX2 only"}


def vector_isa(flags: str) -> str | None:
    """The widest extension of :data:`VECTOR_ISA_NAMES` in a ``/proc/cpuinfo`` ``flags`` line.

    Two CPUs that report the same model name ("AMD EPYC") can differ here, and a CPU with
    AVX-512 (or AMX) runs convolutions and bfloat16 far faster than one with AVX2 only.

    >>> vector_isa("fpu sse2 avx2 avx512f avx512_bf16")
    'avx512_bf16'
    >>> vector_isa("fpu sse2") is None
    True
    """
    present = set(flags.split())
    return next((isa for isa in VECTOR_ISA_NAMES if isa in present), None)


def machine_label(machine: Mapping[str, Any], cores: bool = False) -> str:
    """A results file's ``machine`` as a caption names it: the CPU and its widest vector extension,
    after its number of cores with ``cores=True`` (where times from several machines meet).

    >>> machine_label({"cpu": "AMD EPYC", "vector_isa": "avx2", "cores": 2})
    'AMD EPYC, AVX2 only'
    >>> machine_label({"cpu": "Intel(R) Xeon(R) Processor"})  # recorded before the extension was
    'Intel(R) Xeon(R) Processor'
    >>> machine_label({"cpu": "AMD EPYC", "vector_isa": "avx2", "cores": 2}, cores=True)
    '2 cores, AMD EPYC, AVX2 only'
    """
    cpu = machine.get("cpu") or "unknown CPU"
    isa = machine.get("vector_isa")
    label = cpu + (f", {VECTOR_ISA_NAMES.get(isa, isa)}" if isa else "")
    return f"{machine.get('cores', '?')} cores, {label}" if cores else label


def machine_info() -> dict[str, Any]:
    """CPU model, its widest vector extension, cores, memory, GPU and OS, for results files."""
    import torch

    cpu = platform.processor() or platform.machine()
    isa = None
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        isa = vector_isa(next((line.split(":", 1)[1] for line in lines if line.startswith("flags")), ""))
    except (OSError, StopIteration):
        pass
    memory_gb = None
    try:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu,
        "vector_isa": isa,
        "cores": usable_cores(),
        "memory_gb": memory_gb,
        "gpu": gpu,
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def environment_report() -> dict[str, Any]:
    """Everything a bug report needs: machine, versions, threads, device, offline switches."""
    import torch

    return {
        "machine": machine_info(),
        "versions": package_versions(),
        "torch_threads": torch.get_num_threads(),
        "device": str(pick_device()),
        "offline_switches": {key: os.environ.get(key) for key in OFFLINE_ENV},
        "torch_home": os.environ.get("TORCH_HOME"),
    }
