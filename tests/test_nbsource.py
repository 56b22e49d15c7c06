"""tools/nbsource.py: a notebook exported to text and built back is the same notebook."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("nbsource", ROOT / "tools" / "nbsource.py")
nbsource = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nbsource)


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb")))
def test_export_then_build_gives_back_the_notebook(name, tmp_path):
    copy = tmp_path / "notebooks"
    copy.mkdir()
    shutil.copy(ROOT / "notebooks" / f"{name}.ipynb", copy)
    source = nbsource.export(name, tmp_path / "src", copy)
    assert source.read_text().startswith("# %% [markdown]")
    nbsource.build(name, tmp_path / "src", copy)
    original = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    rebuilt = json.loads((copy / f"{name}.ipynb").read_text())
    assert rebuilt["cells"] == original["cells"]
    assert rebuilt["metadata"]["cvcookbook"] == original["metadata"]["cvcookbook"]
