"""Run Detectron2 v0.6, installed without its compiled ops, on today's Python, numpy and Pillow.

The course installs Detectron2 v0.6 (its latest release) from PyPI's ``pb1-detectron2`` sdist
(``tools/install_detectron2.py``). That package holds upstream's Python files unchanged but none
of its C++ ops, and v0.6 predates Python 3.11, numpy 2, Pillow 10 and setuptools 81. Call
:func:`import_detectron2` before the first ``import detectron2...``; it applies the fixes below and
returns the names of those it applied. Each fix is guarded: it acts only when the thing it
replaces is missing or broken, so on a Detectron2 built from its source (with ``_C``) and on later
versions it does nothing.

What needs the compiled ops stays unavailable and fails with :class:`CompiledOpMissing`, a clear
message naming the op: rotated boxes (``nms_rotated``, ``box_iou_rotated``, ``ROIAlignRotated``,
RRPN), deformable convolution on a GPU and its backward pass, and ``COCOEvaluator``'s fast C++
evaluation (pass ``use_fast_impl=False``: pycocotools gives the official numbers).
``detectron2.export`` imports Caffe2, which PyTorch no longer ships; the course exports with
torch's own tools (notebook 09).

>>> applied = import_detectron2()                              # doctest: +SKIP
>>> from detectron2.config import get_cfg                      # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import types
from collections.abc import Sequence

__all__ = ["CompiledOpMissing", "MISSING_OPS_NOTE", "import_detectron2", "detectron2_available",
           "detectron2_source"]

MISSING_OPS_NOTE = (
    "this Detectron2 has no compiled ops (v0.6 from PyPI's pb1-detectron2, installed as pure "
    "Python by tools/install_detectron2.py): rotated boxes, deformable convolution's backward and "
    "GPU forward, and COCOEvaluator's fast evaluation (use COCOEvaluator(..., use_fast_impl=False)) "
    "need them. Install Detectron2 from its source (a C++ compiler and network) to have them."
)


class CompiledOpMissing(AttributeError):
    """A Detectron2 op that exists only in its compiled ``detectron2._C`` was called."""


class _MissingCompiledOps(types.ModuleType):
    """Stand-in for ``detectron2._C``: importing it works, using any op raises a clear error.

    Prevents ``ImportError: cannot import name '_C' from 'detectron2'``: v0.6 imports ``_C`` at
    module level in ``layers/deform_conv.py``, ``layers/roi_align_rotated.py``,
    ``layers/rotated_boxes.py`` and ``evaluation/fast_eval_api.py``, so without it nothing of
    ``detectron2.modeling`` or ``detectron2.evaluation`` imports.
    """

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        raise CompiledOpMissing(f"detectron2._C.{name}: {MISSING_OPS_NOTE}")


def detectron2_available() -> bool:
    """Whether a Detectron2 is installed (without importing it)."""
    return importlib.util.find_spec("detectron2") is not None


def detectron2_source() -> str:
    """Where the installed Detectron2 came from, for a lesson to print: distribution and version."""
    from importlib import metadata

    for dist in ("detectron2", "pb1-detectron2"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def _fix_compiled_ops() -> bool:
    """``detectron2._C`` missing: register :class:`_MissingCompiledOps` in its place."""
    import detectron2

    if "detectron2._C" in sys.modules or importlib.util.find_spec("detectron2._C") is not None:
        return False
    stand_in = _MissingCompiledOps("detectron2._C", "stand-in for Detectron2's compiled ops (cvhelpers.detection.d2compat)")
    sys.modules["detectron2._C"] = stand_in
    detectron2._C = stand_in  # type: ignore[attr-defined]
    return True


def _fix_rotated_nms_op() -> bool:
    """``torch.ops.detectron2.nms_rotated`` missing: register one that raises a clear error.

    Prevents ``RuntimeError: No such operator detectron2::nms_rotated`` (``layers/nms.py``), a
    message that does not say why.
    """
    import torch

    try:
        torch.ops.detectron2.nms_rotated  # noqa: B018 (the lookup is the check)
        return False
    except (AttributeError, RuntimeError):
        pass

    def nms_rotated(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
        raise CompiledOpMissing(f"torch.ops.detectron2.nms_rotated: {MISSING_OPS_NOTE}")

    library = torch.library.Library("detectron2", "DEF")  # noqa: TOR901 (a stand-in op)
    library.define("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor")
    library.impl("nms_rotated", nms_rotated, "CompositeExplicitAutograd")
    _KEEP_ALIVE.append(library)
    return True


_KEEP_ALIVE: list[object] = []


def _fix_pil_linear() -> bool:
    """Pillow >= 10 removed ``Image.LINEAR`` (it was ``BILINEAR``): add it back.

    Prevents ``AttributeError: module 'PIL.Image' has no attribute 'LINEAR'`` when
    ``detectron2.data.transforms`` is imported (``transform.py`` uses it as a default argument).
    """
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return False
    Image.LINEAR = Image.BILINEAR  # type: ignore[attr-defined]
    return True


_NUMPY_ALIASES = {"int": int, "float": float, "str": str, "object": object, "bool": bool}


def _fix_numpy_aliases() -> list[str]:
    """numpy >= 1.24 removed ``np.int``, ``np.float``, ``np.str``, ``np.object``: add them back.

    Prevents ``AttributeError: module 'numpy' has no attribute 'int'`` in ``data/build.py``'s class
    histogram (where Detectron2 swallows it and prints no histogram), ``SemSegEvaluator`` and the
    VOC loader. The aliases were the Python builtins, which is what they are again here; code that
    would not have failed sees no change.
    """
    import numpy as np

    added = []
    for name, builtin in _NUMPY_ALIASES.items():
        if not hasattr(np, name):
            setattr(np, name, builtin)
            added.append(name)
    return added


class _SampleableSet(set):
    """A set that ``random.sample`` accepts (Python 3.11 requires a sequence)."""

    def __getitem__(self, index: int) -> int:
        return sorted(self)[index]


Sequence.register(_SampleableSet)


def _fix_map_dataset_sample() -> bool:
    """``MapDataset`` samples a retry index from a ``set``, which Python 3.11 refuses.

    Prevents ``TypeError: Population must be a sequence. For dicts or sets, use
    sorted(d).`` from ``data/common.py`` when a mapper returns ``None`` (an image it cannot use):
    training would stop instead of trying another image. Acts only when ``__getitem__`` still
    calls ``sample(self._fallback_candidates, ...)``.
    """
    from detectron2.data import common

    source = inspect.getsource(common.MapDataset.__getitem__)
    if "sample(self._fallback_candidates" not in source or getattr(common.MapDataset, "_cvc_fixed", False):
        return False
    original_init = common.MapDataset.__init__

    def __init__(self: object, *args: object, **kwargs: object) -> None:
        original_init(self, *args, **kwargs)
        self._fallback_candidates = _SampleableSet(self._fallback_candidates)  # type: ignore[attr-defined]

    common.MapDataset.__init__ = __init__  # type: ignore[method-assign]
    common.MapDataset._cvc_fixed = True  # type: ignore[attr-defined]
    return True


def _import_model_zoo() -> bool:
    """setuptools >= 81 removed ``pkg_resources``, which ``detectron2.model_zoo`` imports.

    Prevents ``ModuleNotFoundError: No module named 'pkg_resources'`` on ``from detectron2 import
    model_zoo``. It needs only ``resource_filename`` (the path of a packaged config), so a
    stand-in with that one function, built on ``importlib.resources``, is installed for the
    import and removed again: no other package sees it.
    """
    if "detectron2.model_zoo" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        importlib.import_module("detectron2.model_zoo")
        return False
    from importlib import resources

    stand_in = types.ModuleType("pkg_resources", "stand-in for detectron2.model_zoo (cvhelpers.detection.d2compat)")

    def resource_filename(package: str, resource: str) -> str:
        return str(resources.files(package).joinpath(resource))

    stand_in.resource_filename = resource_filename  # type: ignore[attr-defined]
    sys.modules["pkg_resources"] = stand_in
    try:
        importlib.import_module("detectron2.model_zoo")
    finally:
        del sys.modules["pkg_resources"]
    return True


def import_detectron2() -> list[str]:
    """Apply the guarded fixes and import Detectron2's core; returns the fixes applied.

    Raises:
        ModuleNotFoundError: Detectron2 is not installed (``make detectron2`` installs it).
    """
    if not detectron2_available():
        raise ModuleNotFoundError("Detectron2 is not installed: `make detectron2` installs it into the "
                                  "course venv (tools/install_detectron2.py)", name="detectron2")
    applied = []
    if _fix_pil_linear():
        applied.append("PIL.Image.LINEAR")
    applied += [f"numpy.{name}" for name in _fix_numpy_aliases()]
    if _fix_compiled_ops():
        applied.append("detectron2._C stand-in")
    if _fix_rotated_nms_op():
        applied.append("torch.ops.detectron2.nms_rotated stand-in")
    if _import_model_zoo():
        applied.append("pkg_resources for model_zoo")
    importlib.import_module("detectron2.modeling")
    importlib.import_module("detectron2.engine")
    if _fix_map_dataset_sample():
        applied.append("MapDataset retry sampling")
    return applied
