"""The workshop kit: lesson structure of the course notebooks, student copies, exercise checks, plans."""

import ast
import re
import json
from pathlib import Path

import nbformat
import pytest

from cvhelpers.course.results import NOTEBOOK_GLOB
from cvhelpers.course.workshop import BEGIN_SOLUTION
from cvhelpers.course.workshop import (STUDENT_STUB, check_exercise, find_recipes, make_student_notebook, plan_day, read_lesson, strip_solution, teaching_minutes, write_student_copies)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
ADOPTED = sorted(p.stem for p in NOTEBOOKS.glob(NOTEBOOK_GLOB))  # every lesson follows the convention
SMOKE_RECORD = NOTEBOOKS.parent / "docs" / "results" / "smoke.json"


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


@pytest.mark.parametrize("name", ADOPTED)
def test_course_notebooks_follow_the_lesson_convention(name):
    nb = _read(name)
    lesson = read_lesson(nb, name)
    assert lesson.problems() == []
    assert len(lesson.questions) >= 2 and len(lesson.objectives) >= 2 and len(lesson.keypoints) >= 2
    assert len(lesson.exercises) >= 2, f"{name}: a workshop lesson needs at least two exercises"
    assert lesson.exercise_minutes == sum(e.minutes for e in lesson.exercises) > 0
    for exercise in lesson.exercises:
        # the exercise's own cells, up to the next markdown cell that is not a solution
        cells = []
        for cell in nb.cells[exercise.cell_index + 1:]:
            if cell.cell_type == "markdown" and "solution" not in cell.metadata.get("tags", []):
                break
            cells.append(cell)
        solutions = [c for c in cells if c.cell_type == "code" and "solution" in c.metadata.get("tags", [])]
        assert solutions and all(BEGIN_SOLUTION in c.source for c in solutions), (
            f"{name}: {exercise.title!r} has no solution cell with a {BEGIN_SOLUTION} block")
        # the verdict is recorded (lesson.check_exercise), so a run with solutions shows it passing
        assert any("lesson.check_exercise(" in c.source for c in cells if c.cell_type == "code"), (
            f"{name}: {exercise.title!r} has no check cell calling lesson.check_exercise")
    recipes = find_recipes(nb, name)
    assert recipes, f"{name}: no cell tagged recipe"
    for recipe in recipes:  # the description is the cell's first line, the link target its id
        assert recipe.source.startswith("# Recipe: " + recipe.description)
        assert recipe.cell_id == nb.cells[recipe.cell_index].id


def test_the_smoke_record_shows_two_exercises_passing_in_every_lesson():
    """The recorded smoke run (docs/results/smoke.json, ``make record``) executed every lesson
    with its solutions: each recorded at least two exercise verdicts, all of them right."""
    record = json.loads(SMOKE_RECORD.read_text())
    by_notebook = {entry["notebook"]: entry for entry in record["notebooks"]}
    for name in ADOPTED:
        assert name in by_notebook, f"{name}: no smoke run recorded; run `make notebooks record`"
        verdicts = [m for m in by_notebook[name]["metrics"] if m["name"].startswith("exercise_")]
        assert len(verdicts) >= 2, f"{name}: the smoke record holds {len(verdicts)} exercise verdicts"
        assert all(m["passed"] for m in verdicts), f"{name}: {[m['name'] for m in verdicts if not m['passed']]}"


def _tiny_notebook() -> nbformat.NotebookNode:
    v4 = nbformat.v4
    nb = v4.new_notebook(cells=[
        v4.new_markdown_cell("# 99 · Demo\n\n**Questions**\n- Why?\n- How\n  exactly?\n\n"
                             "**What you will learn**\n- a thing\n\n**Time**: 5 s\n\n**Prerequisites**: none."),
        v4.new_code_cell("# Recipe: add two numbers\nx = 1 + 1", metadata={"tags": ["recipe"]}),
        v4.new_markdown_cell("### Exercise: square it (5 min)\nCompute `y`.", metadata={"tags": ["exercise"]}),
        v4.new_code_cell(f"y = None  # your answer\n{BEGIN_SOLUTION}\ny = x ** 2\n# END SOLUTION",
                         metadata={"tags": ["solution"]}),
        v4.new_markdown_cell("Because 2 * 2 = 4.", metadata={"tags": ["solution"]}),
        v4.new_code_cell("from cvhelpers.course.workshop import check_exercise\nok = check_exercise('square', y, lambda a: a == 4)"),
        v4.new_markdown_cell("## Key points\n- one\n- two"),
    ])
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text="old output")]
    return nb


def test_read_lesson_parses_the_cells():
    lesson = read_lesson(_tiny_notebook(), "99_demo")
    assert lesson.title == "99 · Demo"
    assert lesson.questions == ["Why?", "How exactly?"]
    assert lesson.objectives == ["a thing"] and lesson.prerequisites == ["none."]
    assert lesson.keypoints == ["one", "two"]
    assert [(e.title, e.minutes) for e in lesson.exercises] == [("Exercise: square it (5 min)", 5)]
    assert lesson.code_cells == 3 and lesson.problems() == []


def test_a_recipe_without_its_description_line_is_an_error():
    nb = _tiny_notebook()
    nb.cells[1].source = "x = 1 + 1"
    with pytest.raises(ValueError, match="# Recipe:"):
        find_recipes(nb, "99_demo")


def test_student_copy_removes_solutions_and_still_runs():
    nb = _tiny_notebook()
    student = make_student_notebook(nb, "99_demo")
    sources = [c.source for c in student.cells]
    assert not any("x ** 2" in s or "Because" in s for s in sources)  # no solution text left
    assert any(STUDENT_STUB in s for s in sources)
    assert all(c.outputs == [] for c in student.cells if c.cell_type == "code")
    assert "x ** 2" in nb.cells[3].source  # the original is untouched
    # Run the student copy's code top to bottom: the check is skipped, nothing raises.
    namespace: dict = {}
    for cell in student.cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, "<cell>", "exec"), namespace)
    assert namespace["y"] is None and namespace["ok"] is None
    # ... and the instructor's copy proves its solution right.
    namespace = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, "<cell>", "exec"), namespace)
    assert namespace["ok"] is True


def test_strip_solution_needs_a_closed_block():
    assert strip_solution(f"def f():\n    {BEGIN_SOLUTION}\n    return 1\n    # END SOLUTION\n    return None") \
        == f"def f():\n    {STUDENT_STUB}\n    return None"
    with pytest.raises(ValueError, match="no '# BEGIN SOLUTION'"):
        strip_solution("y = 1")
    with pytest.raises(ValueError, match="not closed"):
        strip_solution(f"{BEGIN_SOLUTION}\ny = 1")


def test_student_copies_of_the_course_parse_and_hold_no_solution(tmp_path):
    written = write_student_copies(NOTEBOOKS, tmp_path, ADOPTED)
    assert [p.stem for p in written] == ADOPTED
    for path in written:
        original = _read(path.stem)
        solutions = [c for c in original.cells if "solution" in c.metadata.get("tags", [])]
        student = nbformat.read(path, as_version=4)
        text = "\n".join(c.source for c in student.cells)
        for solution in solutions:
            if solution.cell_type == "markdown":  # an explanation: dropped whole
                assert solution.source not in text
                continue
            stub, rest = solution.source.split(BEGIN_SOLUTION, 1)
            block, after = rest.split("# END SOLUTION", 1)
            assert block.strip() and block.strip() not in text
            # The student's answer is None until written: code after the block must not use it.
            placeholders = re.findall(r"^(\w+) = None\b", stub, flags=re.M)
            used = [name for name in placeholders if re.search(rf"\b{name}\b", after)]
            assert not used, f"{path.stem}: code after '# END SOLUTION' uses {used}, None in the student copy"
        for cell in student.cells:
            if cell.cell_type == "code":
                ast.parse(cell.source)
        assert student.metadata["cvcookbook"]["student_copy"] is True


def test_check_exercise_verdicts(capsys):
    assert check_exercise("e", None, lambda a: True) is None
    assert check_exercise("e", 3, lambda a: a == 3) is True
    assert check_exercise("e", 2, lambda a: a == 3) is False
    assert check_exercise("e", "x", lambda a: a + 1) is False  # a TypeError is a wrong answer
    assert "check skipped" in capsys.readouterr().out


def test_teaching_minutes_and_plans():
    assert teaching_minutes(run_seconds=300, code_cells=10) == 25  # 5 + 20 min
    assert teaching_minutes(run_seconds=1, code_cells=1) == 5
    slots, left_out = plan_day([("a", 60), ("b", 60), ("c", 60), ("d", 200)], day_minutes=210)
    assert [(s.start_minute, s.minutes, s.what) for s in slots] == [
        (0, 60, "a"), (60, 15, "break"), (75, 60, "b"), (135, 15, "break"), (150, 60, "c")]
    assert left_out == ["d"]
