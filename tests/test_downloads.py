"""The online switch, tested without the internet: a server on 127.0.0.1 serves stand-in files.

What a learner with a network runs (torchvision's ResNet-50 weights, ultralytics' yolov8n.pt) goes
through :mod:`cvhelpers.models.downloads`; here ``CVC_DOWNLOAD_MIRROR`` points it at a local
server, which checks the whole path: download into the library's cache, cache hit on the second
call, a corrupt file rejected, a stalled server timing out with a clear error, and the switch off
never opening a socket.
"""

from __future__ import annotations

import hashlib
import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cvhelpers.models import downloads as dl



def local_server(test):
    """Sockets stay blocked (pyproject's --disable-socket) except to the test's own server."""
    return pytest.mark.allow_hosts(["127.0.0.1"])(pytest.mark.enable_socket(test))


class _Server:
    """Serves ``files`` (URL path -> bytes); ``stall_s`` waits before answering; counts requests."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.headers: dict[str, dict[str, str]] = {}  # extra response headers per path
        self.requests: list[str] = []
        self.stall_s = 0.0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, with_body: bool) -> None:
                server.requests.append(f"{self.command} {self.path}")
                if server.stall_s:
                    time.sleep(server.stall_s)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                for key, value in server.headers.get(self.path, {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server's names)
                self._answer(True)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(False)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def torch_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would win over TORCH_HOME
    monkeypatch.delenv(dl.ONLINE_ENV, raising=False)
    return tmp_path / "torch"


@pytest.fixture
def server(monkeypatch, torch_home):
    local = _Server()
    monkeypatch.setenv(dl.MIRROR_ENV, local.url)
    yield local
    local.stall_s = 0
    local.close()


def _checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.arange(6.0).reshape(2, 3)}, buffer)
    return buffer.getvalue()


def _torchvision_weights(body: bytes, prefix: str | None = None) -> SimpleNamespace:
    """A stand-in for a torchvision weights enum: a URL whose file name carries the hash prefix."""
    prefix = prefix or hashlib.sha256(body).hexdigest()[:8]
    return SimpleNamespace(url=f"https://download.pytorch.org/models/tiny-{prefix}.pth")


def test_the_switch_reads_the_parameter_then_the_environment(monkeypatch):
    monkeypatch.delenv(dl.ONLINE_ENV, raising=False)
    assert dl.online() is False and dl.online(True) is True
    monkeypatch.setenv(dl.ONLINE_ENV, "1")
    assert dl.online() is True and dl.online(False) is False  # the notebook's parameter wins
    monkeypatch.setenv(dl.ONLINE_ENV, "no")
    assert dl.online() is False


def test_mirror_keeps_the_host_in_the_path(monkeypatch):
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    assert dl.mirrored("https://a.org/x/y.pt") == "https://a.org/x/y.pt"
    monkeypatch.setenv(dl.MIRROR_ENV, "http://127.0.0.1:9/")
    assert dl.mirrored("https://a.org/x/y.pt") == "http://127.0.0.1:9/a.org/x/y.pt"


def test_switch_off_opens_no_socket_and_says_how_to_get_the_file(torch_home, monkeypatch):
    monkeypatch.setenv(dl.MIRROR_ENV, "http://127.0.0.1:9")
    weights = _torchvision_weights(_checkpoint())

    def no_socket(*args, **kwargs):
        raise AssertionError("a socket was opened with the switch off")

    monkeypatch.setattr(socket, "socket", no_socket)
    with pytest.raises(dl.WeightsNotCachedError) as info:
        dl.ensure_torchvision_weights(weights, online=False)
    message = str(info.value)
    assert weights.url in message and "hub/checkpoints" in message and "CVC_ONLINE=1" in message
    assert not dl.cached_weights_path(weights).parent.exists()  # nothing created


@local_server
def test_download_into_torch_hub_cache_then_cache_hit(server):
    body = _checkpoint()
    weights = _torchvision_weights(body)
    server.files["/download.pytorch.org/models/" + weights.url.rsplit("/", 1)[1]] = body
    path = dl.ensure_torchvision_weights(weights, online=True, progress=False)
    assert path == dl.cached_weights_path(weights) and path.read_bytes() == body
    assert len(server.requests) == 1
    assert dl.ensure_torchvision_weights(weights, online=True, progress=False) == path
    assert len(server.requests) == 1, "the second call must be a cache hit"
    # torchvision's own loader now takes the file from its cache, hash checked, no connection
    state = torch.hub.load_state_dict_from_url(weights.url, check_hash=True, progress=False)
    assert torch.equal(state["weight"], torch.arange(6.0).reshape(2, 3))


@local_server
def test_a_corrupt_file_is_rejected_and_not_cached(server):
    body = _checkpoint()
    weights = _torchvision_weights(body, prefix="deadbeef")  # the name promises another file
    server.files["/download.pytorch.org/models/tiny-deadbeef.pth"] = body
    with pytest.raises(dl.DownloadError, match="does not match its hash") as info:
        dl.ensure_torchvision_weights(weights, online=True, progress=False)
    assert "tiny-deadbeef.pth" in str(info.value) and server.url in str(info.value)
    folder = dl.cached_weights_path(weights).parent
    assert list(folder.iterdir()) == [], "no partial or corrupt file left in the cache"


@local_server
def test_a_stalled_server_times_out_with_a_clear_error(server):
    body = _checkpoint()
    weights = _torchvision_weights(body)
    server.files["/download.pytorch.org/models/" + weights.url.rsplit("/", 1)[1]] = body
    server.stall_s = 5.0
    start = time.monotonic()
    with pytest.raises(dl.DownloadError) as info:
        dl.ensure_torchvision_weights(weights, online=True, timeout_s=0.5, progress=False)
    assert time.monotonic() - start < 4.0
    message = str(info.value)
    assert "no answer within 0.5 s" in message and weights.url.rsplit("/", 1)[1] in message
    assert "Offline:" in message and not dl.cached_weights_path(weights).exists()


@local_server
def test_a_missing_file_names_the_url(server):
    weights = _torchvision_weights(b"x", prefix="0badc0de")
    with pytest.raises(dl.DownloadError, match="HTTP Error 404") as info:
        dl.ensure_torchvision_weights(weights, online=True, progress=False)
    assert "tiny-0badc0de.pth" in str(info.value)


@local_server
def test_ultralytics_weights_come_from_its_release_url_and_must_be_a_checkpoint(server, tmp_path):
    pytest.importorskip("ultralytics")
    url = dl.ultralytics_asset_url("yolov8n.pt")
    assert url.startswith("https://github.com/ultralytics/assets/releases/download/v")
    mirror_path = "/" + url.split("://", 1)[1]
    server.files[mirror_path] = b"<html>not a checkpoint</html>"
    weights_dir = tmp_path / "weights"
    with pytest.raises(dl.DownloadError, match="not a torch checkpoint"):
        dl.ultralytics_weights("yolov8n.pt", online=True, weights_dir=weights_dir, progress=False)
    assert not (weights_dir / "yolov8n.pt").exists()
    server.files[mirror_path] = _checkpoint()
    path = dl.ultralytics_weights("yolov8n.pt", online=True, weights_dir=weights_dir, progress=False)
    assert path == weights_dir / "yolov8n.pt" and path.read_bytes() == server.files[mirror_path]
    assert dl.ultralytics_weights("yolov8n.pt", online=False, weights_dir=weights_dir) == path  # cached: no switch needed


@pytest.fixture
def hub_cache(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as cvhelpers.env.setup() leaves it
    return tmp_path / "hub"


def _serve_hub_file(server, repo_id: str, revision: str, filename: str, body: bytes) -> None:
    path = f"/huggingface.co/{repo_id}/resolve/{revision}/{filename}"
    server.files[path] = body
    server.headers[path] = {"X-Repo-Commit": revision, "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}


@local_server
def test_smp_imagenet_encoder_from_the_hub_mirror_then_offline(server, hub_cache):
    smp = pytest.importorskip("segmentation_models_pytorch")
    from safetensors.torch import save
    from segmentation_models_pytorch.encoders import encoders

    from huggingface_hub import constants

    settings = encoders["resnet18"]["pretrained_settings"]["imagenet"]
    torch.manual_seed(0)
    stand_in = smp.encoders.get_encoder("resnet18", weights=None).state_dict()  # random, real shapes
    _serve_hub_file(server, settings["repo_id"], settings["revision"], "config.json", b"{}")
    _serve_hub_file(server, settings["repo_id"], settings["revision"], "model.safetensors", save(stand_in))
    with pytest.raises(dl.WeightsNotCachedError, match="CVC_ONLINE=1"):
        dl.ensure_smp_encoder_weights("resnet18", online=False)
    assert server.requests == []
    path = dl.ensure_smp_encoder_weights("resnet18", online=True)
    assert path.name == "model.safetensors" and constants.HF_HUB_OFFLINE is True  # switched back
    served = len(server.requests)
    assert served >= 2
    # smp's own loader, offline, finds the files in the hub cache and loads the stand-in weights
    model = smp.Unet("resnet18", encoder_weights="imagenet", classes=2)
    assert len(server.requests) == served, "smp must not ask the network again"
    loaded = model.encoder.state_dict()
    assert loaded.keys() == stand_in.keys()  # every tensor compared, none skipped by a renamed key
    assert all(torch.equal(loaded[k], v) for k, v in stand_in.items())
    assert dl.ensure_smp_encoder_weights("resnet18", online=True) == path  # a cache hit
    assert len(server.requests) == served


@local_server
def test_a_corrupt_hub_file_is_rejected_and_removed(server, hub_cache):
    revision = "0" * 40
    _serve_hub_file(server, "course/broken", revision, "model.safetensors", b"not safetensors at all")
    with pytest.raises(dl.DownloadError, match="not a safetensors file"):
        dl.ensure_hub_file("course/broken", "model.safetensors", revision, online=True)
    from huggingface_hub import try_to_load_from_cache

    assert not isinstance(try_to_load_from_cache("course/broken", "model.safetensors", revision=revision), str)


@local_server
def test_detectron2_zoo_checkpoint_goes_to_a_local_file_detectron2_can_load(server, torch_home):
    from cvhelpers.detection import d2compat

    if not d2compat.detectron2_available():
        pytest.skip("Detectron2 is not installed (make detectron2)")
    import pickle

    from cvhelpers.detection.detectron2 import DETECTRON2_ZOO_URL, detectron2_zoo_weights

    config = "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
    with pytest.raises(dl.WeightsNotCachedError, match="cfg.MODEL.WEIGHTS"):
        detectron2_zoo_weights(config, online=False)
    from detectron2 import model_zoo

    url = model_zoo.get_checkpoint_url(config)
    assert url.startswith(DETECTRON2_ZOO_URL) and url.endswith(".pkl")
    mirror_path = "/" + url.split("://", 1)[1]
    server.files[mirror_path] = b"<html>a login page</html>"
    with pytest.raises(dl.DownloadError, match="not a Detectron2 checkpoint"):
        detectron2_zoo_weights(config, online=True, progress=False)
    server.files[mirror_path] = pickle.dumps({"model": {"w": np.zeros(2)}, "__author__": "test"}, protocol=2)
    path = detectron2_zoo_weights(config, online=True, progress=False)
    assert path.is_relative_to(torch_home) and path.read_bytes() == server.files[mirror_path]
    assert detectron2_zoo_weights(config, online=False) == path  # cached: no switch needed
    from detectron2.checkpoint import DetectionCheckpointer

    loaded = DetectionCheckpointer(torch.nn.Linear(1, 1))._load_file(str(path))  # Detectron2 reads it
    assert "w" in loaded["model"]
