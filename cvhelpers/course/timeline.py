"""Each notebook's **Time** line, rendered from the recorded runs, never typed by hand.

A lesson opens with how long it takes. Typed by hand, that number drifts from what the course
measures (the machine changes, the lesson changes); here it is rendered from two records that
the runner wrote and that are committed: ``docs/results/full.json`` (``make course``) and
``docs/results/smoke.json`` (the smoke profile, as ``make test`` runs it). ``make time-lines``
rewrites the lines; ``tests/test_prose.py`` fails when a line and the records disagree.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

from cvhelpers.course.results import NOTEBOOK_GLOB
from cvhelpers.env import machine_label

__all__ = ["RECORDS", "load_record", "render_time_line", "time_paragraph", "rewrite_time_lines"]

#: The committed records, relative to the project root.
RECORDS = {"full": Path("docs/results/full.json"), "smoke": Path("docs/results/smoke.json")}

_TIME = re.compile(r"^\*\*Time\*\*:.*?(?=\n\s*\n|\Z)", re.S | re.M)


def load_record(path: Path) -> dict[str, Any]:
    """A runner's ``results.json``: machine, finish time and each notebook's seconds."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(record, dict) or "notebooks" not in record or "machine" not in record:
        raise ValueError(f"{path}: not a results.json written by cvhelpers.course.runner")
    return record


def _passed(record: dict[str, Any], notebook: str) -> dict[str, Any] | None:
    for entry in record["notebooks"]:
        if entry["notebook"] == notebook and entry["status"] == "passed":
            return entry
    return None


def _seconds(record: dict[str, Any], notebook: str) -> float | None:
    entry = _passed(record, notebook)
    return None if entry is None else float(entry["seconds"])


def render_time_line(notebook: str, full: dict[str, Any], smoke: dict[str, Any]) -> str:
    """The **Time** paragraph of ``notebook`` (its file stem) from the two records.

    The date is the notebook's own full run (its entry's ``finished``; records written before
    entries carried one fall back to the record's): a partial re-record does not re-date the
    notebooks it did not run. The smoke time names its own machine where that is not the full
    run's (cores, CPU and vector extension): a time is read with the machine that took it.
    """
    entry = _passed(full, notebook)
    machine = (entry or {}).get("machine") or full["machine"]  # an entry recorded on another machine names it
    smoke_entry = _passed(smoke, notebook)
    smoke_machine = (smoke_entry or {}).get("machine") or smoke.get("machine") or machine
    run_date = ((entry or {}).get("finished") or full["finished"])[:10]
    where = (f"{machine['cores']} CPU cores ({machine_label(machine)}, {'no GPU' if not machine.get('gpu') else machine['gpu']}), "
             f"run {run_date}, nothing else training")
    full_s, smoke_s = _seconds(full, notebook), _seconds(smoke, notebook)
    full_text = ("full profile: no passing run recorded" if full_s is None else
                 f"full profile {full_s:.0f} s" + (f" ({full_s / 60:.1f} min)" if full_s >= 120 else ""))
    smoke_text = "smoke profile: no passing run recorded" if smoke_s is None else f"smoke profile {smoke_s:.0f} s"
    smoke_where = machine_label(smoke_machine, cores=True)
    if smoke_s is not None and smoke_where != machine_label(machine, cores=True):  # a time is read with its machine
        smoke_text += f" (on {smoke_where})"
    line = (f"**Time**: {full_text} on {where}; {smoke_text}. GPU: not measured by the course. "
            "Recorded in `docs/results/`.")
    return "\n".join(textwrap.wrap(line, 95, break_on_hyphens=False))


def time_paragraph(markdown: str) -> str | None:
    """The **Time** paragraph of a markdown cell, or ``None``."""
    match = _TIME.search(markdown)
    return match.group(0).strip() if match else None


def rewrite_time_lines(notebooks_dir: Path, full: dict[str, Any], smoke: dict[str, Any]) -> list[str]:
    """Rewrite the **Time** paragraph of every notebook's first cell; returns the changed stems."""
    import nbformat  # the notebooks extra

    changed = []
    for path in sorted(Path(notebooks_dir).glob(NOTEBOOK_GLOB)):
        nb = nbformat.read(path, as_version=4)
        cell = nb.cells[0]
        old = time_paragraph(cell.source)
        if old is None:
            raise ValueError(f"{path}: the first cell has no **Time** paragraph")
        new = render_time_line(path.stem, full, smoke)
        if new != old:
            cell.source = cell.source.replace(old, new)
            nbformat.write(nb, path)
            changed.append(path.stem)
    return changed


def main() -> None:  # pragma: no cover - a thin command line
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=Path("notebooks"))
    args = parser.parse_args()
    full, smoke = load_record(RECORDS["full"]), load_record(RECORDS["smoke"])
    changed = rewrite_time_lines(args.notebooks, full, smoke)
    print("rewrote the Time line of:", ", ".join(changed) if changed else "nothing (all current)")


if __name__ == "__main__":  # pragma: no cover
    main()
