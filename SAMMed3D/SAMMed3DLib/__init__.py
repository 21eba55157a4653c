"""SAMMed3DLib: Slicer-free core of the SAM-Med3D extension.

Model (:func:`build_sam3d`), checkpoints (:func:`load_model`, :func:`save_model`), the
interactive :class:`Session`, geometry, click simulation, metrics and the ``sammed3d`` CLI.
Nothing here imports ``slicer``, ``qt`` or ``vtk``.
"""

from __future__ import annotations

from .errors import SAMMed3DError
from .model import VIT_B_ORI, Sam3D, build_sam3d

__version__ = "0.1.0"

__all__ = ["VIT_B_ORI", "SAMMed3DError", "Sam3D", "__version__", "build_sam3d"]
