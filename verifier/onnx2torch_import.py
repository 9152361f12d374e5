"""Import onnx2torch on machines whose torchvision is missing or broken.

onnx2torch imports torchvision eagerly but needs it only for NonMaxSuppression and RoiAlign. With a
CPU build of torch, the PyPI torchvision wheels fail to import; we then put a stub in its place
whose functions raise NotImplementedError. On a machine with a working torchvision this does nothing.
"""

from __future__ import annotations

import sys
import types
import warnings


def _install_torchvision_stub() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]

    def unavailable(*_args, **_kwargs):
        raise NotImplementedError("torchvision is not available on this machine")

    package = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    ops.nms = unavailable  # type: ignore[attr-defined]
    ops.roi_align = unavailable  # type: ignore[attr-defined]
    ops.batched_nms = unavailable  # type: ignore[attr-defined]
    package.ops = ops  # type: ignore[attr-defined]
    package.__path__ = []  # type: ignore[attr-defined]
    sys.modules["torchvision"] = package
    sys.modules["torchvision.ops"] = ops


def import_onnx2torch() -> types.ModuleType:
    """Return the onnx2torch package, importing it behind the torchvision guard."""
    if "onnx2torch" in sys.modules:
        return sys.modules["onnx2torch"]
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure of a broken build means "not usable"
        _install_torchvision_stub()
    import onnx2torch

    # its Slice indexes with a list, which torch 2.x warns about on every call: noise to a user
    warnings.filterwarnings("ignore", message="Using a non-tuple sequence for multidimensional indexing",
                            category=UserWarning)
    return onnx2torch
