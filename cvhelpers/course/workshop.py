"""The workshop kit: lesson structure, exercises with checks, student copies, teaching plans.

A notebook adopts the lesson convention (docs/TEACHING.md, "The lesson convention") with cells a
learner sees in Jupyter too, so the structure needs no hidden metadata:

- the first (markdown) cell has ``**Questions**``, ``**What you will learn**`` (the objectives)
  and ``**Prerequisites**`` sections, each a ``- `` bullet list (prerequisites may be one line);
- a markdown cell with the heading ``## Key points`` lists the key points after it;
- an exercise is a markdown cell tagged ``exercise`` whose heading says its minutes,
  ``### Exercise: name the most confused pair (10 min)``; its solution is a code cell tagged
  ``solution`` with the answer between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` lines, after a
  stub line that leaves the answer ``None``; a check cell calls :func:`check_exercise`, which
  skips (and says so) while the answer is still ``None``;
- a copy-paste recipe is a code cell tagged ``recipe`` whose first line is ``# Recipe: ...``.

``python -m cvhelpers.course.workshop student notebooks build/student`` writes student copies: the
solution blocks removed, markdown cells tagged ``solution`` dropped, outputs cleared.
"""

from __future__ import annotations

import argparse
import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import nbformat

TAG_EXERCISE, TAG_SOLUTION, TAG_RECIPE = "exercise", "solution", "recipe"
BEGIN_SOLUTION, END_SOLUTION = "# BEGIN SOLUTION", "# END SOLUTION"
STUDENT_STUB = "# your code here (until then the check below is skipped)"
#: Minutes an instructor spends per code cell explaining and live-coding: an assumption stated
#: in docs/TEACHING.md, not a measurement. The run time it is added to is measured.
EXPLAIN_MINUTES_PER_CODE_CELL = 2.0

_SECTION = re.compile(r"^\s*(?:\*\*(?P<bold>[^*]+?):?\*\*:?\s*(?P<rest>.*)|#{2,4}\s+(?P<head>.+?)\s*:?\s*)$")
_SECTION_NAMES = {"questions": "questions", "what you will learn": "objectives",
                  "objectives": "objectives", "prerequisites": "prerequisites", "time": "time",
                  "key points": "keypoints"}
_MINUTES = re.compile(r"\((\d+)\s*min")
_RECIPE = re.compile(r"^#\s*Recipe:\s*(?P<text>.+)$")


@dataclass
class Exercise:
    """An exercise cell: its heading (without the ``###``), minutes and position."""

    title: str
    minutes: int | None
    cell_index: int
    cell_id: str


@dataclass
class Recipe:
    """A copy-paste recipe: the one-line description from its ``# Recipe:`` line, and its cell."""

    notebook: str
    description: str
    cell_index: int
    cell_id: str
    source: str


@dataclass
class Lesson:
    """What a notebook declares about itself as a lesson (see the module docstring)."""

    notebook: str
    title: str
    questions: list[str] = field(default_factory=list)
    objectives: list[str] = field(default_factory=list)
    prerequisites: list[str] = field(default_factory=list)
    keypoints: list[str] = field(default_factory=list)
    exercises: list[Exercise] = field(default_factory=list)
    code_cells: int = 0

    @property
    def exercise_minutes(self) -> int:
        """The sum of the exercises' stated minutes (an exercise without minutes counts 0)."""
        return sum(e.minutes or 0 for e in self.exercises)

    def problems(self) -> list[str]:
        """What is missing for this notebook to follow the lesson convention (empty: all there)."""
        wanted = {"questions": self.questions, "objectives ('What you will learn')": self.objectives,
                  "prerequisites": self.prerequisites, "key points": self.keypoints}
        found = [f"{self.notebook}: no {name} found" for name, items in wanted.items() if not items]
        found += [f"{self.notebook}: exercise {e.title!r} states no '(N min)'" for e in self.exercises
                  if e.minutes is None]
        return found


def _tags(cell: Any) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _bullets(lines: list[str]) -> list[str]:
    """Markdown ``- `` / ``* `` items, with indented continuation lines joined on."""
    items: list[str] = []
    for line in lines:
        if re.match(r"^\s{0,1}[-*]\s+", line):
            items.append(re.sub(r"^\s{0,1}[-*]\s+", "", line).strip())
        elif items and line.startswith("  ") and line.strip():
            items[-1] += " " + line.strip()
    return items


def _sections(markdown: str) -> dict[str, list[str]]:
    """Split a markdown cell into its known sections (questions, objectives, ...), as items."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in markdown.splitlines():
        match = _SECTION.match(line)
        name = match and _SECTION_NAMES.get((match["bold"] or match["head"] or "").strip().lower())
        if name:
            current = sections.setdefault(name, [])
            if match["rest"]:
                current.append("- " + match["rest"])
        elif match and (match["bold"] or match["head"]):
            current = None  # another section this module does not read
        elif current is not None:
            current.append(line)
    return {name: _bullets(lines) for name, lines in sections.items()}


def read_lesson(nb: nbformat.NotebookNode, name: str) -> Lesson:
    """Read the lesson structure of notebook ``nb`` (named ``name``, e.g. ``"01_cnn_from_scratch"``)."""
    cells = nb.cells
    first = cells[0].source if cells and cells[0].cell_type == "markdown" else ""
    title_line = next((line for line in first.splitlines() if line.startswith("# ")), f"# {name}")
    sections = _sections(first)
    lesson = Lesson(notebook=name, title=title_line[2:].strip(), questions=sections.get("questions", []),
                    objectives=sections.get("objectives", []),
                    prerequisites=sections.get("prerequisites", []))
    for index, cell in enumerate(cells):
        if cell.cell_type == "code":
            lesson.code_cells += 1
        elif "keypoints" in (found := _sections(cell.source)):
            lesson.keypoints = found["keypoints"]
        if TAG_EXERCISE in _tags(cell) and cell.cell_type == "markdown":
            heading = cell.source.strip().splitlines()[0].lstrip("#").strip()
            minutes = _MINUTES.search(heading)
            lesson.exercises.append(Exercise(heading, int(minutes[1]) if minutes else None, index,
                                             cell.get("id", "")))
    return lesson


def find_recipes(nb: nbformat.NotebookNode, name: str) -> list[Recipe]:
    """The recipe cells of ``nb``: code cells tagged ``recipe`` whose first line is ``# Recipe: ...``.

    Raises:
        ValueError: a cell is tagged ``recipe`` but does not start with ``# Recipe:`` (the
            description is what the recipes index shows, so it cannot be left out).
    """
    recipes = []
    for index, cell in enumerate(nb.cells):
        if TAG_RECIPE not in _tags(cell):
            continue
        first_line = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
        match = _RECIPE.match(first_line)
        if cell.cell_type != "code" or not match:
            raise ValueError(f"{name}, cell {index}: a cell tagged 'recipe' must be code whose first "
                             f"line is '# Recipe: <one-line description>', got {first_line!r}")
        recipes.append(Recipe(name, match["text"].strip(), index, cell.get("id", ""), cell.source))
    return recipes


def check_exercise(name: str, answer: Any, check: Callable[[Any], bool]) -> bool | None:
    """Check a learner's answer; skip (return None) while it is still ``None`` (unsolved).

    Args:
        name: the exercise, for the message.
        answer: what the learner computed; ``None`` means "not attempted yet".
        check: returns True when ``answer`` is right (compare with a reference, not a copy of
            the solution).

    Returns:
        None when skipped, else the verdict. A wrong answer prints why but does not raise, so a
        class running the notebook top to bottom is not stopped by one exercise.

    >>> check_exercise("demo", None, lambda a: a == 4)
    demo: not attempted yet (the answer is None), check skipped
    >>> check_exercise("demo", 4, lambda a: a == 4)
    demo: correct
    True
    """
    if answer is None:
        print(f"{name}: not attempted yet (the answer is None), check skipped")
        return None
    try:
        verdict = bool(check(answer))
    except Exception as err:  # a malformed answer (wrong shape, type) is a wrong answer
        print(f"{name}: the check failed on this answer: {type(err).__name__}: {err}")
        return False
    print(f"{name}: {'correct' if verdict else 'not yet right, try again'}")
    return verdict


def strip_solution(source: str, where: str = "") -> str:
    """``source`` with each ``# BEGIN SOLUTION`` ... ``# END SOLUTION`` block replaced by a stub comment.

    Raises:
        ValueError: no solution block, or one that is not closed.
    """
    out: list[str] = []
    inside = False
    blocks = 0
    for line in source.splitlines():
        if line.strip() == BEGIN_SOLUTION:
            inside, blocks = True, blocks + 1
            out.append(line[: len(line) - len(line.lstrip())] + STUDENT_STUB)
        elif line.strip() == END_SOLUTION:
            if not inside:
                raise ValueError(f"{where}: '{END_SOLUTION}' without '{BEGIN_SOLUTION}'")
            inside = False
        elif not inside:
            out.append(line)
    if inside or not blocks:
        problem = "is not closed" if inside else f"has no '{BEGIN_SOLUTION}' ... '{END_SOLUTION}' block"
        raise ValueError(f"{where}: the solution cell {problem}")
    return "\n".join(out)


def make_student_notebook(nb: nbformat.NotebookNode, name: str = "") -> nbformat.NotebookNode:
    """A copy of ``nb`` without solutions: solution blocks stubbed, markdown solutions dropped,
    outputs and execution counts cleared. The input notebook is not changed."""
    student = copy.deepcopy(nb)
    kept = []
    for index, cell in enumerate(student.cells):
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        if TAG_SOLUTION in _tags(cell):
            if cell.cell_type != "code":
                continue
            cell.source = strip_solution(cell.source, where=f"{name}, cell {index}")
        kept.append(cell)
    student.cells = kept
    student.metadata.setdefault("cvcookbook", {})["student_copy"] = True
    return student


def write_student_copies(notebooks_dir: Path, out_dir: Path, selectors: list[str] | None = None) -> list[Path]:
    """Write a student copy of every notebook in ``notebooks_dir`` (or those named by ``selectors``)
    into ``out_dir``. A notebook without exercises is copied with outputs cleared."""
    from cvhelpers.course.runner import find_notebooks

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in find_notebooks(notebooks_dir, selectors or []):
        student = make_student_notebook(nbformat.read(path, as_version=4), path.stem)
        target = out_dir / path.name
        nbformat.write(student, target)
        written.append(target)
    return written


def teaching_minutes(run_seconds: float, code_cells: int) -> int:
    """Minutes to teach a notebook: its measured run time plus an explaining allowance per code
    cell (:data:`EXPLAIN_MINUTES_PER_CODE_CELL`), rounded up to 5 minutes."""
    minutes = run_seconds / 60 + EXPLAIN_MINUTES_PER_CODE_CELL * code_cells
    return int(5 * math.ceil(minutes / 5))


@dataclass
class Slot:
    """One line of a teaching plan."""

    start_minute: int
    minutes: int
    what: str


def plan_day(lessons: list[tuple[str, int]], day_minutes: int, break_every: int = 90,
             break_minutes: int = 15) -> tuple[list[Slot], list[str]]:
    """Fit lessons ``[(name, minutes)]`` into ``day_minutes``, in order, with a break after about
    every ``break_every`` minutes of teaching. Returns (slots, names of lessons that did not fit)."""
    slots: list[Slot] = []
    clock = since_break = 0
    left_out: list[str] = []
    for name, minutes in lessons:
        if left_out or clock + minutes > day_minutes:
            left_out.append(name)
            continue
        if since_break and since_break + minutes > break_every and clock + break_minutes + minutes <= day_minutes:
            slots.append(Slot(clock, break_minutes, "break"))
            clock, since_break = clock + break_minutes, 0
        slots.append(Slot(clock, minutes, name))
        clock, since_break = clock + minutes, since_break + minutes
    return slots, left_out


def format_clock(start_hour: int, minute: int) -> str:
    """``format_clock(9, 75)`` -> ``"10:15"``."""
    total = start_hour * 60 + minute
    return f"{total // 60:02d}:{total % 60:02d}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Workshop kit: student copies and lesson checks.")
    sub = parser.add_subparsers(dest="command", required=True)
    student = sub.add_parser("student", help="write student copies (solutions removed)")
    student.add_argument("notebooks_dir", type=Path)
    student.add_argument("out_dir", type=Path)
    student.add_argument("selectors", nargs="*", help="numbers or name prefixes (default: all)")
    lint = sub.add_parser("check", help="report notebooks that miss parts of the lesson convention")
    lint.add_argument("notebooks", nargs="+", type=Path)
    args = parser.parse_args(argv)
    if args.command == "student":
        for path in write_student_copies(args.notebooks_dir, args.out_dir, args.selectors):
            print("wrote", path)
        return 0
    problems = []
    for path in args.notebooks:
        nb = nbformat.read(path, as_version=4)
        problems += read_lesson(nb, path.stem).problems()
        find_recipes(nb, path.stem)  # raises on a malformed recipe cell
    print("\n".join(problems) or "all notebooks follow the lesson convention")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
