"""Render the SAM-Med3D module panel from its .ui file, offscreen, into slicer-module-panel.png.

The Slicer application cannot run here, so this draws the panel with PySide6 (``QUiLoader``) under
``QT_QPA_PLATFORM=offscreen``. Qt widgets (buttons, check boxes, combo boxes, labels, the progress
bar) are the real ones of the .ui file. Slicer's custom widgets are drawn as plain Qt stand-ins:
CTK's collapsible sections as group boxes (all expanded), node selectors as combo boxes, the
markups place widgets as Place / Delete buttons, the checkpoint path as a line edit, and the
embedded Segment Editor as a framed box that lists what Slicer draws there.

Run: ``python Resources/Screenshots/render_module_panel.py`` (needs ``pip install PySide6-Essentials``).
``load_panel(stand_ins=False)`` is what ``Testing/test_slicer_qt.py`` loads: Qt's own fallback,
where every custom widget becomes the first Qt class of its ``<extends>`` chain.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[2]
UI_FILE = ROOT / "SAMMed3D" / "Resources" / "UI" / "SAMMed3D.ui"
OUTPUT = Path(__file__).resolve().parent / "slicer-module-panel.png"

#: What the embedded qMRMLSegmentEditorWidget shows in Slicer (drawn as text in the picture).
SEGMENT_EDITOR_TEXT = (
    "Segment Editor (Slicer's qMRMLSegmentEditorWidget, embedded):\n"
    "  Segmentation and Source volume selectors\n"
    "  Add / Remove segment, Show 3D, the segment list\n"
    "  Effects: Paint, Draw, Erase, Level tracing, Grow from seeds,\n"
    "    Margin, Islands, Smoothing, Scissors, Logical operators\n"
    "  Undo / Redo (Ctrl+Z / Ctrl+Y: the same states as Z / Y)\n"
    "  Masking: Editable area, Editable intensity range,\n"
    "    Modify other segments (what every update follows)"
)


def application():
    from PySide6 import QtWidgets

    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


def _stand_ins() -> list[type]:
    from PySide6 import QtCore, QtWidgets

    class ctkCollapsibleButton(QtWidgets.QGroupBox):  # noqa: N801 - the .ui class name
        def _text(self) -> str:
            return self.title()

        def _setText(self, value: str) -> None:
            self.setTitle(value)

        text = QtCore.Property(str, _text, _setText)

    class qMRMLNodeComboBox(QtWidgets.QComboBox):  # noqa: N801
        def __init__(self, parent=None) -> None:
            super().__init__(parent)
            self.addItem("None")

    class ctkPathLineEdit(QtWidgets.QWidget):  # noqa: N801
        def __init__(self, parent=None) -> None:
            super().__init__(parent)
            layout = QtWidgets.QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            edit = QtWidgets.QLineEdit(self)
            edit.setPlaceholderText("checkpoint.pth")
            layout.addWidget(edit)
            layout.addWidget(QtWidgets.QToolButton(self, text="…"))

    class qSlicerMarkupsPlaceWidget(QtWidgets.QWidget):  # noqa: N801
        def __init__(self, parent=None) -> None:
            super().__init__(parent)
            layout = QtWidgets.QHBoxLayout(self)
            layout.setContentsMargins(0, 0, 0, 0)
            for text in ("Place", "Delete"):
                layout.addWidget(QtWidgets.QToolButton(self, text=text))
            layout.addStretch(1)

    class qMRMLSegmentEditorWidget(QtWidgets.QFrame):  # noqa: N801
        def __init__(self, parent=None) -> None:
            super().__init__(parent)
            self.setFrameShape(QtWidgets.QFrame.StyledPanel)
            layout = QtWidgets.QVBoxLayout(self)
            label = QtWidgets.QLabel(SEGMENT_EDITOR_TEXT, self)
            label.setStyleSheet("color: #444;")
            layout.addWidget(label)

    class qMRMLWidget(QtWidgets.QWidget):  # noqa: N801
        pass

    return [ctkCollapsibleButton, qMRMLNodeComboBox, ctkPathLineEdit, qSlicerMarkupsPlaceWidget, qMRMLSegmentEditorWidget, qMRMLWidget]


def load_panel(stand_ins: bool = False):
    """The module panel loaded from the .ui file (``stand_ins``: Slicer's widgets drawn as above).

    Returns:
        (the top widget, the loader's error string).
    """
    from PySide6 import QtCore, QtUiTools

    application()
    loader = QtUiTools.QUiLoader()
    if stand_ins:
        loader.standIns = _stand_ins()  # the loader keeps no reference: the classes must outlive the load
        for cls in loader.standIns:
            loader.registerCustomWidget(cls)
    ui = QtCore.QFile(str(UI_FILE))
    if not ui.open(QtCore.QFile.ReadOnly):
        raise OSError(f"cannot read {UI_FILE}")
    try:
        widget = loader.load(ui)
    finally:
        ui.close()
    return widget, loader.errorString()


def _bool_defaults() -> dict[str, bool]:
    """The bool fields of ``SAMMed3DParameterNode`` and their defaults, read from SAMMed3D.py's source."""
    import ast

    tree = ast.parse((ROOT / "SAMMed3D" / "SAMMed3D.py").read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SAMMed3DParameterNode")
    return {
        f.target.id: bool(f.value.value)
        for f in node.body
        if isinstance(f, ast.AnnAssign) and ast.unparse(f.annotation) == "bool" and isinstance(f.value, ast.Constant)
    }


def render(path: Path = OUTPUT, width: int = 420) -> Path:
    """Draw the panel as the module fills it on entering (statuses, choices), save it as a PNG."""
    from PySide6 import QtWidgets

    sys.path.insert(0, str(ROOT / "SAMMed3D"))
    from SAMMed3DModule.choices import DeviceChoice, ModelChoice
    from SAMMed3DModule.feedback import Feedback

    app = application()
    panel, error = load_panel(stand_ins=True)
    if error:
        raise RuntimeError(f"the .ui file did not load: {error}")
    for name, choices in (("modelComboBox", ModelChoice), ("deviceComboBox", DeviceChoice)):
        combo = panel.findChild(QtWidgets.QComboBox, name)
        for choice in choices:
            combo.addItem(choice.label())
    for name, checked in _bool_defaults().items():  # the parameter node's defaults, as Slicer shows them
        for box in panel.findChildren(QtWidgets.QCheckBox):
            if box.property("SlicerParameterName") == name:
                box.setChecked(checked)
    feedback = Feedback()
    feedback.start(modelLoaded=False)
    feedback.report(0, 0, "Loading model default")
    feedback.poll()
    panel.findChild(QtWidgets.QLabel, "statusLabel").setText(feedback.status)
    bar = panel.findChild(QtWidgets.QProgressBar, "progressBar")
    _, maximum, value = feedback.progressBar()
    bar.setRange(0, maximum)
    bar.setValue(value)
    panel.resize(width, panel.sizeHint().height())
    panel.show()
    app.processEvents()
    panel.resize(width, panel.sizeHint().height())
    app.processEvents()
    if not panel.grab().save(str(path)):
        raise OSError(f"could not write {path}")
    return path


if __name__ == "__main__":
    print(render())
