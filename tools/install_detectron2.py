"""Install Detectron2 v0.6 from PyPI's ``pb1-detectron2`` sdist into the running venv (issue 17).

No registry has a Detectron2 with its compiled ops. PyPI's ``pb1-detectron2==0.6`` sdist holds
upstream Detectron2 v0.6's Python sources and configs without the C++ ones, and as shipped it does
not install (its ``setup.py`` builds the missing C++ and packages the model-zoo configs from a
folder the sdist does not have). This script:

1. downloads the sdist (``pip download``, no dependencies) and checks its sha256 against the pin
   in ``constraints-detectron2.txt``;
2. unpacks it, makes ``setup.py`` build no extension and moves ``detectron2/model_zoo/configs``
   to the top-level ``configs/`` its ``setup.py`` packages;
3. installs that folder with ``--no-deps`` (its metadata pins ``black==21.4b2``, a formatter it
   does not need at run time), then its runtime dependencies at the pins of
   ``constraints-detectron2.txt``, constrained by ``constraints.txt`` so no course pin moves.

Nothing of Detectron2's source is kept in this repository. The fixes that let v0.6 run on today's
Python, numpy and Pillow are in :mod:`cvhelpers.detection.d2compat`, applied at import time.

    python tools/install_detectron2.py            # what `make detectron2` runs
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "constraints-detectron2.txt"
SDIST = "pb1-detectron2"


def read_pins(path: Path = PINS) -> tuple[str, str, list[str]]:
    """(sdist version, its sha256, the runtime dependency pins) from ``constraints-detectron2.txt``."""
    version = sha256 = ""
    deps: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(f"{SDIST}=="):
            spec, _, digest = line.partition("--hash=sha256:")
            version, sha256 = spec.strip().split("==", 1)[1], digest.strip()
        else:
            deps.append(line)
    if not version or len(sha256) != 64:
        raise SystemExit(f"{path}: no '{SDIST}==VERSION --hash=sha256:HEX' line")
    return version, sha256, deps


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def prepare_source(sdist: Path, workdir: Path) -> Path:
    """Unpack the sdist and make it installable as pure Python; returns the source folder."""
    with tarfile.open(sdist) as archive:
        archive.extractall(workdir, filter="data")
    (source,) = [p for p in workdir.iterdir() if p.is_dir()]
    setup_py = source / "setup.py"
    text = setup_py.read_text()
    if text.count("ext_modules=get_extensions(),") != 1:
        raise SystemExit(f"{setup_py}: 'ext_modules=get_extensions(),' not found once; is this v0.6?")
    setup_py.write_text(text.replace("ext_modules=get_extensions(),", "ext_modules=[],"))
    configs = source / "detectron2" / "model_zoo" / "configs"
    if not (source / "configs").exists():
        if not configs.is_dir():
            raise SystemExit(f"{configs}: the model-zoo configs are missing from the sdist")
        shutil.move(str(configs), str(source / "configs"))
    return source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="keep the prepared source in this folder")
    args = parser.parse_args(argv)
    version, sha256, deps = read_pins()
    with tempfile.TemporaryDirectory(prefix="cvc-detectron2-") as tmp:
        work = Path(tmp)
        pip("download", "-q", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
            f"{SDIST}=={version}", "-d", str(work / "sdist"))
        (sdist,) = (work / "sdist").glob("*.tar.gz")
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != sha256:
            raise SystemExit(f"{sdist.name}: sha256 {digest}, expected {sha256} (constraints-detectron2.txt)")
        source = prepare_source(sdist, work / "src")
        if args.keep:
            shutil.copytree(source, args.keep, dirs_exist_ok=True)
        pip("install", "-q", "--no-deps", "--no-build-isolation", str(source))
    pip("install", "-q", *deps, "-c", str(ROOT / "constraints.txt"))
    # Where pip put it, found without importing it (v0.6's model_zoo imports pkg_resources).
    located = subprocess.run([sys.executable, "-c", "import importlib.util as u; "
                              "print(u.find_spec('detectron2').submodule_search_locations[0])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    configs = Path(located) / "model_zoo" / "configs"
    count = sum(1 for _ in configs.rglob("*.yaml"))
    if count == 0:
        raise SystemExit(f"{configs}: no model-zoo configs were installed")
    print(f"Detectron2 {version} installed from {SDIST} (sha256 {sha256[:12]}...), {count} model-zoo configs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
