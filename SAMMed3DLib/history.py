"""Undo/redo: one stack of steps, owned by whichever layer drives an editing session.

A standalone :class:`~SAMMed3DLib.session.Session` keeps its own :class:`History` of click steps.
The Slicer logic drives its session with ``keep_history=False`` and keeps one :class:`History` of
its own records instead, each holding the session's states before and after
(:meth:`Session.state <SAMMed3DLib.session.Session.state>`) and the voxels that changed, so one
layer owns the history and the session is moved with :meth:`Session.restore
<SAMMed3DLib.session.Session.restore>`. The stack only orders steps; what a step means is its
owner's business.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class History(Generic[T]):
    """Undo and redo stacks of steps.

    Args:
        limit: keep at most this many undo steps (the oldest are dropped); None keeps all.

    Raises:
        ValueError: ``limit`` is not a positive integer.
    """

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive integer or None, got {limit!r}")
        self.limit = limit
        self._undo: list[T] = []
        self._redo: list[T] = []

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def __len__(self) -> int:
        """Number of steps that can be undone."""
        return len(self._undo)

    def push(self, step: T) -> None:
        """Record a new step; the steps that could be redone are forgotten."""
        self._undo.append(step)
        if self.limit is not None:
            del self._undo[: -self.limit]
        self._redo.clear()

    def last(self) -> T | None:
        """The step :meth:`undo` would return, without moving."""
        return self._undo[-1] if self._undo else None

    def upcoming(self) -> T | None:
        """The step :meth:`redo` would return, without moving."""
        return self._redo[-1] if self._redo else None

    def undo(self) -> T | None:
        """Move the last step to the redo stack and return it (None when there is none)."""
        if not self._undo:
            return None
        step = self._undo.pop()
        self._redo.append(step)
        return step

    def redo(self) -> T | None:
        """Move the last undone step back and return it (None when there is none)."""
        if not self._redo:
            return None
        step = self._redo.pop()
        self._undo.append(step)
        return step

    def discard(self, step: T) -> None:
        """Forget ``step`` (found by identity on either stack): it can no longer be undone or redone."""
        for stack in (self._undo, self._redo):
            for i in range(len(stack) - 1, -1, -1):
                if stack[i] is step:
                    del stack[i]
                    return

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()
