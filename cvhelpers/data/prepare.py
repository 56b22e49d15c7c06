"""Get or make the course's default data: ``python -m cvhelpers.data.prepare --root datasets``.

- Fashion-MNIST copied (gunzipped) from the system package into ``<root>/FashionMNIST/raw``,
  or downloaded with torchvision when ``--allow-download`` is given;
- the scenes dataset for detection and segmentation generated into ``<root>/scenes``
  (deterministic: the same seed writes the same bytes; skipped when already complete);
- the real-objects benchmark (Fashion-MNIST's product photos cut out and composited on real
  photos, :mod:`cvhelpers.data.objects`) into ``<root>/objects``, likewise.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cvhelpers.data.fashion_mnist import prepare_fashion_mnist
from cvhelpers.data.objects import make_objects_dataset
from cvhelpers.data.scenes import make_scenes_dataset


def prepare(root: str | Path, allow_download: bool = False, seed: int = 0) -> dict[str, str]:
    """Make every default dataset under ``root``; return {dataset name: folder}."""
    root = Path(root)
    start = time.perf_counter()
    fashion = prepare_fashion_mnist(root, allow_download=allow_download)
    scenes = make_scenes_dataset(root / "scenes", seed=seed)
    objects = make_objects_dataset(root / "objects", fashion_root=root, seed=seed)
    print(f"data ready in {time.perf_counter() - start:.1f} s: Fashion-MNIST in {fashion}, scenes in {scenes}, "
          f"real objects in {objects}")
    return {"fashion_mnist": str(fashion), "scenes": str(scenes), "objects": str(objects)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="datasets")
    parser.add_argument("--allow-download", action="store_true",
                        help="use torchvision's downloader when Fashion-MNIST is not on this machine")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    prepare(args.root, allow_download=args.allow_download, seed=args.seed)


if __name__ == "__main__":
    main()
