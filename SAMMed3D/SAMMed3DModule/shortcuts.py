"""The module's one-key shortcuts: installed once while the module is shown, removed completely.

Design: :class:`ShortcutSet` owns the ``QShortcut`` objects; the Qt classes are handed in (``qt``
in Slicer, ``PySide6.QtGui`` in the tests), so this file imports no Qt and the same code runs on
a real Qt binding under pytest. Installing twice binds nothing twice (a module Reload runs
``cleanup``, which removes them, before the new widget installs its own).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .choices import SHORTCUTS


class ShortcutSet:
    """The shortcuts of :data:`~.choices.SHORTCUTS`, bound to slots on one parent widget.

    Args:
        qt: provides ``QShortcut`` and ``QKeySequence`` (Slicer's ``qt`` module, or ``PySide6.QtGui``).
    """

    def __init__(self, qt: Any) -> None:
        self._qt = qt
        self._shortcuts: dict[str, Any] = {}

    @property
    def installed(self) -> dict[str, Any]:
        """Key → ``QShortcut`` of the shortcuts installed now."""
        return dict(self._shortcuts)

    def install(self, parent: Any, slots: Mapping[str, Callable[[], Any]]) -> None:
        """Bind every key of :data:`SHORTCUTS` to its slot on ``parent`` (nothing if already installed).

        Raises:
            ValueError: ``slots`` does not name exactly the keys of :data:`SHORTCUTS`.
        """
        if set(slots) != set(SHORTCUTS):
            raise ValueError(f"shortcut slots {sorted(slots)} differ from the documented keys {sorted(SHORTCUTS)}")
        if self._shortcuts:
            return
        for keys, slot in slots.items():
            shortcut = self._qt.QShortcut(self._qt.QKeySequence(keys), parent)
            shortcut.setWhatsThis(f"SAM-Med3D: {SHORTCUTS[keys]}")
            shortcut.activated.connect(slot)
            self._shortcuts[keys] = shortcut

    def remove(self) -> None:
        """Unbind every shortcut (exit, cleanup); safe to call when none is installed."""
        for shortcut in self._shortcuts.values():
            shortcut.setEnabled(False)
            shortcut.setParent(None)
            shortcut.deleteLater()
        self._shortcuts = {}
