"""Writing files so that a crash mid-write never leaves a half-written one.

:func:`atomic_write` is the one way the course writes results, checkpoints and other files that
a killed process must not corrupt: write to a hidden temporary file in the same folder, flush it
to disk, then rename it over the target with ``os.replace``, which happens fully or not at all.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "hello.txt"
>>> with atomic_write(path) as f:
...     _ = f.write(b"hello")
>>> path.read_bytes()
b'hello'
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "write_json_atomic"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Open a binary file for writing that appears at ``path`` only when the block succeeds.

    Missing folders are created. The temporary file gets the mode an ordinary ``open()`` would
    (0644 under the usual umask). On any exception (also ``KeyboardInterrupt``) the temporary
    file is removed and ``path`` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same folder: os.replace is atomic only within one file system. "xb" never overwrites
    # another writer's temporary file.
    tmp_path = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp_path, "xb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)  # makes the rename itself survive a power cut


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON with :func:`atomic_write` (NaN allowed)."""
    text = json.dumps(data, indent=2, allow_nan=True)  # fails before the file is touched
    with atomic_write(path) as f:
        f.write(text.encode())


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":  # Windows cannot open a folder for fsync
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
