"""``make lab``: JupyterLab on the course's notebooks, on any machine the course runs on.

As root (a container, a cloud box) JupyterLab refuses to start ("Running as root is not
recommended. Use --allow-root"); without a display it cannot open a browser. This entry point
adds the flags those machines need and nothing else, so ``make lab`` works on a laptop, in a
container and over SSH. Every other argument goes to ``jupyter lab`` unchanged.

    python -m cvhelpers.course.lab                   # what make lab runs, from notebooks/
    python -m cvhelpers.course.lab --port 8899       # any jupyter lab option
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["lab_command", "main"]


def lab_command(extra: Sequence[str] = (), *, is_root: bool | None = None,
                has_display: bool | None = None) -> list[str]:
    """The ``jupyter lab`` command line for this machine.

    Args:
        extra: more ``jupyter lab`` arguments, passed through.
        is_root: running as uid 0 (default: ask the OS; ``False`` where there are no uids).
        has_display: a browser can be opened (default: Linux needs ``$DISPLAY`` or
            ``$WAYLAND_DISPLAY``; macOS and Windows always can).
    """
    if is_root is None:
        is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if has_display is None:
        has_display = not sys.platform.startswith("linux") or bool(
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    command = [sys.executable, "-m", "jupyter", "lab"]
    if is_root and "--allow-root" not in extra:
        command.append("--allow-root")
    if not has_display and "--no-browser" not in extra:
        command.append("--no-browser")
    return command + list(extra)


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - replaces the process
    command = lab_command(sys.argv[1:] if argv is None else argv)
    print("starting:", " ".join(command[1:]), flush=True)
    os.execv(command[0], command)


if __name__ == "__main__":  # pragma: no cover
    main()
