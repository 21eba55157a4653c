"""MRML-speaking logic of the SAMMed3D Slicer module, testable without the Slicer application.

Imports only ``slicer``/``vtk`` MRML classes (``slicer-core`` provides them outside Slicer),
numpy, SimpleITK and ``SAMMed3DLib``; it takes its scene from the nodes it is given and never
touches Qt, ``slicer.mrmlScene`` or ``slicer.modules``. Importing it does not import torch
(``SAMMed3DLib`` loads torch on first use), so Slicer can load the module, show the clicks and
keep them before the user agreed to install PyTorch.

- :mod:`.mrml_geometry`: volume → SimpleITK image in world LPS, control points → LPS.
- :mod:`.labelmaps`: segment voxels read/written block by block on the segmentation's lattice.
- :mod:`.masking`: editable area and overwrite rules (the Segment Editor's masking settings).
- :mod:`.points`: the clicks stored with each segment, snapshots for undo.
- :mod:`.changes`: the segment blocks an update writes (masking applied), written with rollback.
- :mod:`.model_holder`: which model runs, loaded (and downloaded) on first use.
- :mod:`.updates`: the request, update, result and history record one update carries.
- :mod:`.logic`: :class:`InteractiveSegmentationLogic` (prepare / compute / apply, the one
  undo/redo history of the editing session).
- :mod:`.testing`: a predictable stand-in model and synthetic scenes for pytest and the self-test.

Example:
    >>> from InteractiveSegmentationLogic import InteractiveSegmentationLogic
    >>> logic = InteractiveSegmentationLogic(model="default", device="cpu")
    >>> logic.segment(volumeNode, segmentationNode, segmentId, plusPointsNode, minusPointsNode)
"""

from __future__ import annotations

from .logic import MAX_UNDO, InteractiveSegmentationLogic
from .masking import (
    WRITE_MODES,
    EditableArea,
    OverwriteMode,
    WriteOptions,
    write_options_for_mode,
)
from .points import (
    NEGATIVE_COLOR,
    POSITIVE_COLOR,
    PointsSnapshot,
    ensure_points_nodes,
    get_points_nodes,
    points_role,
)
from .updates import ModelUpdate, SegmentRequest, SegmentResult

__all__ = [
    "MAX_UNDO",
    "NEGATIVE_COLOR",
    "POSITIVE_COLOR",
    "WRITE_MODES",
    "EditableArea",
    "InteractiveSegmentationLogic",
    "ModelUpdate",
    "OverwriteMode",
    "PointsSnapshot",
    "SegmentRequest",
    "SegmentResult",
    "WriteOptions",
    "ensure_points_nodes",
    "get_points_nodes",
    "points_role",
    "write_options_for_mode",
]
