"""The lesson helper: a notebook's whole set-up in one line, after its ``parameters`` cell.

The parameters cell (which papermill overrides) names everything a run may change. A value that
differs between the two profiles is written as a dict with exactly the keys ``"smoke"`` and
``"full"``; :func:`start_lesson` replaces it with the running profile's value. A plain value (or
one passed with ``papermill -p EPOCHS 5``) is kept as it is::

    # parameters
    PROFILE = None            # "smoke" (the one-minute CI run) or "full"; None: $CVC_PROFILE, else "full"
    RESULTS_FILE = None       # the runner sets this to collect the recorded metrics
    OUTPUT_DIR = "../build/outputs/06_semantic_segmentation"
    SEED = 0
    DEVICE = "auto"           # CUDA, then Apple MPS, then CPU
    EPOCHS = {"smoke": 1, "full": 12}

    # set-up
    lesson = start_lesson("06_semantic_segmentation", globals())

``start_lesson`` sets the offline switches and torch's threads (:func:`cvhelpers.env.setup`),
seeds every generator, resolves the device, makes the output folder and opens the results
recorder. The checks a lesson asserts go through ``lesson.record(..., target=...,
smoke_target=...)`` in the cells marked as checks, never inside a recipe.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

from cvhelpers.course.results import Recorder
from cvhelpers.env import pick_device, seed_everything, setup

__all__ = ["PROFILES", "Lesson", "profile_value", "project_root", "recorded_metrics", "start_lesson"]

PROFILES = ("smoke", "full")


def profile_value(value: Any, profile: str) -> Any:
    """``value[profile]`` when ``value`` is a ``{"smoke": ..., "full": ...}`` dict, else ``value``.

    >>> profile_value({"smoke": 1, "full": 12}, "full"), profile_value(5, "smoke")
    (12, 5)
    """
    if isinstance(value, dict) and set(value) == set(PROFILES):
        return value[profile]
    return value


class Lesson:
    """What a notebook's set-up made: its profile, device, output folder and results recorder.

    Attributes:
        name: the notebook's name (``"06_semantic_segmentation"``).
        profile: ``"smoke"`` or ``"full"``; ``smoke`` is ``profile == "smoke"``.
        device: a ``torch.device`` (``DEVICE="auto"`` resolved).
        out: the output folder (created).
        seed: the seed every generator got.
        info: what :func:`cvhelpers.env.setup` returned (threads, offline switches, caches).
    """

    def __init__(self, name: str, profile: str, device: Any, out: Path, seed: int,
                 recorder: Recorder, info: dict[str, Any]) -> None:
        self.name, self.profile, self.device, self.out, self.seed = name, profile, device, out, seed
        self.recorder, self.info = recorder, info

    @property
    def smoke(self) -> bool:
        return self.profile == "smoke"

    def record(self, name: str, value: float, target: str | None = None,
               smoke_target: str | None = None, unit: str = "") -> None:
        """Record a measured value, with the full profile's and the smoke profile's targets
        (see :meth:`cvhelpers.course.results.Recorder.record`)."""
        self.recorder.record(name, value, target=target, smoke_target=smoke_target, unit=unit)

    def check_exercise(self, name: str, answer: Any, check: Callable[[Any], bool]) -> bool | None:
        """Check an exercise's answer (:func:`cvhelpers.course.workshop.check_exercise`) and record
        the verdict as ``exercise_<name>`` = 1 (right) or 0 (wrong), target ">= 1" in both
        profiles, so a run of the notebook with its solutions shows every exercise passing.

        An unattempted answer (``None``, as in a student copy) records nothing: the check is
        skipped and the run is not failed. A wrong answer never raises here either; only the
        runner, which checks the targets at the end, reports it.
        """
        from cvhelpers.course.workshop import check_exercise

        verdict = check_exercise(name, answer, check)
        if verdict is not None:
            slug = re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
            self.record(f"exercise_{slug}", float(verdict), target=">= 1", smoke_target=">= 1")
        return verdict

    def record_model(self, *args: Any, **kwargs: Any) -> None:
        """A row of the course-wide model table (:meth:`Recorder.record_model`)."""
        self.recorder.record_model(*args, **kwargs)

    def note(self, key: str, value: Any) -> None:
        """A fact about the run kept with the results (:meth:`Recorder.note`)."""
        self.recorder.note(key, value)

    def __repr__(self) -> str:
        return (f"Lesson({self.name!r}, profile={self.profile!r}, device={str(self.device)!r}, "
                f"seed={self.seed}, out={str(self.out)!r})")


def project_root(start: str | Path | None = None) -> Path:
    """The course's repository folder, for the scripts a lesson runs (``deploy/``, ``scripts/``).

    The nearest folder at or above ``start`` (default: the working directory, a notebook's own
    folder) that holds both ``pyproject.toml`` and ``cvhelpers/``; so a student copy in
    ``build/student/`` finds the same scripts as ``notebooks/``. Else the folder above the
    imported ``cvhelpers`` package (an editable install).
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "cvhelpers").is_dir():
            return folder
    return Path(__file__).resolve().parents[2]


def recorded_metrics(notebook: str, profile: str = "full", root: str | Path | None = None) -> dict[str, Any]:
    """The metrics of ``notebook``'s passing run in the course's committed record of ``profile``
    (``docs/results/<profile>.json``), plus ``"info"``, ``"finished"`` and ``"machine"`` (the
    run's machine); ``{}`` when there is
    none. For a lesson that compares itself with another lesson's recorded run (07b with 05b)."""
    import json

    record = Path(root or project_root()) / "docs" / "results" / f"{profile}.json"
    if not record.exists():
        return {}
    data = json.loads(record.read_text())
    for entry in data["notebooks"]:
        if entry["notebook"] == notebook and entry["status"] == "passed":
            return ({m["name"]: m["value"] for m in entry["metrics"]}
                    | {"info": entry.get("info", {}), "finished": entry.get("finished"),
                       "machine": entry.get("machine") or data.get("machine", {})})
    return {}


def start_lesson(name: str, params: MutableMapping[str, Any], offline: bool = True) -> Lesson:
    """Set a notebook up from its parameters (``globals()`` in a notebook).

    Reads ``PROFILE``, ``RESULTS_FILE``, ``OUTPUT_DIR``, ``SEED`` and ``DEVICE`` from ``params``
    (each optional; without ``OUTPUT_DIR``, ``build/outputs/<name>`` in the repository, whatever
    the working directory), replaces every ``{"smoke": a, "full": b}`` value in ``params`` by the
    profile's, and prints one line saying what it set up.

    Raises:
        ValueError: an unknown profile.
    """
    profile = params.get("PROFILE") or os.environ.get("CVC_PROFILE") or "full"
    if profile not in PROFILES:
        raise ValueError(f"PROFILE must be one of {PROFILES}, got {profile!r}")
    params["PROFILE"] = profile
    for key, value in list(params.items()):
        if key.isupper():
            params[key] = profile_value(value, profile)
    info = setup(offline=offline)
    seed = int(params.get("SEED", 0))
    seed_everything(seed)
    device = pick_device(str(params.get("DEVICE", "auto")))
    out = Path(params.get("OUTPUT_DIR") or project_root() / "build" / "outputs" / name)
    out.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(params.get("RESULTS_FILE"), notebook=name, profile=profile)
    recorder.note("device", str(device))
    lesson = Lesson(name, profile, device, out, seed, recorder, info)
    print(f"{name}: profile {profile} | device {device} | {info['threads']} torch threads | "
          f"seed {seed} | {'offline' if offline else 'online'} | outputs in {out}")
    return lesson
