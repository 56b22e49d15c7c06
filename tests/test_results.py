import json
import math

import pytest

from cvhelpers.course.results import Recorder, Target, read_metrics
from cvhelpers.files import write_json_atomic


@pytest.mark.parametrize("text, value, expected", [
    (">= 0.91", 0.91, True), (">=0.91", 0.9099, False), ("<= 60", 61, False),
    ("< 1e-4", 5e-5, True), ("> 0", 0.0, False),
])
def test_target_parse_and_check(text, value, expected):
    assert Target.parse(text).met_by(value) is expected


def test_nan_never_meets_a_target():
    assert not Target.parse(">= 0").met_by(math.nan)
    assert not Target.parse("<= 1").met_by(math.nan)


@pytest.mark.parametrize("bad", ["0.91", "=> 0.9", ">= abc", ""])
def test_bad_target_is_refused(bad):
    with pytest.raises(ValueError, match="not of the form"):
        Target.parse(bad)


def test_recorder_picks_the_profile_target_and_writes_json(tmp_path, capsys):
    path = tmp_path / "m.json"
    smoke = Recorder(path, notebook="nb", profile="smoke")
    smoke.record("acc", 0.5, target=">= 0.91", smoke_target=">= 0.3")
    metric = smoke.metrics["acc"]
    assert metric.passed is True and metric.target == ">= 0.3"
    assert "smoke target >= 0.3: met" in capsys.readouterr().out
    smoke.record("seconds", 12.0)  # no target: informational
    data = read_metrics(path)
    assert [m["name"] for m in data["metrics"]] == ["acc", "seconds"]
    assert data["metrics"][1]["passed"] is None

    full = Recorder(None, notebook="nb", profile="full")
    full.record("acc", 0.5, target=">= 0.91", smoke_target=">= 0.3")
    assert full.metrics["acc"].passed is False


def test_recorder_rejects_unknown_profile():
    with pytest.raises(ValueError, match="profile"):
        Recorder(None, notebook="nb", profile="fast")


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, {"ok": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"ok": 1}
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_record_model_replaces_by_name(tmp_path):
    rec = Recorder(tmp_path / "m.json", notebook="nb", profile="full")
    rec.record_model("cnn", "classification", "test_accuracy", 0.9, 1000, cpu_latency_ms=1.5)
    rec.record_model("cnn", "classification", "test_accuracy", 0.92, 1000, cpu_latency_ms=1.4)
    models = read_metrics(tmp_path / "m.json")["info"]["models"]
    assert len(models) == 1 and models[0]["value"] == 0.92 and models[0]["parameters"] == 1000


def test_atomic_write_gives_the_file_the_umask_mode_not_0600(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "results.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o644
