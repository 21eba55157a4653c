"""Clicks in the page → model updates of one segmentation, with undo, redo, reset and several segments.

Design:

- The scene holds one volume, one segmentation and, for each segment, the two markups nodes the
  Slicer logic keeps with it (``InteractiveSegmentationLogic.pointsNodesForSegment``) and, once
  drawn, a markups ROI: the object's box (the logic's ``roiNode``). The place mode of the slice
  views puts a left click into the current segment's + or − node, or draws its box (two clicks,
  opposite corners); the "point defined" (or "moved") event asks for an update. Once a box is
  drawn, clicks are + points again: they refine the boxed object.
- "Lock other segments" hands every other segment to the logic as locked
  (``WriteOptions.lockedSegmentIds``): never changed, never overlapped, left out of the model's mask.
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
import dataclasses
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

#: What a left click in a slice view does: a + point, a − point, or a corner of the box.
MODES = ("positive", "negative", "box")

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
    box: bool = False
    steps: int = 0
    busy: bool = False
    message: str = ""

    def text(self) -> str:
        if not self.segment:
            return self.message or "Load a volume to start."
        points = f"points +{self.positive} −{self.negative}" + (" · box" if self.box else "")
        parts = [f"{self.segment}: voxels={self.voxels}", points, f"steps={self.steps}"]
        if self.message:
            parts.append(self.message)
        return " · ".join(parts)


def thicken_box(box: Any) -> None:
    """Give a box drawn in a slice view a depth: as deep as its shorter side, if it is flatter.

    Two clicks in a slice view give the box two sides; Slicer's ROI widget adds the depth as
    the box's own axes meet the slice. On an oblique volume the box (aligned with RAS) comes out
    a slab a millimetre or two thick (measured: 1.4 × 16.9 × 35.5 mm for a 28 mm square), which
    would confine the object to a few slices.
    """
    size = list(box.GetSize())
    order = sorted(range(3), key=lambda axis: size[axis])
    thinnest, middle = order[0], order[1]
    if size[thinnest] < 0.5 * size[middle]:
        size[thinnest] = size[middle]
        box.SetSize(*size)


class Editor:
    """The editing session of the page: one volume, one segmentation, the logic and its worker.

    Args:
        scene: the MRML scene.
        place_node: ``place_node(markups_node, persistent)`` makes a left click in a slice view
            add a control point to that node (trame-slicer's markups logic; persistent: every
            click, not only the next one).
        logic: an ``InteractiveSegmentationLogic``.
        on_change: called on the loop's thread whenever the status or the segments changed.
    """

    def __init__(self, scene: Any, place_node: Callable[[Any, bool], None], logic: Any, on_change: Callable[[], None] | None = None) -> None:
        self.scene = scene
        self.place_node = place_node
        self.logic = logic
        self.on_change = on_change or (lambda: None)
        self.volume: Any = None
        self.segmentation: Any = None
        self.segment_id: str | None = None
        self.mode = "positive"
        self.lock_others = False
        self.info = Status()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sammed3d-model")
        self._task: asyncio.Task | None = None
        self._pending = False
        self._restoring = False
        self._generation = 0  # changes with the volume: a result for an older one is dropped
        self._observed: dict[str, tuple[Any, list[int]]] = {}
        self._progress: tuple[float, float, str] = (0.0, 0.0, "")
        self._counts: dict[tuple, int] = {}
        self._boxes: dict[str, Any] = {}

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
        self.mode = "positive"  # a new volume starts with a + click
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
        self._boxes.clear()
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
        if self.mode == "box":
            self.mode = "positive"
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

    @property
    def positive(self) -> bool:
        """Whether the next click places a + point."""
        return self.mode == "positive"

    def set_mode(self, mode: str) -> None:
        """What the next left click does (:data:`MODES`); ``box`` starts a new box for the segment.

        Raises:
            SessionStateError: unknown mode.
        """
        if mode not in MODES:
            raise SessionStateError(f"unknown click mode {mode!r}; use one of {', '.join(MODES)}")
        self.mode = mode
        if mode == "box" and self.segment_id is not None:
            box = self.box_node(create=True)
            self._restoring = True  # an old box taken away runs nothing: the new one will
            try:
                box.RemoveAllControlPoints()
            finally:
                self._restoring = False
        self._place()
        self.refresh()

    def set_positive(self, positive: bool) -> None:
        """Whether the next click is a + (object here) or a − (not here) point."""
        self.set_mode("positive" if positive else "negative")

    def toggle_sign(self) -> None:
        self.set_mode("negative" if self.mode == "positive" else "positive")

    def set_lock_others(self, locked: bool) -> None:
        """Lock every other segment in the updates from now on (never changed nor overlapped)."""
        self.lock_others = bool(locked)
        self.refresh()

    def box_node(self, segment_id: str | None = None, create: bool = False) -> Any:
        """The segment's box (a markups ROI), created when ``create``; None when it has none."""
        from InteractiveSegmentationLogic.points import SEGMENT_ID_ATTRIBUTE

        segment_id = segment_id or self.segment_id
        box = self._boxes.get(segment_id)
        if box is None and create and self.segmentation is not None:
            box = self.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", f"{web_scene.segment_name(self.segmentation, segment_id)} box")
            box.CreateDefaultDisplayNodes()
            box.SetAttribute(SEGMENT_ID_ATTRIBUTE, segment_id)
            events = (box.PointPositionDefinedEvent, box.PointEndInteractionEvent)
            self._observed[box.GetID()] = (box, [box.AddObserver(event, self._on_box_event) for event in events])
            self._boxes[segment_id] = box
        return box

    def has_box(self, segment_id: str | None = None) -> bool:
        """Whether the segment has a drawn box (an ROI with a size on every axis)."""
        from InteractiveSegmentationLogic.mrml_geometry import roi_world_lps_box

        box = self.box_node(segment_id)
        return box is not None and roi_world_lps_box(box) is not None

    def clear_box(self) -> None:
        """Take the current segment's box away (the next update runs without it)."""
        box = self.box_node()
        if box is not None:
            self._restoring = True
            try:
                box.RemoveAllControlPoints()
            finally:
                self._restoring = False
        if self.mode == "box":
            self.mode = "positive"
            self._place()
        self.refresh()

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
        if self.mode == "box":
            self.place_node(self.box_node(create=True), False)  # one box: two clicks, then + points
            return
        positive, negative = self.points_nodes()
        self.place_node(positive if self.mode == "positive" else negative, True)

    def _on_box_event(self, caller: Any, event: Any) -> None:
        if self._restoring or self.segmentation is None:
            return
        from InteractiveSegmentationLogic.points import SEGMENT_ID_ATTRIBUTE

        if caller.GetAttribute(SEGMENT_ID_ATTRIBUTE) != self.segment_id or not self.has_box():
            return  # another segment's box, or a box still being drawn (no size yet)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script): it calls request_update() itself
            return
        loop.call_soon(self._box_drawn)

    def _box_drawn(self) -> None:
        if self.mode == "box":  # after the widget has finished placing: clicks refine the boxed object
            self.mode = "positive"
            thicken_box(self.box_node())
            self._place()
        self.request_update()

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
                box = self.box_node() if self.has_box() else None
                request = self.logic.prepare(self.volume, self.segmentation, self.segment_id, positive, negative, self._options(), box)
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

    def _options(self) -> Any:
        options = self.logic.writeOptions
        if self.lock_others:
            others = tuple(i for i in web_scene.segment_ids(self.segmentation) if i != self.segment_id)
            options = dataclasses.replace(options, lockedSegmentIds=others)
        return options

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
            box = self.box_node()
            if box is not None:
                box.RemoveAllControlPoints()
            self._count_step()
            return count

        return self._edit(action, lambda count: f"reset: {count} update(s) undone, clicks and box cleared")

    def _count_step(self) -> None:
        self.info.steps += 1

    def _follow(self, segment_id: str) -> None:
        if segment_id != self.segment_id and self.segmentation.GetSegmentation().GetSegment(segment_id) is not None:
            self.segment_id = segment_id
            if self.mode == "box":
                self.mode = "positive"
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
            info.segment, info.voxels, info.positive, info.negative, info.box = "", 0, 0, 0, False
        else:
            info.segment = web_scene.segment_name(self.segmentation, self.segment_id)
            info.voxels = self.voxels()
            positive, negative = self.points_nodes()
            info.positive = positive.GetNumberOfDefinedControlPoints() if positive is not None else 0
            info.negative = negative.GetNumberOfDefinedControlPoints() if negative is not None else 0
            info.box = self.has_box()
        self.on_change()

    def close(self) -> None:
        """Stop the worker thread (after the update it runs, if any)."""
        self._executor.shutdown(wait=False)
