"""The house's rules, checked on the code: imports point down the layers, never in a circle, and
the course machinery stays apart from the ML library. docs/DESIGN.md draws the same layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cvhelpers"

#: Each top-level part of cvhelpers and its layer: a module may import its own part and parts of
#: lower layers only. Task folders share a layer and do not import each other.
LAYERS = {
    "env": 0, "files": 0,
    "data": 1, "viz": 1,
    "augment": 2, "models": 2,
    "train": 3,
    "evaluation": 4,
    "deploy": 5,
    "classification": 6, "detection": 6, "segmentation": 6,
    "recipes": 7,  # one recipe per task, on top of the task folders (notebook 12)
}
#: The course machinery: what it may import from cvhelpers; nothing in the library imports it.
COURSE_MAY_IMPORT = {"env", "files", "course"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def cvhelpers_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import of a cvhelpers module, at the top or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "cvhelpers":
                found += [(node.lineno, f"cvhelpers.{a.name}") for a in node.names]
            elif node.module.startswith("cvhelpers."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("cvhelpers.")]
    return found


def part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_part_of_the_package_has_a_layer():
    parts = {part(m) for m in MODULES if part(m)}
    assert parts <= set(LAYERS) | {"course"}, f"give these a layer: {parts - set(LAYERS) - {'course'}}"


def layer_problems(module: str, imports: list[tuple[int, str]], where_name: str) -> list[str]:
    """The layer rules, for ``module``'s ``(line, imported module)`` pairs."""
    source_part = part(module)
    problems = []
    for line, target in imports:
        target_part = part(target)
        where = f"{where_name}:{line} imports {target}"
        if source_part == "course":
            if target_part not in COURSE_MAY_IMPORT:
                problems.append(f"{where}: the course machinery imports only env and files")
        elif target_part == "course":
            problems.append(f"{where}: the library must not import the course machinery")
        elif target_part != source_part and LAYERS[target_part] >= LAYERS[source_part]:
            problems.append(f"{where}: {target_part} (layer {LAYERS[target_part]}) is not below "
                            f"{source_part} (layer {LAYERS[source_part]})")
    return problems


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_the_layers(module):
    problems = layer_problems(module, cvhelpers_imports(MODULES[module]),
                              str(MODULES[module].relative_to(PACKAGE.parent)))
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    graph = {m: {t for _, t in cvhelpers_imports(p) if t in MODULES and t != m}
             for m, p in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_checker_catches_an_upward_import(tmp_path):
    """The rules above are not vacuous: an upward import in a data module is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from cvhelpers.train.engine import fit\n")
    assert cvhelpers_imports(bad) == [(2, "cvhelpers.train.engine")]
    assert LAYERS[part("cvhelpers.train.engine")] > LAYERS["data"]
    found = layer_problems("cvhelpers.data.bad", cvhelpers_imports(bad), "bad.py")
    assert len(found) == 1 and "is not below data" in found[0]
    assert layer_problems("cvhelpers.train.bad", [(1, "cvhelpers.data.scenes")], "ok.py") == []  # downward: fine
    assert "must not import the course" in layer_problems("cvhelpers.data.x", [(1, "cvhelpers.course.runner")], "x")[0]
