"""Named metrics with targets, recorded from inside a notebook and collected by the runner.

A notebook records what it measured; the runner (``python -m cvhelpers.course.runner``) reads the file
afterwards and fails the run when a metric misses its target for the profile that ran.

>>> rec = Recorder(None, notebook="demo", profile="smoke")
>>> rec.record("test_accuracy", 0.93, target=">= 0.91", smoke_target=">= 0.3")
test_accuracy = 0.93  (smoke target >= 0.3: met)
>>> rec.metrics["test_accuracy"].passed
True
"""

from __future__ import annotations

import json
import math
import operator
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from cvhelpers.files import write_json_atomic

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}
PROFILES = ("smoke", "full")

#: The lessons' file names: a two-digit number, an optional letter for a lesson inserted between
#: two others (``01b_architectures`` comes after ``01_cnn_from_scratch``), ``_`` and a name.
NOTEBOOK_GLOB = "[0-9][0-9]*_*.ipynb"


def lesson_number(name: str) -> str:
    """``"01b"`` for ``"01b_architectures"``: the part of a notebook's name before the first ``_``."""
    return name.split("_", 1)[0]


@dataclass(frozen=True)
class Target:
    """A threshold such as ``>= 0.91``: ``op`` is one of ``>=``, ``<=``, ``>``, ``<``."""

    op: str
    threshold: float

    @classmethod
    def parse(cls, text: str) -> "Target":
        """Parse ``">= 0.91"`` (spaces optional). Raises ValueError on anything else."""
        text = text.strip()
        for op in sorted(_OPS, key=len, reverse=True):  # ">=" before ">"
            if text.startswith(op):
                try:
                    return cls(op, float(text[len(op):]))
                except ValueError:
                    break
        raise ValueError(f"target {text!r} is not of the form '>= 0.91' (ops: {', '.join(_OPS)})")

    def met_by(self, value: float) -> bool:
        """True when ``value`` satisfies the target; a NaN never does."""
        return not math.isnan(value) and _OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.op} {self.threshold:g}"


@dataclass
class Metric:
    """One recorded number. ``passed`` is None when the profile that ran sets no target."""

    name: str
    value: float
    target: str | None
    passed: bool | None
    unit: str = ""


class Recorder:
    """Records metrics for one notebook run into a JSON file the runner reads.

    Args:
        path: the JSON file to (re)write after every record; ``None`` only prints, which is
            what an interactive session wants.
        notebook: the notebook's name, e.g. ``"01_cnn_from_scratch"``.
        profile: ``"smoke"`` or ``"full"``: chooses which target applies.
    """

    def __init__(self, path: str | os.PathLike | None, notebook: str, profile: str) -> None:
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
        self.path = Path(path) if path else None
        self.notebook = notebook
        self.profile = profile
        self.metrics: dict[str, Metric] = {}
        self.info: dict[str, Any] = {}

    def record(self, name: str, value: float, target: str | None = None,
               smoke_target: str | None = None, unit: str = "") -> None:
        """Record ``value`` under ``name`` and print it with its verdict.

        Args:
            target: the full profile's target, e.g. ``">= 0.91"``.
            smoke_target: the smoke profile's target (small data, a few steps: a sanity floor).
            unit: shown beside the value ("s", "MB", "img/s", ...).

        The :class:`Metric` is kept in ``self.metrics[name]``; its ``passed`` is True/False, or
        None when the profile that ran sets no target. (Nothing is returned, so a record call at
        the end of a notebook cell displays nothing but its printed line.)
        """
        value = float(value)
        chosen = smoke_target if self.profile == "smoke" else target
        parsed = Target.parse(chosen) if chosen is not None else None
        passed = parsed.met_by(value) if parsed is not None else None
        metric = Metric(name, value, str(parsed) if parsed else None, passed, unit)
        self.metrics[name] = metric
        verdict = "" if parsed is None else f"  ({self.profile} target {parsed}: {'met' if passed else 'MISSED'})"
        print(f"{name} = {value:.6g}{' ' + unit if unit else ''}{verdict}")
        self._save()

    def record_model(self, name: str, task: str, metric: str, value: float, parameters: int,
                     cpu_latency_ms: float | None = None, image_size: int | None = None) -> None:
        """Describe a model this notebook trained, for the course-wide model table.

        Args:
            name: e.g. ``"SmallCNN-w32"``; task: ``"classification"``, ``"detection"``, ...
            metric, value: its headline metric, e.g. ``"test_accuracy"``, 0.92.
            parameters: number of parameters; cpu_latency_ms: p50 latency at batch 1 on CPU.
        """
        models = self.info.setdefault("models", [])
        models[:] = [m for m in models if m["name"] != name]
        models.append({"name": name, "task": task, "metric": metric, "value": float(value),
                       "parameters": int(parameters), "image_size": image_size,
                       "cpu_latency_ms": None if cpu_latency_ms is None else float(cpu_latency_ms)})
        self._save()

    def note(self, key: str, value: Any) -> None:
        """Keep a JSON-serialisable fact beside the metrics (e.g. the device used)."""
        self.info[key] = value
        self._save()

    def to_dict(self) -> dict[str, Any]:
        return {
            "notebook": self.notebook,
            "profile": self.profile,
            "metrics": [asdict(m) for m in self.metrics.values()],
            "info": self.info,
        }

    def _save(self) -> None:
        if self.path is not None:
            write_json_atomic(self.path, self.to_dict())


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :class:`Recorder`."""
    with open(path) as f:
        return json.load(f)
