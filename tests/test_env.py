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


def test_environment_report_names_versions_and_machine():
    report = env.environment_report()
    assert report["versions"]["torch"] == torch.__version__.split("+")[0]
    assert report["machine"]["cores"] >= 1
    assert env.package_versions(("no-such-package-xyz",)) == {"no-such-package-xyz": None}
