"""Numbers in the lessons' prose come from this project's recorded runs.

- Every notebook's **Time** line is exactly what :mod:`cvhelpers.course.timeline` renders from
  the committed records (``docs/results/full.json`` from ``make course``, ``smoke.json`` from the
  smoke profile); ``make time-lines`` rewrites them after a new recorded run.
- No lesson, README or doc quotes a GPU the course has no recorded run on, or cites a file
  outside this repository.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cvhelpers.course.timeline import RECORDS, load_record, render_time_line, time_paragraph
from cvhelpers.course.results import NOTEBOOK_GLOB, lesson_number

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob(NOTEBOOK_GLOB))
# GPU models the course has no recorded run on, and paths that lie outside the repository
UNRECORDED = re.compile(r"\b(H100|H200|A100|V100|RTX ?\d{4})\b|shared/|ENVIRONMENT\.md")


@pytest.fixture(scope="module")
def records():
    return load_record(ROOT / RECORDS["full"]), load_record(ROOT / RECORDS["smoke"])


def test_the_records_are_a_full_and_a_smoke_run_of_every_notebook(records):
    full, smoke = records
    assert full["profile"] == "full" and smoke["profile"] == "smoke"
    for record in records:
        recorded = {e["notebook"] for e in record["notebooks"]}
        assert recorded <= {p.stem for p in NOTEBOOKS}, "the record names a notebook that is gone"
        assert recorded == {p.stem for p in NOTEBOOKS}, "a lesson has no recorded run: run `make course`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: lesson_number(p.stem))
def test_time_line_matches_the_records(path, records):
    first = "".join(json.loads(path.read_text())["cells"][0]["source"])
    found = time_paragraph(first)
    assert found is not None, f"{path.name}: the first cell has no **Time** paragraph"
    assert found == render_time_line(path.stem, *records), (
        f"{path.name}: the Time line differs from docs/results/; run `make time-lines`")


def _texts():
    for path in NOTEBOOKS:
        for k, cell in enumerate(json.loads(path.read_text())["cells"]):
            yield f"{path.name} cell {k}", "".join(cell["source"])
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        yield path.name, path.read_text()


def test_no_unrecorded_gpu_figures_or_outside_files():
    hits = [f"{where}: {m.group(0)!r} in ...{text[max(0, m.start() - 60):m.end() + 40]!r}"
            for where, text in _texts() for m in UNRECORDED.finditer(text)]
    assert not hits, "\n".join(hits)


def test_the_checker_catches_a_hand_typed_time_line(records):
    good = render_time_line(NOTEBOOKS[1].stem, *records)
    assert time_paragraph("# 01\n\n" + good + "\n\n**Prerequisites**") == good
    full, smoke = records
    slower = json.loads(json.dumps(full))
    for entry in slower["notebooks"]:
        entry["seconds"] += 60
    assert render_time_line(NOTEBOOKS[1].stem, slower, smoke) != good  # a new run changes the line
    assert UNRECORDED.search("measured on an H100") and UNRECORDED.search("see `shared/ENVIRONMENT.md`")


def test_the_time_line_dates_each_notebook_by_its_own_run(records):
    full, smoke = records
    stem = NOTEBOOKS[1].stem
    good = render_time_line(stem, full, smoke)
    merged_later = json.loads(json.dumps(full))
    merged_later["finished"] = "2099-01-01T00:00:00+00:00"  # another notebook re-recorded and merged
    assert render_time_line(stem, merged_later, smoke) == good
    for entry in merged_later["notebooks"]:
        if entry["notebook"] == stem:
            entry["finished"] = "2098-02-03T00:00:00+00:00"  # this notebook run again
    assert "run 2098-02-03" in render_time_line(stem, merged_later, smoke).replace("\n", " ")


def test_rewrite_replaces_only_the_time_paragraph(tmp_path, records):
    import nbformat

    from cvhelpers.course.timeline import rewrite_time_lines

    stem = NOTEBOOKS[0].stem
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {stem}\n\n**Time**: full profile 1 s, typed by hand.\n\n**Prerequisites**: none."),
                nbformat.v4.new_code_cell("x = 1")]
    nbformat.write(nb, tmp_path / f"{stem}.ipynb")
    assert rewrite_time_lines(tmp_path, *records) == [stem]
    first = nbformat.read(tmp_path / f"{stem}.ipynb", as_version=4).cells[0].source
    assert time_paragraph(first) == render_time_line(stem, *records)
    assert first.startswith(f"# {stem}\n\n") and first.endswith("\n\n**Prerequisites**: none.")
    assert rewrite_time_lines(tmp_path, *records) == []  # already current
