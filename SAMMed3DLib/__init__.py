"""SAMMed3DLib: Slicer-free core of the SAM-Med3D extension.

Model (:func:`build_sam3d`), checkpoints (:func:`load_model`, :func:`save_model`), the
interactive :class:`Session`, geometry, click simulation, metrics and the ``sammed3d`` CLI.
Nothing here imports ``slicer``, ``qt`` or ``vtk``.

Torch-using names are imported lazily (PEP 562 ``__getattr__``), so that torch-free modules
such as :mod:`SAMMed3DLib.registry` (the model registry, used by ``sammed3d models`` and by Slicer
before torch may be installed) can be imported without importing torch.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Any

# OpenMP threads that spin while waiting collapse when another process holds a core: the
# vit_b_ori encoder took 4.9 s instead of 1.4 s and a click 0.9 s instead of 33 ms on 2 threads
# of a 2-core machine with one core busy (benchmarks/README.md); through the Python API a first
# mask took 20 s instead of 7 s. Passive waiting removes the collapse. It only counts before
# torch (and its OpenMP runtime) is first imported, so it is set here, for the CLI, the Python
# API and Slicer alike (SAMMed3D.py sets it too, before anything may import torch). A value set
# by the user wins; once torch is loaded, changing it would be a lie, so it is left alone.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
#: The policy torch's OpenMP runs with (None: torch came first with none set, so it spins);
#: see SAMMed3DLib.warmup.openmp_wait_is_passive.
_OMP_WAIT_POLICY_AT_IMPORT = os.environ.get("OMP_WAIT_POLICY")

from .errors import SAMMed3DError

if TYPE_CHECKING:
    from .checkpoint import load_model, save_model
    from .model import VIT_B_ORI, Sam3D, build_sam3d
    from .session import Session

__version__ = "0.1.0"

#: Public name → submodule that defines it; imported on first access.
_LAZY: dict[str, str] = {
    "VIT_B_ORI": "model",
    "Sam3D": "model",
    "build_sam3d": "model",
    "load_model": "checkpoint",
    "save_model": "checkpoint",
    "Session": "session",
}

__all__ = ["VIT_B_ORI", "SAMMed3DError", "Sam3D", "Session", "__version__", "build_sam3d", "load_model", "save_model"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
