"""The lesson helper, and the notebook conventions it stands for: a set-up of one line after the
parameters cell, one way to give profile values, checks in check cells only, and recipe cells
that run in a user's project (every name they use is imported, defined, or listed in Needs)."""

from __future__ import annotations

import builtins
import json
import re
import symtable
from pathlib import Path

import pytest

from cvhelpers.course.lesson import profile_value, start_lesson
from cvhelpers.course.results import NOTEBOOK_GLOB

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob(NOTEBOOK_GLOB))


def test_start_lesson_resolves_profile_values_and_sets_up(tmp_path, monkeypatch):
    monkeypatch.setenv("CVC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CVC_PROFILE", raising=False)
    params = {"PROFILE": "smoke", "OUTPUT_DIR": str(tmp_path / "out"), "SEED": 3,
              "RESULTS_FILE": str(tmp_path / "results.json"), "DEVICE": "cpu",
              "EPOCHS": {"smoke": 1, "full": 12}, "LR": 0.1, "lowercase": {"smoke": 1, "full": 2}}
    lesson = start_lesson("99_demo", params)
    assert params["EPOCHS"] == 1 and params["LR"] == 0.1
    assert params["lowercase"] == {"smoke": 1, "full": 2}  # only the parameters' UPPER_CASE names
    assert lesson.smoke and lesson.device.type == "cpu" and lesson.out.is_dir() and lesson.seed == 3
    lesson.record("answer", 42, target=">= 50", smoke_target=">= 40")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["notebook"] == "99_demo" and saved["profile"] == "smoke"
    assert any(m["name"] == "answer" and m["passed"] for m in saved["metrics"])
    import torch
    first = torch.rand(3)
    start_lesson("99_demo", dict(params, PROFILE="smoke", EPOCHS={"smoke": 1, "full": 12}))
    assert torch.equal(first, torch.rand(3))  # seeded the same both times


def test_check_exercise_records_right_and_wrong_answers_and_skips_unattempted(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CVC_CACHE_DIR", str(tmp_path / "cache"))
    results = tmp_path / "results.json"
    lesson = start_lesson("99_demo", {"PROFILE": "smoke", "OUTPUT_DIR": str(tmp_path / "out"),
                                      "RESULTS_FILE": str(results), "DEVICE": "cpu"})
    assert lesson.check_exercise("Square it!", 4, lambda a: a == 2 ** 2) is True
    assert lesson.check_exercise("cube it", 9, lambda a: a == 2 ** 3) is False  # wrong: no exception
    assert lesson.check_exercise("not tried", None, lambda a: True) is None
    assert lesson.check_exercise("bad shape", [1], lambda a: a[3] == 0) is False  # a broken answer is wrong
    metrics = {m["name"]: m for m in json.loads(results.read_text())["metrics"]}
    assert metrics["exercise_square_it"]["passed"] is True and metrics["exercise_square_it"]["target"] == ">= 1"
    assert metrics["exercise_cube_it"]["passed"] is False and metrics["exercise_bad_shape"]["passed"] is False
    assert "exercise_not_tried" not in metrics  # a student copy records nothing, so it cannot fail
    assert "not attempted yet" in capsys.readouterr().out


def test_profile_comes_from_the_environment_and_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("CVC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CVC_PROFILE", "smoke")
    params = {"PROFILE": None, "OUTPUT_DIR": str(tmp_path), "N": {"smoke": 2, "full": 9}}
    assert start_lesson("99_demo", params).profile == "smoke" and params["N"] == 2
    monkeypatch.delenv("CVC_PROFILE")
    assert start_lesson("99_demo", {"OUTPUT_DIR": str(tmp_path)}).profile == "full"
    with pytest.raises(ValueError, match="PROFILE must be one of"):
        start_lesson("99_demo", {"PROFILE": "quick", "OUTPUT_DIR": str(tmp_path)})
    assert profile_value({"smoke": 1}, "smoke") == {"smoke": 1}  # not a profile dict


# ------------------------------------------------------------------------------ notebooks
def cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def tags(cell: dict) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def code_cells(path: Path) -> list[dict]:
    return [c for c in cells(path) if c["cell_type"] == "code"]


def free_names(code: str) -> set[str]:
    """Names a cell reads that it neither defines nor imports (builtins excluded)."""
    top = symtable.symtable(code, "<cell>", "exec")
    bound = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    used: set[str] = set()

    def walk(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            if table is top:
                if symbol.is_referenced() and not (symbol.is_assigned() or symbol.is_imported()):
                    used.add(symbol.get_name())
            elif symbol.is_referenced() and symbol.is_global():
                used.add(symbol.get_name())
        for child in table.get_children():
            walk(child)

    walk(top)
    return used - bound - set(dir(builtins))


def test_free_names_finds_what_comes_from_nowhere():
    code = "import numpy as np\nx = np.zeros(3)\ndef f(a):\n    return a + y + x\nprint(f(root), len(x))"
    assert free_names(code) == {"y", "root"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_setup_is_the_parameters_cell_plus_one_line(path):
    code = code_cells(path)
    assert "parameters" in tags(code[0]), "the first code cell is the parameters cell"
    params = source(code[0])
    assert not re.search(r"^\s*(import|from) ", params, re.M), "no imports in the parameters cell"
    assert "[PROFILE]" not in params and not re.search(r"\bor \(", params)
    assert re.search(r'^DEVICE = "auto"', params, re.M), 'DEVICE = "auto" (CUDA, MPS, CPU)'
    lines = [re.sub(r"\s+#.*$", "", line) for line in source(code[1]).splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines == ["from cvhelpers.course.lesson import start_lesson",
                     f'lesson = start_lesson("{path.stem}", globals())'], "\n".join(lines)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_way_to_pick_profile_values(path):
    for cell in code_cells(path):
        text = source(cell)
        assert not re.search(r"\b(\w+) = \1 or \(", text), f"`X = X or (...)` in:\n{text}"
        assert "[PROFILE]" not in text and "SMOKE" not in text
        assert not re.search(r"^smoke = ", text, re.M)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_metrics_are_recorded_in_check_cells_only(path):
    recorded = 0
    for cell in code_cells(path):
        text = source(cell)
        records = re.search(r"\.record(_model)?\(|\brec\.", text)
        if "check" in tags(cell):
            assert text.lstrip().startswith("# Check:"), f"a check cell says what it checks:\n{text}"
            recorded += bool(records)
        else:
            assert not records, f"a metric recorded outside a check cell:\n{text}"
    assert recorded >= 1 or path.stem.startswith("00"), "the notebook records what it claims"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_recipe_cells_need_nothing_they_do_not_name(path):
    recipes = [c for c in code_cells(path) if source(c).lstrip().startswith("# Recipe")]
    for cell in recipes:
        text = source(cell)
        assert "recipe" in tags(cell), f"tag the recipe cell 'recipe':\n{text[:80]}"
        assert "lesson." not in text and "check_exercise" not in text
        needs = re.search(r"^# Needs: (.*)$", text, re.M)
        listed = set(re.findall(r"(\w+) \(", needs.group(1))) if needs else set()
        missing = free_names(text) - listed
        assert not missing, (f"{path.stem}: the recipe '{text.splitlines()[0]}' uses "
                             f"{sorted(missing)} from earlier cells: import them, or list them "
                             f"as '# Needs: name (what it is)'")


def test_project_root_is_found_from_a_student_copy_folder(tmp_path):
    from cvhelpers.course.lesson import project_root

    repo = tmp_path / "course"
    (repo / "cvhelpers").mkdir(parents=True)
    (repo / "pyproject.toml").write_text("")
    student = repo / "build" / "smoke-student" / "src"
    student.mkdir(parents=True)
    assert project_root(student) == repo and project_root(repo) == repo
    # outside any checkout: the folder above the imported package, which holds the scripts
    assert (project_root(tmp_path) / "scripts" / "ddp_train.py").is_file()
