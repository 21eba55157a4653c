"""The module's options as enums: the parameter node stores them and the .ui combo boxes show them.

Design: each value is the string the layer below accepts (a registry name, a device name),
checked against that layer by ``Testing/test_slicer_packaging.py``, so the widget passes
``choice.value`` on without translating it. ``label()`` is the text shown to users (one table,
:data:`_LABELS`). How updates treat other segments is no option here: it is the embedded Segment
Editor's masking ("Editable area", "Modify other segments"), read from its parameter node.
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


#: The text users see for each option.
_LABELS: dict[enum.Enum, str] = {
    ModelChoice.DEFAULT: "default (bundled, offline)",
    ModelChoice.TURBO: "SAM-Med3D-turbo (download)",
    ModelChoice.FILE: "Local file…",
    DeviceChoice.AUTO: "auto (CUDA if available)",
    DeviceChoice.CPU: "CPU",
    DeviceChoice.CUDA: "CUDA GPU",
}


#: One-key shortcuts, active only while the module is shown (``shortcuts.ShortcutSet``: installed in the
#: widget's ``enter``, removed in ``exit`` and ``cleanup``, so a module Reload never binds them twice).
#: Single keys, because Ctrl+Alt+letter is AltGr on many Windows keyboard layouts; text fields keep their keys.
SHORTCUTS = {
    "P": "place + points",
    "N": "place − points",
    "T": "toggle between + and − points",
    "Z": "undo the last update",
    "Y": "redo",
}
