"""The module's options as enums: the parameter node stores them and the .ui combo boxes show them.

Design: each value is the string the layer below accepts (a registry name, a device name, a
``WRITE_MODES`` entry), checked against that layer by ``Testing/test_slicer_packaging.py``, so the
widget passes ``choice.value`` on without translating it. ``label()`` is the text shown to users
(one table, :data:`_LABELS`, for all three).
Plain Python (``enum`` only), importable without Slicer.
"""

from __future__ import annotations

import enum


class ModelChoice(enum.Enum):
    """Models offered by the module; the values are registry names (``SAMMed3DLib/Resources/models.json``)."""

    DEFAULT = "default"
    TURBO = "sam_med3d_turbo"
    FILE = "file"

    def label(self) -> str:
        return _LABELS[self]


class DeviceChoice(enum.Enum):
    """Where the model runs; the values are ``SAMMed3DLib.devices.DEVICE_CHOICES`` entries."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"

    def label(self) -> str:
        return _LABELS[self]


class WriteMode(enum.Enum):
    """How updates treat other segments; the values are ``InteractiveSegmentationLogic.WRITE_MODES``."""

    ALLOW_OVERLAP = "allow_overlap"
    OVERWRITE_VISIBLE = "overwrite_visible"
    OVERWRITE_ALL = "overwrite_all"
    SEGMENT_EDITOR = "segment_editor"

    def label(self) -> str:
        return _LABELS[self]


#: The text users see for each option.
_LABELS: dict[enum.Enum, str] = {
    ModelChoice.DEFAULT: "default (bundled, offline)",
    ModelChoice.TURBO: "SAM-Med3D-turbo (download)",
    ModelChoice.FILE: "Local file…",
    DeviceChoice.AUTO: "auto (CUDA if available)",
    DeviceChoice.CPU: "CPU",
    DeviceChoice.CUDA: "CUDA GPU",
    WriteMode.ALLOW_OVERLAP: "never modify (allow overlap)",
    WriteMode.OVERWRITE_VISIBLE: "overwrite visible segments",
    WriteMode.OVERWRITE_ALL: "overwrite all segments",
    WriteMode.SEGMENT_EDITOR: "use Segment Editor masking",
}


#: One-key shortcuts, active only while the module is shown (installed in the widget's ``enter``, removed
#: in ``exit`` and ``cleanup``, so a module Reload never binds them twice). Single keys, because
#: Ctrl+Alt+letter is AltGr on many Windows keyboard layouts; text fields keep their keys.
SHORTCUTS = {
    "P": "place + points",
    "N": "place − points",
    "T": "toggle between + and − points",
    "Z": "undo the last update",
    "Y": "redo",
}
