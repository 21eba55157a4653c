"""The module's .ui file and shortcuts on a real Qt binding (PySide6, ``QT_QPA_PLATFORM=offscreen``).

Slicer's PythonQt and its custom widgets (CTK, qMRML, qSlicer) are not on PyPI. ``QUiLoader``
builds every custom widget as the first Qt class of its ``<extends>`` chain, so the panel loads
for real: every control the module's code reaches through ``self.ui`` exists with a compatible
class; for Qt widgets the methods and properties the code uses exist on the loaded object, for
Slicer's widgets the code uses only the API listed in :data:`SLICER_API` (checked against the
Slicer 5.8-5.12 headers). The shortcut bookkeeping (``SAMMed3DModule/shortcuts.py``) runs with
real ``QShortcut`` objects and real key presses. What stays untested here: the Slicer widgets'
own behaviour, PythonQt's ``connect("signal()")`` syntax, and the module inside the application.
"""

from __future__ import annotations

import ast
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="needs a Qt binding: pip install PySide6-Essentials")
from PySide6 import QtCore, QtGui, QtTest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "SAMMed3D"
UI_FILE = MODULE / "Resources" / "UI" / "SAMMed3D.ui"
sys.path.insert(0, str(MODULE))
sys.path.insert(0, str(ROOT / "Resources" / "Screenshots"))

from SAMMed3DModule.choices import SHORTCUTS  # noqa: E402
from SAMMed3DModule.shortcuts import ShortcutSet  # noqa: E402
from render_module_panel import load_panel  # noqa: E402

#: The Slicer API the module calls on each custom widget, as declared in Slicer's headers (5.8 to 5.12).
SLICER_API = {
    "qMRMLSegmentEditorWidget": {
        "setMaximumNumberOfUndoStates", "setEffectNameOrder", "unorderedEffectsVisible", "setSwitchToSegmentationsButtonVisible",
        "setMRMLScene", "setMRMLSegmentEditorNode", "setupViewObservations", "removeViewObservations", "setActiveEffect",
        "setCurrentSegmentID",
    },
    "qSlicerMarkupsPlaceWidget": {"buttonsVisible", "placeButton", "deleteButton", "placeMultipleMarkups", "setPlaceModeEnabled",
                                  "placeModeEnabled", "setCurrentNode", "enabled"},
    "ctkPathLineEdit": {"nameFilters", "enabled"},
    "qMRMLNodeComboBox": set(),
}


@pytest.fixture(scope="module")
def panel():
    widget, error = load_panel()
    assert error == "", error
    yield widget
    widget.deleteLater()


def _declared() -> tuple[dict[str, str], dict[str, str]]:
    root = ET.parse(UI_FILE).getroot()
    classes = {w.get("name"): w.get("class") for w in root.iter("widget")}
    extends = {c.findtext("class"): c.findtext("extends") for c in root.iter("customwidget")}
    return classes, extends


def _qt_base(cls: str, extends: dict[str, str]) -> str:
    while cls in extends:
        cls = extends[cls]
    return cls


def _uses() -> dict[str, set[str]]:
    """``self.ui.<name>.<attribute>`` (and ``self.ui.<name>`` alone) in every file of the module."""
    uses: dict[str, set[str]] = {}
    for path in [MODULE / "SAMMed3D.py", *sorted((MODULE / "SAMMed3DModule").glob("*.py"))]:
        text = path.read_text(encoding="utf-8")
        for name, attr in re.findall(r"self\.ui\.(\w+)(?:\.(\w+))?", text):
            uses.setdefault(name, set()).update({attr} if attr else set())
        # ``editor = self.ui.segmentEditorWidget`` then ``editor.x``: follow the alias inside its function
        for function in ast.walk(ast.parse(text)):
            if not isinstance(function, ast.FunctionDef):
                continue
            for node in ast.walk(function):
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and ast.unparse(node.value).startswith("self.ui."):
                    alias, name = node.targets[0].id, ast.unparse(node.value).split(".")[2]
                    uses[name] |= set(re.findall(rf"\b{alias}\.(\w+)", ast.unparse(function)))
    return uses


def test_every_control_the_module_uses_exists_with_a_compatible_class(panel) -> None:
    classes, extends = _declared()
    uses = _uses()
    assert {"segmentEditorWidget", "positivePlaceWidget", "statusLabel", "progressBar", "cancelButton"} <= set(uses)
    for name, attributes in sorted(uses.items()):
        assert name in classes, f"the module uses self.ui.{name}, which the .ui file does not declare"
        loaded = panel.findChild(QtWidgets.QWidget, name)
        assert loaded is not None, f"{name} did not load"
        declared = classes[name]
        base = _qt_base(declared, extends)
        assert loaded.metaObject().className() == base, (name, declared, loaded.metaObject().className())
        attributes = attributes - {"connect"}  # PythonQt's connect("signal()", slot)
        if declared in SLICER_API:
            unknown = attributes - SLICER_API[declared]
            assert not unknown, f"{name} ({declared}): the module calls {sorted(unknown)}, not in the checked Slicer API"
            continue
        assert declared.startswith("Q"), f"{name}: {declared} is a custom widget without a checked API"
        meta = loaded.metaObject()
        for attribute in attributes:
            assert hasattr(loaded, attribute) or meta.indexOfProperty(attribute) >= 0, f"{name} ({declared}) has no {attribute}"


def test_the_segment_editor_is_embedded_in_its_own_section(panel) -> None:
    classes, extends = _declared()
    assert classes["segmentEditorWidget"] == "qMRMLSegmentEditorWidget"
    assert extends["qMRMLSegmentEditorWidget"] == "qMRMLWidget" and _qt_base("qMRMLSegmentEditorWidget", extends) == "QWidget"
    editor = panel.findChild(QtWidgets.QWidget, "segmentEditorWidget")
    section = panel.findChild(QtWidgets.QWidget, "segmentEditorCollapsibleButton")
    assert editor.parent() is section and classes["segmentEditorCollapsibleButton"] == "ctkCollapsibleButton"
    for gone in ("inputVolumeSelector", "segmentationSelector", "segmentSelector", "writeModeComboBox"):
        assert panel.findChild(QtWidgets.QWidget, gone) is None, f"{gone} duplicates the Segment Editor"


def _modifiers(sequence: QtGui.QKeySequence) -> QtCore.Qt.KeyboardModifier:
    return sequence[0].keyboardModifiers()


def test_no_shortcut_needs_ctrl_alt(panel) -> None:
    for keys in SHORTCUTS:
        sequence = QtGui.QKeySequence(keys)
        assert sequence.count() == 1 and _modifiers(sequence) == QtCore.Qt.KeyboardModifier.NoModifier, keys
    for button in panel.findChildren(QtWidgets.QAbstractButton):
        sequence = button.shortcut()
        if not sequence.isEmpty():
            both = QtCore.Qt.KeyboardModifier.ControlModifier | QtCore.Qt.KeyboardModifier.AltModifier
            assert (_modifiers(sequence) & both) != both, f"{button.objectName()}: {sequence.toString()}"


@pytest.fixture
def window():
    main = QtWidgets.QMainWindow()
    edit = QtWidgets.QLineEdit(main)
    main.setCentralWidget(edit)
    main.show()
    main.activateWindow()
    QtTest.QTest.qWaitForWindowExposed(main)
    yield main, edit
    main.close()
    main.deleteLater()


def _slots(calls: list[str]) -> dict[str, object]:
    return {k: (lambda k=k: calls.append(k)) for k in SHORTCUTS}


def test_shortcuts_are_installed_once_fire_on_their_key_and_are_removed_on_cleanup(window) -> None:
    main, edit = window
    calls: list[str] = []
    shortcuts = ShortcutSet(QtGui)
    shortcuts.install(main, _slots(calls))
    shortcuts.install(main, _slots(calls))  # enter() twice: nothing is bound twice
    found = main.findChildren(QtGui.QShortcut)
    assert sorted(s.key().toString() for s in found) == sorted(SHORTCUTS)
    assert all(s.whatsThis().startswith("SAM-Med3D: ") for s in found)
    main.setFocus()
    QtTest.QTest.keyClick(main, QtCore.Qt.Key.Key_T)
    QtTest.QTest.keyClick(main, QtCore.Qt.Key.Key_Z)
    assert calls == ["T", "Z"], "one key press, one call (T toggles + / −)"
    edit.setFocus()
    QtTest.QTest.keyClick(edit, QtCore.Qt.Key.Key_P)
    assert calls == ["T", "Z"] and edit.text() == "p", "a text field keeps its keys"
    shortcuts.remove()  # exit() / cleanup()
    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
    assert main.findChildren(QtGui.QShortcut) == [] and shortcuts.installed == {}
    main.setFocus()
    QtTest.QTest.keyClick(main, QtCore.Qt.Key.Key_T)
    assert calls == ["T", "Z"], "removed shortcuts do not fire"
    shortcuts.remove()  # exit() then cleanup(): the second call finds nothing


def test_a_module_reload_binds_each_key_once(window) -> None:
    """Reload: the old widget's cleanup() removes its set, the new widget installs its own."""
    main, _ = window
    calls: list[str] = []
    old = ShortcutSet(QtGui)
    old.install(main, _slots(calls))
    old.remove()
    new = ShortcutSet(QtGui)
    new.install(main, _slots(calls))
    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)
    assert len(main.findChildren(QtGui.QShortcut)) == len(SHORTCUTS)
    main.setFocus()
    QtTest.QTest.keyClick(main, QtCore.Qt.Key.Key_Y)
    assert calls == ["Y"]
    new.remove()


def test_the_slots_must_be_the_documented_keys() -> None:
    with pytest.raises(ValueError, match="differ from the documented keys"):
        ShortcutSet(QtGui).install(None, {"P": lambda: None})
