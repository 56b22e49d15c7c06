"""The course-wide model table: every model the notebooks trained, side by side.

Notebooks describe what they trained with ``Recorder.record_model(...)``; the runner stores
that list under each notebook's ``info["models"]`` in ``build/results.json``. This module reads
it back and makes one table: task, metric, value, parameters and CPU latency per model.

>>> rows = model_table(read_course_results("build"))       # doctest: +SKIP
>>> print(model_table_markdown(rows))                      # doctest: +SKIP
| model | notebook | task | metric | value | parameters | CPU latency (ms) | image size |
| --- | --- | --- | --- | ---: | ---: | ---: | ---: |
...one row per model...
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cvhelpers.course.results import NOTEBOOK_GLOB

__all__ = ["MODEL_COLUMNS", "read_course_results", "model_table", "model_table_markdown"]

#: The keys of every row of :func:`model_table`, in display order.
MODEL_COLUMNS = ("name", "notebook", "task", "metric", "value", "parameters", "cpu_latency_ms",
                 "image_size")
_HEADERS = {"name": "model", "cpu_latency_ms": "CPU latency (ms)", "image_size": "image size"}


def read_course_results(build_dir: str | os.PathLike, include_running: bool = True) -> dict[str, Any]:
    """``build_dir/results.json`` merged with the per-notebook files of a run still going on.

    The runner writes ``results.json`` only after its last notebook, so a notebook that shows
    the table during ``make course`` would otherwise see the previous run. With
    ``include_running`` the files ``build_dir/metrics/NN_name.json`` (written by each notebook's
    ``Recorder`` as it runs) replace the entries of the same notebooks.

    Returns:
        ``{"profile": ..., "notebooks": [{"notebook": name, "info": {...}, "metrics": [...]},
        ...]}`` sorted by notebook; empty ``notebooks`` when nothing has been run.
    """
    build_dir = Path(build_dir)
    results: dict[str, Any] = {"profile": None, "notebooks": []}
    if (build_dir / "results.json").is_file():
        results = json.loads((build_dir / "results.json").read_text())
    by_name = {entry["notebook"]: entry for entry in results.get("notebooks", [])}
    metrics_dir = build_dir / "metrics"
    if include_running and metrics_dir.is_dir():
        for path in sorted(metrics_dir.glob(NOTEBOOK_GLOB.replace(".ipynb", ".json"))):
            if path.name.endswith(".status.json"):
                continue
            recorded = json.loads(path.read_text())
            name = recorded.get("notebook", path.stem)
            by_name[name] = {**by_name.get(name, {}), "notebook": name,
                             "info": recorded.get("info", {}), "metrics": recorded.get("metrics", [])}
            results["profile"] = results.get("profile") or recorded.get("profile")
    results["notebooks"] = [by_name[name] for name in sorted(by_name)]
    return results


def model_table(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per recorded model, ordered by notebook, then as recorded.

    Args:
        results: the content of ``results.json`` (or :func:`read_course_results`): a dict with
            ``notebooks``, each with ``notebook`` and ``info["models"]`` (a list of dicts with
            the keys :meth:`cvhelpers.course.results.Recorder.record_model` writes).

    Returns:
        Dicts with the keys :data:`MODEL_COLUMNS`; missing values are ``None``. Ready for
        ``pandas.DataFrame(rows)`` or :func:`model_table_markdown`.
    """
    rows = []
    for entry in sorted(results.get("notebooks", []), key=lambda e: e["notebook"]):
        for model in (entry.get("info") or {}).get("models", []):
            row = {column: model.get(column) for column in MODEL_COLUMNS}
            row["notebook"] = entry["notebook"]
            rows.append(row)
    return rows


def _format(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column == "parameters":
        return f"{value / 1e6:.2f} M" if value >= 1e5 else f"{value:,}"
    if column == "value":
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    if column == "cpu_latency_ms":
        return f"{value:.2f}" if value < 10 else f"{value:.1f}"
    return str(value)


def model_table_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`model_table` as a Markdown table (numbers right-aligned).

    Parameters are shown in millions above 100,000; an empty cell means "not recorded"
    (e.g. no CPU latency measured).
    """
    numeric = {"value", "parameters", "cpu_latency_ms", "image_size"}
    header = "| " + " | ".join(_HEADERS.get(c, c) for c in MODEL_COLUMNS) + " |"
    rule = "| " + " | ".join("---:" if c in numeric else "---" for c in MODEL_COLUMNS) + " |"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(_format(c, row.get(c)) for c in MODEL_COLUMNS) + " |")
    return "\n".join(lines) + "\n"
