"""Edit notebooks as plain text: percent-format sources <-> notebooks/NN_name.ipynb.

    python tools/nbsource.py export 06_semantic_segmentation   # notebooks/06...ipynb -> nbsrc/06...py
    python tools/nbsource.py build 06_semantic_segmentation    # nbsrc/06...py -> notebooks/06...ipynb

The ``.ipynb`` in ``notebooks/`` stays the one source of truth (git tracks it, outputs stripped);
``nbsrc/`` (git-ignored) is a scratch copy for editing in any text editor. ``build`` keeps the
notebook's run-time budgets (``metadata.cvcookbook.budget_s``, read by the runner) and gives
cells stable ids. Cell tags travel in the ``# %% tags=[...]`` header; markdown lines start with
``# ``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def export(name: str, src_dir: Path, notebooks_dir: Path = ROOT / "notebooks") -> Path:
    """Write ``src_dir/name.py`` from ``notebooks_dir/name.ipynb``."""
    nb = nbformat.read(notebooks_dir / f"{name}.ipynb", as_version=4)
    chunks = []
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        header = " tags=[" + ", ".join(f'"{t}"' for t in tags) + "]" if tags else ""
        if cell.cell_type == "markdown":
            body = "\n".join(f"# {line}" if line else "#" for line in cell.source.splitlines())
            chunks.append(f"# %% [markdown]{header}\n{body}")
        else:
            chunks.append(f"# %%{header}\n{cell.source}")
    src_dir.mkdir(parents=True, exist_ok=True)
    path = src_dir / f"{name}.py"
    path.write_text("\n\n".join(chunks) + "\n")
    return path


def build(name: str, src_dir: Path, notebooks_dir: Path = ROOT / "notebooks") -> Path:
    """Write ``notebooks_dir/name.ipynb`` from ``src_dir/name.py``, keeping its budgets."""
    target = notebooks_dir / f"{name}.ipynb"
    budget = {"smoke": 60}
    if target.exists():
        old = nbformat.read(target, as_version=4)
        budget = old.metadata.get("cvcookbook", {}).get("budget_s", budget)
    cells = []
    for chunk in re.split(r"^# %%", (src_dir / f"{name}.py").read_text(), flags=re.M)[1:]:
        header, _, body = chunk.partition("\n")
        body = body.strip("\n")
        found = re.findall(r"tags=\[(.*?)\]", header)
        tags = [t.strip().strip('"') for t in found[0].split(",")] if found else []
        metadata = {"tags": tags} if tags else {}
        if "[markdown]" in header:
            lines = [line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines()]
            cells.append(nbformat.v4.new_markdown_cell("\n".join(lines), metadata=metadata))
        else:
            cells.append(nbformat.v4.new_code_cell(body, metadata=metadata))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["cvcookbook"] = {"budget_s": budget}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i:02d}"
    nbformat.validate(nb)
    nbformat.write(nb, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["export", "build"])
    parser.add_argument("names", nargs="+", help="notebook names without .ipynb")
    parser.add_argument("--src", type=Path, default=ROOT / "nbsrc")
    args = parser.parse_args()
    for name in args.names:
        print((export if args.command == "export" else build)(name, args.src))


if __name__ == "__main__":
    main()
