"""The course-wide model table, built from a synthetic results.json and a run in progress."""

from __future__ import annotations

import json

from cvhelpers.course.report import (MODEL_COLUMNS, model_table, model_table_markdown, read_course_results)
from cvhelpers.course.results import Recorder


def recorder_info(tmp_path, notebook: str, models: list[dict]) -> dict:
    """What the runner stores for a notebook: the Recorder's own file content."""
    rec = Recorder(tmp_path / f"{notebook}.json", notebook=notebook, profile="full")
    rec.record("some_metric", 1.0)
    for model in models:
        rec.record_model(**model)
    return rec.to_dict()


def synthetic_results(tmp_path) -> dict:
    cnn = {"name": "SmallCNN-w32", "task": "classification", "metric": "test_accuracy",
           "value": 0.9123, "parameters": 421_642, "cpu_latency_ms": 0.61, "image_size": 28}
    yolo = {"name": "YOLOv8n", "task": "detection", "metric": "map50_95", "value": 0.52,
            "parameters": 3_011_628, "cpu_latency_ms": 31.2, "image_size": 160}
    tiny = {"name": "logreg", "task": "classification", "metric": "test_accuracy", "value": 0.84,
            "parameters": 7_850}
    entries = [recorder_info(tmp_path, "04_detection", [yolo]),
               recorder_info(tmp_path, "01_cnn", [cnn, tiny]),
               recorder_info(tmp_path, "00_setup", [])]
    return {"profile": "full", "notebooks": [{"notebook": e["notebook"], "status": "passed",
                                              "metrics": e["metrics"], "info": e["info"]}
                                             for e in entries]}


def test_model_table_from_results(tmp_path):
    rows = model_table(synthetic_results(tmp_path))
    assert [(r["notebook"], r["name"]) for r in rows] == [
        ("01_cnn", "SmallCNN-w32"), ("01_cnn", "logreg"), ("04_detection", "YOLOv8n")]
    assert all(tuple(r) == MODEL_COLUMNS for r in rows)
    assert rows[0]["value"] == 0.9123 and rows[0]["parameters"] == 421_642
    assert rows[1]["cpu_latency_ms"] is None and rows[1]["image_size"] is None
    assert model_table({"notebooks": []}) == []


def test_markdown_table(tmp_path):
    text = model_table_markdown(model_table(synthetic_results(tmp_path)))
    lines = text.strip().splitlines()
    assert lines[0].startswith("| model | notebook | task | metric | value | parameters |")
    assert len(lines) == 2 + 3
    assert "| SmallCNN-w32 | 01_cnn | classification | test_accuracy | 0.912 | 0.42 M | 0.61 | 28 |" in lines
    assert "| logreg | 01_cnn | classification | test_accuracy | 0.840 | 7,850 |  |  |" in lines
    assert "| 3.01 M | 31.2 | 160 |" in lines[-1]


def test_read_course_results_prefers_files_of_the_run_in_progress(tmp_path):
    build = tmp_path / "build"
    (build / "metrics").mkdir(parents=True)
    (build / "results.json").write_text(json.dumps(synthetic_results(tmp_path)))
    # this run has re-run 01_cnn (now with another model) and run 10_eval for the first time
    Recorder(build / "metrics" / "01_cnn.json", "01_cnn", "full").record_model(
        "SmallCNN-w64", "classification", "test_accuracy", 0.93, 1_600_000)
    Recorder(build / "metrics" / "10_eval.json", "10_eval", "full").record_model(
        "calibration-cnn", "classification", "test_accuracy", 0.85, 100_000, 0.5, 28)
    (build / "metrics" / "10_eval.status.json").write_text("{}")
    names = [r["name"] for r in model_table(read_course_results(build))]
    assert names == ["SmallCNN-w64", "YOLOv8n", "calibration-cnn"]
    names = [r["name"] for r in model_table(read_course_results(build, include_running=False))]
    assert names == ["SmallCNN-w32", "logreg", "YOLOv8n"]
    assert read_course_results(tmp_path / "nothing") == {"profile": None, "notebooks": []}
