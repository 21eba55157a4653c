"""Clicks in the page → model updates of one segmentation, with undo, redo, reset and several segments.

Design:

- The scene holds one volume, one segmentation and, for each segment, the two markups nodes the
  Slicer logic keeps with it (``InteractiveSegmentationLogic.pointsNodesForSegment``). The place
  mode of the slice views puts a left click into the current segment's + or − node; the markups
  node's "point defined" (or "moved") event asks for an update.
- An update is the logic's three steps: :meth:`prepare` on the event loop (it reads MRML),
  :meth:`compute` on one persistent worker thread (the model; the loop keeps serving the page:
  views render, buttons answer), :meth:`apply` back on the loop (it writes the segment and
  pushes the undo record). One update runs at a time. A click made while one runs marks the
  editor *pending*: the running update is written, then one more runs with all the points, so
  any number of clicks made meanwhile cost one update (a newer click supersedes a pending one).
- Undo, redo and reset are the logic's (one history; the clicks go back with the voxels). They
  wait for nothing and refuse while an update runs, as the Slicer module does.
- Everything here runs on the event loop's thread except the compute function; the status the
  page shows is rebuilt by :meth:`status` after every change, and ``on_change`` tells the page.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import SAMMed3DError, SessionStateError
from . import scene as web_scene

logger = logging.getLogger(__name__)

#: Colour of the segment a new volume starts with (as ``sammed3d segment``'s; the + points are green).
FIRST_SEGMENT_COLOR = (0.9, 0.4, 0.2)


@dataclass
class Status:
    """What the status line says.

    Attributes:
        segment: name of the current segment ("" before a volume is loaded).
        voxels: voxels of the current segment on the volume's grid.
        positive, negative: the current segment's clicks.
        steps: model updates, undos, redos and resets applied to the segmentation so far.
        busy: an update is running.
        message: the last event (an error, "Segmenting…", the time an update took).
    """

    segment: str = ""
    voxels: int = 0
    positive: int = 0
    negative: int = 0
    steps: int = 0
    busy: bool = False
    message: str = ""

    def text(self) -> str:
        if not self.segment:
            return self.message or "Load a volume to start."
        parts = [f"{self.segment}: voxels={self.voxels}", f"points +{self.positive} −{self.negative}", f"steps={self.steps}"]
        if self.message:
            parts.append(self.message)
        return " · ".join(parts)


class Editor:
    """The editing session of the page: one volume, one segmentation, the logic and its worker.

    Args:
        scene: the MRML scene.
        place_node: ``place_node(markups_node)`` makes a left click in a slice view add a
            control point to that node (trame-slicer's markups logic, persistent place mode).
        logic: an ``InteractiveSegmentationLogic``.
        on_change: called on the loop's thread whenever the status or the segments changed.
    """

    def __init__(self, scene: Any, place_node: Callable[[Any], None], logic: Any, on_change: Callable[[], None] | None = None) -> None:
        self.scene = scene
        self.place_node = place_node
        self.logic = logic
        self.on_change = on_change or (lambda: None)
        self.volume: Any = None
        self.segmentation: Any = None
        self.segment_id: str | None = None
        self.positive = True
        self.info = Status()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sammed3d-model")
        self._task: asyncio.Task | None = None
        self._pending = False
        self._restoring = False
        self._generation = 0  # changes with the volume: a result for an older one is dropped
        self._observed: dict[str, tuple[Any, list[int]]] = {}
        self._progress: tuple[float, float, str] = (0.0, 0.0, "")
        self._counts: dict[tuple, int] = {}

    # -- volume, segmentation, segments ----------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def set_volume(self, volume_node: Any, segmentation_node: Any | None = None) -> None:
        """Edit ``volume_node`` from now on, in ``segmentation_node`` (a new empty one when None).

        The previous volume, segmentation and clicks are removed from the scene.
        """
        self._generation += 1
        self._pending = False
        self._forget_nodes()
        self.logic.closeScene()
        self.volume = volume_node
        self.segmentation = segmentation_node if segmentation_node is not None else web_scene.new_segmentation(self.scene, volume_node)
        ids = web_scene.segment_ids(self.segmentation)
        if not ids:
            ids = [self.segmentation.GetSegmentation().AddEmptySegment("", "Segment_1", FIRST_SEGMENT_COLOR)]
        web_scene.show_in_3d(self.segmentation)
        for segment_id in ids:
            self._observe_points(segment_id)
        self.positive = True  # a new volume starts with a + click
        self.select_segment(ids[0])
        self.info.steps = 0
        self.info.message = ""
        self.refresh()

    def _forget_nodes(self) -> None:
        for node, tags in self._observed.values():
            for tag in tags:
                node.RemoveObserver(tag)
            if node.GetScene() is not None:
                self.scene.RemoveNode(node)
        self._observed.clear()
        for node in (self.segmentation, self.volume):
            if node is not None and node.GetScene() is not None:
                self.scene.RemoveNode(node)
        self.volume = self.segmentation = self.segment_id = None

    def segments(self) -> list[dict[str, str]]:
        """The segments as ``{"id", "name", "color"}`` (``#rrggbb``), in the segmentation's order."""
        if self.segmentation is None:
            return []
        out = []
        for segment_id in web_scene.segment_ids(self.segmentation):
            segment = self.segmentation.GetSegmentation().GetSegment(segment_id)
            rgb = segment.GetColor()
            out.append({"id": segment_id, "name": segment.GetName(), "color": "#" + "".join(f"{int(round(255 * c)):02x}" for c in rgb)})
        return out

    def select_segment(self, segment_id: str) -> None:
        """Make ``segment_id`` the segment that clicks go to."""
        if self.segmentation is None:
            raise SessionStateError("load a volume first")
        from InteractiveSegmentationLogic import labelmaps

        labelmaps.require_segment(self.segmentation, segment_id)
        self.segment_id = segment_id
        self._observe_points(segment_id)
        self._place()
        self.refresh()

    def add_segment(self, name: str = "") -> str:
        """Add an empty segment (with its points nodes) and select it; returns its ID."""
        if self.segmentation is None:
            raise SessionStateError("load a volume first")
        if self.busy:
            raise SessionStateError("an update is running: add the segment when it is written")
        segment_id = self.logic.addNextSegment(self.segmentation, name)
        self.select_segment(segment_id)
        return segment_id

    def set_positive(self, positive: bool) -> None:
        """Whether the next click is a + (object here) or a − (not here) point."""
        self.positive = bool(positive)
        self._place()
        self.refresh()

    def toggle_sign(self) -> None:
        self.set_positive(not self.positive)

    def points_nodes(self, segment_id: str | None = None) -> tuple[Any, Any]:
        """The (positive, negative) markups nodes of a segment (the current one by default)."""
        from InteractiveSegmentationLogic import get_points_nodes

        return get_points_nodes(self.segmentation, segment_id or self.segment_id)

    def _observe_points(self, segment_id: str) -> None:
        positive, negative = self.logic.pointsNodesForSegment(self.segmentation, segment_id, create=True)
        for node in (positive, negative):
            if node.GetID() in self._observed:
                continue
            events = (node.PointPositionDefinedEvent, node.PointEndInteractionEvent)
            tags = [node.AddObserver(event, self._on_points_event) for event in events]
            self._observed[node.GetID()] = (node, tags)

    def _place(self) -> None:
        if self.segment_id is None:
            return
        positive, negative = self.points_nodes()
        self.place_node(positive if self.positive else negative)

    # -- model updates ---------------------------------------------------------------------------

    def _on_points_event(self, caller: Any, event: Any) -> None:
        if self._restoring or self.segmentation is None:
            return
        from InteractiveSegmentationLogic.points import SEGMENT_ID_ATTRIBUTE

        segment_id = caller.GetAttribute(SEGMENT_ID_ATTRIBUTE)
        if segment_id != self.segment_id:
            return
        self.request_update()

    def request_update(self) -> asyncio.Task | None:
        """Run the model on the current segment's points now, or after the running update."""
        if self.busy:
            self._pending = True
            return self._task
        self._pending = False
        self._task = asyncio.get_event_loop().create_task(self._update())
        return self._task

    async def wait_idle(self) -> None:
        """Return once no update runs or is pending."""
        while self.busy:
            await asyncio.shield(self._task)

    async def _update(self) -> None:
        loop = asyncio.get_event_loop()
        while True:
            started = time.perf_counter()
            generation = self._generation
            self.info.busy = True
            self.info.message = "segmenting…" if self.logic.modelLoaded else "loading the model…"
            self.refresh()
            try:
                positive, negative = self.points_nodes()
                request = self.logic.prepare(self.volume, self.segmentation, self.segment_id, positive, negative)
                update = await loop.run_in_executor(self._executor, self._compute, request, loop)
                if generation != self._generation:
                    return  # the volume was replaced meanwhile: its segmentation is gone
                result = self.logic.apply(request, update)
                self.info.steps += 1
                self.info.message = (
                    f"{result.changedVoxels} voxels changed in {time.perf_counter() - started:.2f} s (model {result.modelSeconds:.2f} s)"
                )
            except SAMMed3DError as exc:
                self.info.message = f"error: {exc}"
                self._pending = False
            except Exception as exc:  # shown in the page and logged, the server keeps serving
                logger.error("update failed:\n%s", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
                self.info.message = f"update failed: {exc}"
                self._pending = False
            finally:
                self.info.busy = False
                self.refresh()
            if not self._pending:
                return
            self._pending = False

    def _compute(self, request: Any, loop: asyncio.AbstractEventLoop) -> Any:
        def progress(done: float, total: float, message: str) -> None:
            self._progress = (done, total, message)
            loop.call_soon_threadsafe(self._show_progress)

        return self.logic.compute(request, progress)

    def _show_progress(self) -> None:
        done, total, message = self._progress
        if self.info.busy and message:
            self.info.message = f"{message}: {done / 1e6:.0f} / {total / 1e6:.0f} MB" if total > 0 else f"{message}…"
            self.on_change()

    # -- history and buttons ---------------------------------------------------------------------

    def _edit(self, action: Callable[[], Any], done: Callable[[Any], str]) -> bool:
        if self.busy:
            self.info.message = "an update is running: try again when it is written"
            self.refresh()
            return False
        self._restoring = True
        try:
            outcome = action()
            self.info.message = done(outcome)
        except SAMMed3DError as exc:
            self.info.message = f"error: {exc}"
        finally:
            self._restoring = False
        self.refresh()
        return True

    def undo(self) -> bool:
        """Undo the last update (voxels and clicks); selects the segment it changed."""

        def action() -> str | None:
            segment_id = self.logic.undo()
            if segment_id is not None:
                self._count_step()
                self._follow(segment_id)
            return segment_id

        return self._edit(action, lambda segment_id: "undone" if segment_id else "nothing to undo")

    def redo(self) -> bool:
        """Redo the last undone update."""

        def action() -> str | None:
            segment_id = self.logic.redo()
            if segment_id is not None:
                self._count_step()
                self._follow(segment_id)
            return segment_id

        return self._edit(action, lambda segment_id: "redone" if segment_id else "nothing to redo")

    def reset(self) -> bool:
        """Undo every update of the current session on this segment and clear its clicks."""
        if self.segment_id is None:
            return False

        def action() -> int:
            count = self.logic.resetSegment(self.segmentation, self.segment_id)
            self._count_step()
            return count

        return self._edit(action, lambda count: f"reset: {count} update(s) undone, clicks cleared")

    def _count_step(self) -> None:
        self.info.steps += 1

    def _follow(self, segment_id: str) -> None:
        if segment_id != self.segment_id and self.segmentation.GetSegmentation().GetSegment(segment_id) is not None:
            self.segment_id = segment_id
            self._place()

    def set_model(self, model: Any, device: str | None = None) -> bool:
        """Use another model (registry name or checkpoint path) and/or device from the next click on."""
        if self.busy:
            self.info.message = "an update is running: change the model when it is written"
            self.refresh()
            return False
        self.logic.setModel(model, device)
        label = model if isinstance(model, str) else getattr(getattr(model, "card", None), "name", type(model).__name__)
        self.info.message = f"model {label} on {self.logic.device}: loaded at the next click"
        self.refresh()
        return True

    # -- status ----------------------------------------------------------------------------------

    def voxels(self, segment_id: str | None = None) -> int:
        """Voxels of a segment (the current one by default) on the volume's grid.

        Counted again only when the segment's voxels changed (a 512 × 512 × 300 CT takes a
        tenth of a second), so toggling + / − or switching segments stays instant.
        """
        if self.segmentation is None:
            return 0
        segment_id = segment_id or self.segment_id
        key = (self._generation, segment_id, web_scene.segment_mtime(self.segmentation, segment_id))
        if key not in self._counts:
            if len(self._counts) > 64:
                self._counts.clear()
            self._counts[key] = web_scene.segment_voxels(self.segmentation, segment_id, self.volume)
        return self._counts[key]

    def refresh(self) -> None:
        """Recount the current segment and its clicks, then tell the page."""
        info = self.info
        if self.segmentation is None or self.segment_id is None:
            info.segment, info.voxels, info.positive, info.negative = "", 0, 0, 0
        else:
            info.segment = web_scene.segment_name(self.segmentation, self.segment_id)
            info.voxels = self.voxels()
            positive, negative = self.points_nodes()
            info.positive = positive.GetNumberOfDefinedControlPoints() if positive is not None else 0
            info.negative = negative.GetNumberOfDefinedControlPoints() if negative is not None else 0
        self.on_change()

    def close(self) -> None:
        """Stop the worker thread (after the update it runs, if any)."""
        self._executor.shutdown(wait=False)
