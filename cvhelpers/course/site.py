"""The course website: executed notebooks + generated index pages, built with MkDocs + mkdocs-jupyter.

    python -m cvhelpers.course.site --notebooks build/notebooks --results build/results.json --out build/site
    python -m cvhelpers.course.site --notebooks build/smoke/notebooks --results build/smoke/results.json \\
        --out build/smoke/site                       # what the browser test builds

Pages: a course index (order, lesson structure, prerequisites, measured run times), a recipes
index (every cell tagged ``recipe``, linked to its cell), the results table (results.json), setup
instructions (site/setup.md) and the teachers' page (docs/TEACHING.md + plans computed from the
measured run times). Every number on these pages comes from the results files passed in.
``pages.json`` in the output lists each page with its expected title, for the browser check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat

from cvhelpers.course.results import NOTEBOOK_GLOB, lesson_number
from cvhelpers.course.runner import render_markdown
from cvhelpers.course.workshop import (Lesson, find_recipes, format_clock, plan_day, read_lesson, teaching_minutes)
from cvhelpers.env import machine_label

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SITE_SOURCES = PROJECT_ROOT / "site"
SITE_NAME = "CV Cookbook"
#: Room time for the plans on the teachers' page, lunch not included (minutes).
PLANS = {"One-day workshop": 390, "Half-day workshop": 210}
#: Issue 21's teachable length: a lesson whose full run takes longer is listed on the teachers' page.
LONG_RUN_S = 8 * 60


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "not measured"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _entries(results: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {e["notebook"]: e for e in (results or {}).get("notebooks", [])}


def notebook_times(name: str, results: dict[str, Any], gpu_results: dict[str, Any] | None) -> dict[str, Any]:
    """Measured run times of notebook ``name``: CPU from ``results``, GPU from ``gpu_results``
    (only when that file's machine reports a GPU). Values are seconds or None."""
    cpu = _entries(results).get(name)
    gpu_machine = (gpu_results or {}).get("machine", {}).get("gpu")
    gpu = _entries(gpu_results).get(name) if gpu_machine else None
    return {"profile": results.get("profile"), "cpu_s": cpu and cpu["seconds"],
            "cpu_machine": (cpu or {}).get("machine") or results.get("machine", {}), "gpu_s": gpu and gpu["seconds"],
            "gpu_name": gpu_machine}


def lesson_minutes(lesson: Lesson, run_seconds: float | None) -> int | None:
    """Teaching + exercise minutes of a lesson, or None when its run time was not measured."""
    if run_seconds is None:
        return None
    return teaching_minutes(run_seconds, lesson.code_cells) + lesson.exercise_minutes


def _bullet_list(items: list[str], missing: str) -> list[str]:
    return [f"- {item}" for item in items] if items else [f"- *{missing}*"]


def machines_paragraph(lessons: list[Lesson], results: dict[str, Any]) -> str:
    """Which CPU measured which lessons' run times: a record merged from runs on several machines
    (``runner --record --other-machine``) names each, so no time is read against another CPU."""
    by_machine: dict[str, list[str]] = {}
    for lesson in lessons:
        times = notebook_times(lesson.notebook, results, None)
        if times["cpu_s"] is not None:
            where = machine_label(times["cpu_machine"], cores=True)
            by_machine.setdefault(where, []).append(lesson_number(lesson.notebook))
    if len(by_machine) <= 1:
        where = next(iter(by_machine), machine_label(results.get("machine", {}), cores=True))
        return f"Run times were measured in the **{results.get('profile')}** profile on one CPU ({where})"
    parts = [f"{where} for {', '.join(numbers)}" for where, numbers in by_machine.items()]
    return (f"Run times were measured in the **{results.get('profile')}** profile on {len(by_machine)} CPUs, "
            f"so compare lessons' times with care: {'; '.join(parts)}")


def course_index(lessons: list[Lesson], results: dict[str, Any], gpu_results: dict[str, Any] | None) -> str:
    """The course index page (Markdown): one section per notebook, in course order."""
    lines = [f"# {SITE_NAME}", "",
             "A Jupyter-first computer-vision course that runs offline on a laptop CPU. Work through "
             "the notebooks in order; each one lists the questions it answers, what you will learn, "
             "what you need first, and how long it took to run.", "",
             f"{machines_paragraph(lessons, results)}. GPU times appear where a GPU run was recorded. "
             "See [Results](results.md), [Recipes](recipes.md), [Setup](setup.md) and [Teaching](teaching.md).", "",
             "| # | notebook | CPU run time | GPU run time | teaching + exercises |",
             "| --- | --- | ---: | ---: | ---: |"]
    for lesson in lessons:
        times = notebook_times(lesson.notebook, results, gpu_results)
        total = lesson_minutes(lesson, times["cpu_s"])
        lines.append(f"| {lesson_number(lesson.notebook)} | [{lesson.title}](notebooks/{lesson.notebook}.ipynb) | "
                     f"{_minutes(times['cpu_s'])} | {_minutes(times['gpu_s'])} | "
                     f"{'not measured' if total is None else f'{total} min'} |")
    for lesson in lessons:
        times = notebook_times(lesson.notebook, results, gpu_results)
        gpu = f"{_minutes(times['gpu_s'])} on {times['gpu_name']}" if times["gpu_s"] else "not measured"
        minutes = lesson_minutes(lesson, times["cpu_s"])
        teach = "not measured" if minutes is None else f"{minutes - lesson.exercise_minutes} min"
        lines += ["", f"## [{lesson.title}](notebooks/{lesson.notebook}.ipynb)", "",
                  f"**Run time**: {_minutes(times['cpu_s'])} on the CPU "
                  f"({machine_label(times['cpu_machine'], cores=True)}; "
                  f"{times['profile']} profile); "
                  f"GPU: {gpu}. **Teaching**: {teach}; **exercises**: {lesson.exercise_minutes} min.", "",
                  "**Questions**", "", *_bullet_list(lesson.questions, "not declared yet"), "",
                  "**What you will learn**", "", *_bullet_list(lesson.objectives, "not declared yet"), "",
                  "**Prerequisites**", "", *_bullet_list(lesson.prerequisites, "not declared yet"), "",
                  "**Key points**", "", *_bullet_list(lesson.keypoints, "not declared yet")]
        if lesson.exercises:
            lines += ["", "**Exercises**", ""]
            lines += [f"- [{e.title}](notebooks/{lesson.notebook}.ipynb#cell-id={e.cell_id})" for e in lesson.exercises]
    return "\n".join(lines) + "\n"


def recipes_index(notebooks: list[nbformat.NotebookNode], names: list[str]) -> str:
    """The recipes page (Markdown): every recipe cell, its description and a link to the cell."""
    lines = ["# Recipes", "",
             "Copy-paste recipes from the notebooks. A recipe is a code cell tagged `recipe` whose first "
             "line is `# Recipe: <what it does>`; each link opens the notebook at that cell.", "",
             "| recipe | notebook |", "| --- | --- |"]
    for nb, name in zip(notebooks, names):
        for recipe in find_recipes(nb, name):
            lines.append(f"| [{recipe.description}](notebooks/{name}.ipynb#cell-id={recipe.cell_id}) | {name} |")
    return "\n".join(lines) + "\n"


def teaching_plans(lessons: list[Lesson], results: dict[str, Any]) -> str:
    """Workshop plans (Markdown) computed from the measured run times in ``results``."""
    times_of = {lesson.notebook: notebook_times(lesson.notebook, results, None) for lesson in lessons}
    timed = [(lesson.title, lesson_minutes(lesson, times_of[lesson.notebook]["cpu_s"])) for lesson in lessons]
    unmeasured = [title for title, minutes in timed if minutes is None]
    lines = ["", "## Plans from the measured run times", "",
             f"Computed when this site was built, from the {results.get('profile')} profile's run times "
             "(a lesson's minutes = its measured run time + 2 min per code cell for explaining, rounded up "
             "to 5 min, + its exercises' stated minutes). Start times assume a 09:00 start; add lunch."]
    if unmeasured:
        lines += ["", "Not measured, so left out: " + ", ".join(unmeasured) + "."]
    long_runs = []
    for lesson in lessons:
        times = times_of[lesson.notebook]
        if times["cpu_s"] is not None and times["cpu_s"] > LONG_RUN_S:
            long_runs.append(f"{lesson.title}: {_minutes(times['cpu_s'])} "
                             f"({machine_label(times['cpu_machine'], cores=True)})")
    if long_runs:
        lines += ["", f"**Runs longer than {LONG_RUN_S // 60} minutes** in this profile, each mostly training "
                  "sized to reach the lesson's recorded target or to match the run it is compared with. In a room, "
                  "run them with "
                  "`PROFILE = \"smoke\"` (about a minute; the numbers are then not the lesson's) and walk "
                  "through the executed full run (a site built after `make course` carries it), or start the "
                  "full run before a break:", "",
                  *[f"- {item}" for item in long_runs]]
    for plan, room_minutes in PLANS.items():
        slots, left_out = plan_day([(t, m) for t, m in timed if m is not None], room_minutes)
        lines += ["", f"### {plan} ({room_minutes // 60} h {room_minutes % 60:02d} min of room time)", "",
                  "| start | minutes | what |", "| --- | ---: | --- |"]
        lines += [f"| {format_clock(9, s.start_minute)} | {s.minutes} | {s.what} |" for s in slots]
        if left_out:
            lines += ["", "Does not fit, set as homework or a second session: " + ", ".join(left_out) + "."]
    return "\n".join(lines) + "\n"


def write_pages(notebooks_dir: Path, results: dict[str, Any], gpu_results: dict[str, Any] | None,
                docs: Path) -> list[dict[str, str]]:
    """Write the Markdown pages and copy the executed notebooks into ``docs``; return the nav."""
    paths = sorted(notebooks_dir.glob(NOTEBOOK_GLOB))
    if not paths:
        raise FileNotFoundError(f"{notebooks_dir}: no executed notebooks (run `make course` or `make test` first)")
    notebooks = [nbformat.read(p, as_version=4) for p in paths]
    names = [p.stem for p in paths]
    lessons = [read_lesson(nb, name) for nb, name in zip(notebooks, names)]
    (docs / "notebooks").mkdir(parents=True)
    for path in paths:
        shutil.copy(path, docs / "notebooks" / path.name)
    (docs / "index.md").write_text(course_index(lessons, results, gpu_results))
    (docs / "recipes.md").write_text(recipes_index(notebooks, names))
    (docs / "results.md").write_text(render_markdown(results))
    shutil.copy(SITE_SOURCES / "setup.md", docs / "setup.md")
    teaching = (PROJECT_ROOT / "docs" / "TEACHING.md").read_text()
    (docs / "teaching.md").write_text(teaching + teaching_plans(lessons, results))
    nav: list[dict[str, str]] = [{"Course": "index.md"}]
    nav += [{lesson.title: f"notebooks/{lesson.notebook}.ipynb"} for lesson in lessons]
    nav += [{"Recipes": "recipes.md"}, {"Results": "results.md"}, {"Setup": "setup.md"},
            {"Teaching": "teaching.md"}]
    return nav


def build_site(notebooks_dir: Path, results_file: Path, out_dir: Path,
               gpu_results_file: Path | None = None) -> Path:
    """Build the static site into ``out_dir`` (replaced) with MkDocs; return ``out_dir``.

    The Markdown sources and mkdocs.yml are written to ``<out_dir>-src`` (kept, for debugging).
    """
    results = json.loads(results_file.read_text())
    gpu_results = json.loads(gpu_results_file.read_text()) if gpu_results_file else None
    src = out_dir.with_name(out_dir.name + "-src")
    shutil.rmtree(src, ignore_errors=True)
    docs = src / "docs"
    nav = write_pages(notebooks_dir, results, gpu_results, docs)
    config = (SITE_SOURCES / "mkdocs.yml").read_text()
    config += "\nnav:\n" + "".join(f"  - {json.dumps(k)}: {json.dumps(v)}\n" for item in nav for k, v in item.items())
    (src / "mkdocs.yml").write_text(config)
    shutil.rmtree(out_dir, ignore_errors=True)
    # NO_MKDOCS_2_WARNING: mkdocs-material's banner about its successor (see the README's site note).
    # cwd=src: mkdocs-jupyter keeps its conversion cache in ./.cache, which belongs beside the sources.
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f",
                    str((src / "mkdocs.yml").resolve()), "-d", str(out_dir.resolve())], check=True,
                   env=os.environ | {"NO_MKDOCS_2_WARNING": "1"}, cwd=src)
    pages = [{"url": "" if v == "index.md" else v.rsplit(".", 1)[0] + "/", "title": k}
             for item in nav for k, v in item.items()]
    (out_dir / "pages.json").write_text(json.dumps(pages, indent=1))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", type=Path, default=Path("build/notebooks"), help="executed notebooks")
    parser.add_argument("--results", type=Path, default=Path("build/results.json"))
    parser.add_argument("--gpu-results", type=Path, default=None, help="a results.json from a GPU machine")
    parser.add_argument("--out", type=Path, default=Path("build/site"))
    args = parser.parse_args(argv)
    out = build_site(args.notebooks, args.results, args.out, args.gpu_results)
    print(f"site: {out}/index.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
