"""The website: pages built from executed notebooks and results.json, checked in headless Chromium.

The browser check runs in a subprocess (tools/browser_check.py): it serves the site on 127.0.0.1
and drives Chromium over its DevTools protocol, so pytest-socket's block on this process stays.
"""

import base64
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from cvhelpers.course.site import build_site, course_index, teaching_plans
from cvhelpers.course.workshop import read_lesson

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "build" / "smoke"


def _results(seconds: float, gpu: str | None = None, profile: str = "full") -> dict:
    return {"profile": profile, "finished": "2026-11-27T00:00:00+00:00",
            "machine": {"cpu": "Test CPU", "cores": 2, "memory_gb": 24, "gpu": gpu, "os": "Linux",
                        "python": "3.11"},
            "versions": {"torch": "2.14.1"},
            "notebooks": [{"notebook": "99_demo", "status": "passed", "seconds": seconds, "budget_s": 60,
                           "within_budget": True, "peak_rss_mb": 100.0,
                           "metrics": [{"name": "acc", "value": 0.5, "target": ">= 0.1", "passed": True,
                                        "unit": ""}]}]}


def _executed_notebook() -> nbformat.NotebookNode:
    """A notebook as papermill leaves it: lesson cells, a recipe and a PNG figure output."""
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    v4 = nbformat.v4
    figure = v4.new_output("display_data", data={"image/png": base64.b64encode(buffer.getvalue()).decode(),
                                                  "text/plain": "<Figure>"})
    nb = v4.new_notebook(cells=[
        v4.new_markdown_cell("# 99 · Demo\n\n**Questions**\n- Why?\n\n**What you will learn**\n- a thing\n\n"
                             "**Prerequisites**: none."),
        v4.new_code_cell("# Recipe: draw a red rectangle\nshow()", metadata={"tags": ["recipe"]},
                         outputs=[figure], execution_count=1),
        v4.new_markdown_cell("### Exercise: try it (5 min)", metadata={"tags": ["exercise"]}),
        v4.new_markdown_cell("## Key points\n- red is a colour"),
    ])
    for i, cell in enumerate(nb.cells):
        cell.id = f"c{i:02d}"
    return nb


def test_course_index_uses_measured_times_only():
    lesson = read_lesson(_executed_notebook(), "99_demo")
    page = course_index([lesson], _results(120.0), gpu_results=None)
    assert "2.0 min" in page and "not measured" in page  # CPU measured, GPU not
    page = course_index([lesson], _results(120.0), gpu_results=_results(9.0, gpu="NVIDIA H100"))
    assert "9 s on NVIDIA H100" in page
    # A results file without a GPU is not a GPU measurement.
    assert "9 s" not in course_index([lesson], _results(120.0), gpu_results=_results(9.0))
    # teaching = 2 min run + 2 min x 1 code cell -> 5 min; exercises 5 min
    assert "**Teaching**: 5 min; **exercises**: 5 min" in page
    assert "| 09:00 | 10 | 99 · Demo |" in teaching_plans([lesson], _results(120.0))


def test_pages_name_the_machine_of_each_time_and_list_the_long_runs():
    from cvhelpers.course.site import LONG_RUN_S

    nb = _executed_notebook()
    first = read_lesson(nb, "99_demo")
    second = read_lesson(nb, "98_other")
    results = _results(120.0)
    page = course_index([first, second], results, gpu_results=None)
    assert "on one CPU (2 cores, Test CPU)" in page and "(2 cores, Test CPU; full profile)" in page
    avx2 = {"cpu": "AMD EPYC", "vector_isa": "avx2", "cores": 2, "gpu": None}
    results["notebooks"].append({**results["notebooks"][0], "notebook": "98_other", "seconds": LONG_RUN_S + 60.0,
                                 "machine": avx2})
    page = course_index([first, second], results, gpu_results=None)
    assert "on 2 CPUs" in page and "2 cores, Test CPU for 99; 2 cores, AMD EPYC, AVX2 only for 98" in page
    assert "9.0 min on the CPU (2 cores, AMD EPYC, AVX2 only; full profile)" in page
    plans = teaching_plans([first, second], results)
    assert "**Runs longer than 8 minutes**" in plans
    long_list = plans.split("**Runs longer than 8 minutes**")[1]
    assert "9.0 min (2 cores, AMD EPYC, AVX2 only)" in long_list and "2.0 min" not in long_list
    assert "Runs longer" not in teaching_plans([first], _results(LONG_RUN_S))


def _browser_check(site: Path, screenshot: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "browser_check.py"), str(site),
                           "--screenshot", str(screenshot)], capture_output=True, text=True, timeout=300)


def test_site_builds_and_passes_the_browser_check(tmp_path):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    nbformat.write(_executed_notebook(), notebooks / "99_demo.ipynb")
    (tmp_path / "results.json").write_text(json.dumps(_results(42.0)))
    site = build_site(notebooks, tmp_path / "results.json", tmp_path / "site")
    pages = json.loads((site / "pages.json").read_text())
    assert {p["title"] for p in pages} >= {"Course", "99 · Demo", "Recipes", "Results", "Setup", "Teaching"}
    assert "#cell-id=c01" in (site / "recipes" / "index.html").read_text()
    run = _browser_check(site, tmp_path / "index.png")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "browser check passed: 6 pages" in run.stdout
    assert Image.open(tmp_path / "index.png").size[0] > 0

    # The check catches what it claims to: a broken link, a missing anchor, a broken image.
    broken = tmp_path / "broken"
    shutil.copytree(site, broken)
    page = broken / "recipes" / "index.html"
    page.write_text(page.read_text().replace("#cell-id=c01", "#cell-id=nope").replace(
        "</article>", '<a href="../no-such-page/">x</a><img src="../missing.png"></article>'))
    run = _browser_check(broken, tmp_path / "broken.png")
    assert run.returncode == 1
    for problem in ("missing anchor #cell-id=nope", "broken link", "missing.png' did not load"):
        assert problem in run.stdout, run.stdout


@pytest.mark.skipif(not (SMOKE / "results.json").exists(), reason="no smoke outputs yet (make notebooks)")
def test_site_from_the_smoke_run(tmp_path):
    """The real course pages, from `make test`'s smoke outputs; the index screenshot is kept."""
    site = build_site(SMOKE / "notebooks", SMOKE / "results.json", SMOKE / "site")
    run = _browser_check(site, SMOKE / "site-index.png")
    assert run.returncode == 0, run.stdout + run.stderr


def test_no_heading_holds_inline_code():
    """mkdocs-jupyter's table of contents drops inline code from a heading's anchor while the page
    keeps it, so a heading like "Train with `DefaultTrainer`" gets a link to nowhere (the browser
    check found one). Headings stay plain text; code goes in the paragraph below."""
    found = []
    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "markdown":
                found += [f"{path.name}: {line}" for line in cell.source.splitlines() if line.startswith("#") and "`" in line]
    assert not found, found
