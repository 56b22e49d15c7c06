"""Real pretrained checkpoints from the network, behind one switch that is off by default.

The course runs offline: nothing here opens a socket unless the switch is on. The switch is a
notebook's ``ONLINE`` parameter (``papermill -p ONLINE True``), or ``CVC_ONLINE=1`` in the
environment (``CVC_ONLINE=1 make course``). When it is on, a checkpoint that is not cached yet is
downloaded

* into the library's own cache (``$TORCH_HOME/hub/checkpoints`` for torchvision, ultralytics'
  ``weights_dir``), so the library then loads it exactly as it would have;
* with the library's own hash check where it has one (torch.hub's ``hash_prefix``: torchvision's
  file names carry the first hex digits of the file's SHA-256);
* with a timeout (``timeout_s``; torch.hub has none of its own, so a stalled network would hang
  a notebook for ever) and torch.hub's progress bar;
* failing with :class:`DownloadError`, which names the file, the URL and the offline way to
  get the same file. A partial or corrupt file never stays in the cache.

``CVC_DOWNLOAD_MIRROR=http://host:port`` fetches ``https://<host>/<path>`` from
``http://host:port/<host>/<path>`` instead: for a company mirror, and for the tests, which serve
stand-in files from 127.0.0.1.

>>> from torchvision.models import ResNet50_Weights, resnet50
>>> weights = ResNet50_Weights.IMAGENET1K_V2
>>> ensure_torchvision_weights(weights, online=True)        # doctest: +SKIP
>>> model = resnet50(weights=weights)                       # loads the cached file, no network
"""

from __future__ import annotations

import contextlib
import http.client
import inspect
import os
import socket
import urllib.error
import urllib.parse
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cvhelpers.env import ONLINE_ENV, network_allowed, online

__all__ = ["DEFAULT_TIMEOUT_S", "MIRROR_ENV", "ONLINE_ENV", "DownloadError", "WeightsNotCachedError",
           "cached_weights_path", "ensure_hub_file", "ensure_smp_encoder_weights", "ensure_torchvision_weights", "fetch", "mirrored", "online",
           "ultralytics_asset_url", "ultralytics_weights"]

MIRROR_ENV = "CVC_DOWNLOAD_MIRROR"
DEFAULT_TIMEOUT_S = 60.0


class WeightsNotCachedError(FileNotFoundError):
    """Pretrained weights are not in the local cache and downloading is switched off."""


class DownloadError(RuntimeError):
    """A download was attempted and failed: network error, timeout, or a file that is not what
    it should be (hash mismatch, not a checkpoint). Nothing is left in the cache."""


_online_switch = online  # for functions whose own parameter is called ``online``


def mirrored(url: str) -> str:
    """``url``, or its copy on ``$CVC_DOWNLOAD_MIRROR`` (the original host becomes the first
    part of the path, so one mirror can serve several hosts)."""
    base = os.environ.get(MIRROR_ENV)
    if not base:
        return url
    parts = urllib.parse.urlsplit(url)
    return f"{base.rstrip('/')}/{parts.netloc}{parts.path}"


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Every socket opened inside gets ``seconds`` as its timeout (connect and each read)."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def fetch(url: str, path: str | Path, *, what: str, offline_hint: str, online_switch: bool | None = None,
          hash_prefix: str | None = None, check: Callable[[Path], str | None] | None = None,
          timeout_s: float = DEFAULT_TIMEOUT_S, progress: bool = True) -> Path:
    """``path`` if it is cached; else, when the switch is on, download ``url`` there.

    Args:
        url: where the file lives (``$CVC_DOWNLOAD_MIRROR`` applies).
        path: where the library expects it (its own cache).
        what: the checkpoint's name, for messages ("ResNet-50 IMAGENET1K_V2 weights").
        offline_hint: how to get the file without this function (put it at ``path``...).
        online_switch: the notebook's ``ONLINE``; ``None`` reads ``$CVC_ONLINE``.
        hash_prefix: the start of the file's SHA-256, checked by torch.hub.
        check: called on the downloaded file; returns a problem (str) to reject it, or None.
        timeout_s: for connecting and for every read.
        progress: torch.hub's progress bar on stderr.

    Raises:
        WeightsNotCachedError: not cached and the switch is off (no socket was opened).
        DownloadError: the download failed or the file was rejected; the cache holds nothing.
    """
    path = Path(path)
    if path.is_file():
        return path
    if not _online_switch(online_switch):
        raise WeightsNotCachedError(
            f"{what}: {path} is missing and downloads are off.\n{offline_hint}\nOr switch downloads on: "
            f"ONLINE = True in the notebook's parameters, or {ONLINE_ENV}=1 in the environment.")
    source = mirrored(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _socket_timeout(timeout_s), network_allowed():
            torch.hub.download_url_to_file(source, str(path), hash_prefix=hash_prefix, progress=progress)
    except (OSError, urllib.error.URLError, http.client.HTTPException) as err:
        path.unlink(missing_ok=True)
        reason = f"no answer within {timeout_s:g} s" if isinstance(err, TimeoutError) or "timed out" in str(err) else f"{type(err).__name__}: {err}"
        raise DownloadError(f"{what}: downloading {source} to {path} failed ({reason}).\nOffline: {offline_hint}") from err
    except RuntimeError as err:  # torch.hub's hash check ("invalid hash value")
        path.unlink(missing_ok=True)
        raise DownloadError(f"{what}: the file from {source} does not match its hash ({err}); it was not kept "
                            f"in {path.parent}.\nOffline: {offline_hint}") from err
    problem = check(path) if check is not None else None
    if problem:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{what}: the file from {source} was rejected ({problem}); it was not kept at {path}.\n"
                            f"Offline: {offline_hint}")
    return path


# --- torchvision ---------------------------------------------------------------------------


def cached_weights_path(weights: Any) -> Path:
    """Where torch.hub caches a torchvision ``weights`` file: ``$TORCH_HOME/hub/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def ensure_torchvision_weights(weights: Any, online: bool | None = None,
                               timeout_s: float = DEFAULT_TIMEOUT_S, progress: bool = True) -> Path:
    """Make sure torchvision's ``weights`` file is in the torch hub cache; return its path.

    After this, ``resnet50(weights=weights)`` (or any builder) loads the cached file and opens
    no connection. The download is checked against the hash prefix in the file's name, as
    torchvision's own loader checks it.

    Raises:
        WeightsNotCachedError, DownloadError: see :func:`fetch`.
    """
    path = cached_weights_path(weights)
    match = torch.hub.HASH_REGEX.search(path.name)
    hint = (f"put {path.name} ({weights.url}) in {path.parent}, or point TORCH_HOME at a folder whose "
            f"hub/checkpoints/ holds it")
    return fetch(weights.url, path, what=f"torchvision {weights}", offline_hint=hint, online_switch=online,
                 hash_prefix=match.group(1) if match else None, timeout_s=timeout_s, progress=progress)


# --- ultralytics ----------------------------------------------------------------------------


def ultralytics_asset_url(name: str) -> str:
    """The release URL ultralytics itself downloads ``name`` (``"yolov8n.pt"``) from."""
    from ultralytics.utils.downloads import GITHUB_ASSETS_REPO, attempt_download_asset

    release = inspect.signature(attempt_download_asset).parameters["release"].default
    return f"https://github.com/{GITHUB_ASSETS_REPO}/releases/download/{release}/{name}"


def _torch_checkpoint_problem(path: Path) -> str | None:
    """A ``.pt`` saved by ``torch.save`` is a zip archive: anything else is not a checkpoint."""
    return None if zipfile.is_zipfile(path) else f"{path.name} is not a torch checkpoint (no zip archive)"


def ultralytics_weights(name: str = "yolov8n.pt", online: bool | None = None,
                        weights_dir: str | Path | None = None,
                        timeout_s: float = DEFAULT_TIMEOUT_S, progress: bool = True) -> Path:
    """The path of ultralytics' pretrained ``name`` (COCO-pretrained ``yolov8n.pt``...), in its
    ``weights_dir``, downloaded when the switch is on: then ``YOLO(str(path))`` opens no
    connection. Ultralytics publishes no hashes, so the file is checked to be a torch archive.

    Raises:
        WeightsNotCachedError, DownloadError: see :func:`fetch`.
    """
    if weights_dir is None:
        from ultralytics.utils import SETTINGS

        weights_dir = SETTINGS["weights_dir"]
    path = Path(weights_dir) / name
    url = ultralytics_asset_url(name)
    hint = f"put {name} ({url}) in {path.parent} and pass its path to YOLO(...)"
    return fetch(url, path, what=f"ultralytics {name}", offline_hint=hint, online_switch=online,
                 check=_torch_checkpoint_problem, timeout_s=timeout_s, progress=progress)


# --- Hugging Face hub (timm, segmentation-models-pytorch) -----------------------------------


@contextlib.contextmanager
def _hub_online(timeout_s: float) -> Iterator[None]:
    """Lift ``HF_HUB_OFFLINE`` (which :func:`cvhelpers.env.setup` sets) for this block only, with
    ``timeout_s`` for every request of the download."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE, constants.HF_HUB_DOWNLOAD_TIMEOUT
    constants.HF_HUB_OFFLINE, constants.HF_HUB_DOWNLOAD_TIMEOUT = False, timeout_s
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, constants.HF_HUB_DOWNLOAD_TIMEOUT = saved


def _safetensors_problem(path: Path) -> str | None:
    if path.suffix != ".safetensors":
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as err:  # safetensors raises its own SafetensorError for any bad header
        return f"{path.name} is not a safetensors file ({type(err).__name__}: {err})"
    return None


def ensure_hub_file(repo_id: str, filename: str, revision: str, online: bool | None = None,
                    timeout_s: float = DEFAULT_TIMEOUT_S) -> Path:
    """One file of a Hugging Face repo at a pinned commit, in the hub's own cache (``HF_HOME``).

    Once it is there, the library that wants it (timm, smp) finds it offline. The hub checks
    the download's size against the server's headers; a ``.safetensors`` file is also opened to
    check it is one. ``$CVC_DOWNLOAD_MIRROR`` serves ``huggingface.co`` at ``<mirror>/huggingface.co``.

    Raises:
        WeightsNotCachedError, DownloadError: as :func:`fetch`.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    what = f"Hugging Face {repo_id}/{filename}@{revision[:8]}"
    hint = (f"copy the hub cache of {repo_id} (revision {revision}) from a machine with a network into "
            f"HF_HOME (or run there: python -c \"from huggingface_hub import hf_hub_download; "
            f"hf_hub_download('{repo_id}', '{filename}', revision='{revision}')\")")
    cached = try_to_load_from_cache(repo_id, filename, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    if not _online_switch(online):
        raise WeightsNotCachedError(
            f"{what} is not in the hub cache and downloads are off.\n{hint}\nOr switch downloads on: "
            f"ONLINE = True in the notebook's parameters, or {ONLINE_ENV}=1 in the environment.")
    mirror = os.environ.get(MIRROR_ENV)
    endpoint = f"{mirror.rstrip('/')}/huggingface.co" if mirror else None
    try:
        with _hub_online(timeout_s), network_allowed():
            path = Path(hf_hub_download(repo_id, filename, revision=revision, endpoint=endpoint,
                                        etag_timeout=timeout_s))
    except Exception as err:  # httpx / hub errors: one clear message, the original chained
        raise DownloadError(f"{what}: the download from {endpoint or 'https://huggingface.co'} failed "
                            f"({type(err).__name__}: {err}).\nOffline: {hint}") from err
    problem = _safetensors_problem(path)
    if problem:
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise DownloadError(f"{what}: the downloaded file was rejected ({problem}); it was removed from the "
                            f"hub cache.\nOffline: {hint}")
    return path


def ensure_smp_encoder_weights(encoder_name: str, weights: str = "imagenet", online: bool | None = None,
                               timeout_s: float = DEFAULT_TIMEOUT_S) -> Path:
    """The files smp's ``encoder_weights=weights`` loads for ``encoder_name`` (smp 0.5+ keeps
    them on the Hugging Face hub at a pinned revision), fetched into the hub cache when the
    switch is on; ``smp.Unet(encoder_name, encoder_weights=weights)`` then builds offline.

    Returns:
        The path of ``model.safetensors``.
    """
    from segmentation_models_pytorch.encoders import encoders

    if encoder_name not in encoders or weights not in encoders[encoder_name]["pretrained_settings"]:
        raise KeyError(f"smp has no {weights!r} weights for encoder {encoder_name!r}")
    settings = encoders[encoder_name]["pretrained_settings"][weights]
    ensure_hub_file(settings["repo_id"], "config.json", settings["revision"], online, timeout_s)
    return ensure_hub_file(settings["repo_id"], "model.safetensors", settings["revision"], online, timeout_s)
