"""Interactive segmentation session: set an image once, click, get a mask, refine, undo.

Shaped like SAM's predictor (``set_image`` once, then cheap prompts), with three differences
that clinical volumes require:

* **Windows, never the whole volume.** The model sees a cubic window (``card.input_size``³
  voxels of ``card.spacing_mm``, axes toward R, A, S) resampled from the original image around
  the clicks. Only the window is resampled; the prediction is pasted back onto the original grid
  inside the window's footprint only (:mod:`SAMMed3DLib.paste`).
* **Follow-up clicks are decoder-only.** Each window's image embedding is computed once and
  cached; a click inside an existing window costs the prompt encoder and mask decoder only,
  with the window's previous low-resolution logits fed back as the dense prompt (zeros on the
  window's first prediction, as the official inference does) and all of the object's clicks
  that fall in the window as sparse prompts. A model with a fine head (:mod:`.model.fine_head`,
  this project's default model) also keeps the window's normalised image: the head turns the
  decoder's logits into the 64³ logits that are pasted, while the decoder keeps getting its own
  32³ logits back.
* **Objects larger than one window.** A click outside every window (more than
  ``WINDOW_MARGIN_VOXELS`` from the border of the windows so far) opens a new window centred on
  it. After a prediction whose mask touches a face of its window, the session follows the object
  (``auto_extend``): it opens a neighbouring window centred on the touching part of the mask,
  seeded with a positive click there, and pastes its prediction only where no earlier window
  decided — so what the user refined is never overwritten by an automatic step. With
  ``zoom_out`` it also sees such an object in a 2× (then 4×) coarser window whose mask the native
  windows refine (:mod:`.session_steps`). See the README ("Large objects") for the strategy and
  its limits.

State and history: :meth:`Session.state` is the session's state apart from the mask (the clicks
and every window's feedback and shown logits; cheap: tensors are shared, never modified), every
result carries the :class:`MaskChange` it made (region, voxels before and after), and
:meth:`Session.restore` puts a state (and voxels) back exactly. A standalone session keeps its
own :class:`~SAMMed3DLib.history.History` of those steps for :meth:`~Session.undo` and
:meth:`~Session.redo`, at most ``history_limit`` (:data:`DEFAULT_HISTORY_LIMIT`) of them, with
their mask changes packed (:class:`~SAMMed3DLib.steps.PackedMaskChange`); a caller that owns the
history (the Slicer logic) passes ``keep_history=False`` and restores states itself. The
windows live in :mod:`.windows`, the step types (state, change, result) in :mod:`.steps`.
"""

from __future__ import annotations

import logging
import numbers
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from .card import ModelCard, official_card
from .editing import KEEP_BOX, Box, as_box, lps_point, resolve_signed_clicks, same_box
from .errors import ConfigError, PromptError, SessionStateError
from .geometry import ImageGeometry, Window, ras_to_lps
from .history import History
from .io import image_from_array, validate_image
from .islands import resolve_drop_islands
from .masks import mask_on_grid
from .memory import TRIM_EVERY_STEPS, release_free_memory
from .model.sam3d import Sam3D
from .prompts import as_labels, as_points, check_click_labels, check_click_point, order_clicks
from .refine import BoundaryRefinement, resolve_refinement
from .scale import resolve_adaptive_scale
from .session_steps import MAX_EXTENSIONS_PER_CLICK, MAX_WINDOWS, ZOOM_OUT_DEFAULT, WindowSteps
from .steps import ClickResult, MaskChange, PackedMaskChange, SessionState, save_for_results
from .warmup import stop_warm_up
from .windows import BORDER_TOUCH_VOXELS, WINDOW_MARGIN_VOXELS, Slices3, WindowStack

__all__ = ["BORDER_TOUCH_VOXELS", "DEFAULT_HISTORY_LIMIT", "WINDOW_MARGIN_VOXELS", "MAX_WINDOWS", "MAX_EXTENSIONS_PER_CLICK", "ClickResult", "MaskChange", "Session", "SessionState"]

logger = logging.getLogger(__name__)

#: Undo steps a standalone session keeps (the Slicer logic's own history keeps as many). A step
#: holds the logits of the windows it ran (1.1 MB a window for the default model: 64³ fine and
#: 32³ decoder logits) and its packed mask change (tens of kB), so 50 steps hold about 60 MB.
#: Unlimited and unpacked, the history grew by 2.3 MB a click on an 80 × 70 × 60 phantom and
#: by 28 MB a click on a 512 × 512 × 200 CT.
DEFAULT_HISTORY_LIMIT = 50

_NO_TIMINGS = ("extract", "encoder", "decoder", "paste")
#: How a click edits a session that started from an existing mask (``Session(correction=...)``):
#: "local" keeps only the error region the click points at (see :mod:`.editing`), "window"
#: takes the window's whole new prediction (as for an object started from clicks).
CORRECTION_MODES = ("local", "window")


@dataclass(frozen=True)
class _Step:
    before: SessionState
    after: SessionState
    change: PackedMaskChange | MaskChange | None  # packed when its blocks are 0/1 (always, for the session's mask)

    def mask_change(self) -> MaskChange | None:
        return self.change.unpacked() if isinstance(self.change, PackedMaskChange) else self.change


class Session(WindowSteps):
    """Interactive promptable segmentation of one object in one 3D image.

    Args:
        model: a :class:`Sam3D`; its ``card`` attribute (set by ``load_model``) says how to
            preprocess. Official weights without a card use :func:`official_card`.
        image: optional image to set right away (see :meth:`set_image`).
        card: overrides ``model.card``.
        auto_extend: follow objects that leave the window (see module docstring).
        zoom_out: see an object that leaves its window in a coarser window too (2×, then 4× the
            spacing), whose mask the native windows refine (:mod:`.session_steps`).
        keep_history: keep an undo/redo history (:meth:`undo`, :meth:`redo`); a caller that
            owns the history itself (with :meth:`state` and :meth:`restore`) passes False.
        history_limit: undo steps kept (the oldest are forgotten), a positive integer, or None
            for no limit (memory then grows with every click). Unused without ``keep_history``.
        initial_mask: an existing mask to refine (see :meth:`set_mask`); needs ``image``.
        correction: how clicks edit an existing mask, one of :data:`CORRECTION_MODES`.
        refine: snap each pasted mask to the image's edges at the image's resolution
            (:mod:`.refine`): True, False, a :class:`~SAMMed3DLib.refine.BoundaryRefinement`, or
            None for the model's default (on for this project's models, whose fine head decides
            on 3 mm cells; off for official checkpoints, whose masks stay the official ones).
        signed_clicks: a positive click never removes a voxel, a negative one never adds one;
            None: the model's default (:func:`~SAMMed3DLib.editing.resolve_signed_clicks`).
        drop_islands: a click never adds a part of the mask far from the object (:mod:`.islands`); None: off.
        adaptive_scale: see an object started from clicks in a fine window first and coarser as its
            positive clicks spread (:mod:`.scale`); None: on for this project's models, off for
            official checkpoints and when ``card`` sets another window spacing than the model's.

    Raises:
        TypeError: ``model`` is not a :class:`Sam3D`.
        ConfigError: ``history_limit`` is not a positive integer or None, or ``correction`` is unknown.

    Example:
        >>> session = Session(load_model("default"), sitk.ReadImage("ct.nii.gz"))
        >>> result = session.click((12.5, -40.0, 88.0), positive=True)   # LPS mm
        >>> sitk.WriteImage(result.mask, "mask.nii.gz")
    """

    def __init__(
        self,
        model: Sam3D,
        image: sitk.Image | None = None,
        *,
        card: ModelCard | None = None,
        auto_extend: bool = True,
        zoom_out: bool = ZOOM_OUT_DEFAULT,
        keep_history: bool = True,
        history_limit: int | None = DEFAULT_HISTORY_LIMIT,
        initial_mask: np.ndarray | sitk.Image | None = None,
        correction: str = "local",
        refine: bool | BoundaryRefinement | None = None,
        signed_clicks: bool | None = None,
        drop_islands: bool | None = None,
        adaptive_scale: bool | None = None,
    ) -> None:
        bad_limit = isinstance(history_limit, bool) or not isinstance(history_limit, numbers.Integral) or history_limit < 1
        if history_limit is not None and bad_limit:
            raise ConfigError(f"history_limit must be a positive integer (undo steps kept) or None (no limit), got {history_limit!r}")
        if correction not in CORRECTION_MODES:
            raise ConfigError(f"correction must be one of {', '.join(CORRECTION_MODES)}, got {correction!r}")
        if not isinstance(model, Sam3D):
            raise TypeError(f"model must be a SAMMed3DLib Sam3D (from load_model or build_sam3d), got {type(model).__name__}")
        self.model = model.eval()
        self.card: ModelCard = card or getattr(model, "card", None) or official_card(config=model.config)
        if self.card.input_size != model.img_size:
            raise SessionStateError(
                f"model card {self.card.name!r} says input size {self.card.input_size} but the model takes {model.img_size}"
            )
        self.auto_extend = auto_extend
        self.zoom_out = zoom_out
        self.correction = correction
        self.keep_history = keep_history
        self.refinement = resolve_refinement(refine, model)
        self.signed_clicks = resolve_signed_clicks(signed_clicks, model)
        self.drop_islands = resolve_drop_islands(drop_islands)
        self.adaptive_scale = resolve_adaptive_scale(adaptive_scale, model, card)
        self._scale_spacing: float | None = None  # the window spacing the object is seen at (None: the card's or the box's)
        self._image: sitk.Image | None = None
        self._image_zyx: np.ndarray | None = None  # a view of the image's voxels, for the refinement
        self._geometry: ImageGeometry | None = None
        self._windows: WindowStack | None = None
        self._points_lps: list[np.ndarray] = []
        self._labels: list[int] = []
        self._mask: np.ndarray | None = None
        self._base_mask: np.ndarray | None = None
        self._editing = False  # the session started from a non-empty mask
        self._box: Box | None = None
        self._locked: np.ndarray | None = None
        self._history: History[_Step] = History(None if history_limit is None else int(history_limit))
        self._results: weakref.WeakSet[ClickResult] = weakref.WeakSet()
        self._steps = 0
        if image is not None:
            self.set_image(image)
        if initial_mask is not None:
            self.set_mask(initial_mask)

    # -- image ---------------------------------------------------------------------------------

    @property
    def is_image_set(self) -> bool:
        return self._image is not None

    @property
    def geometry(self) -> ImageGeometry:
        self._require_image()
        assert self._geometry is not None
        return self._geometry

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_image(
        self,
        image: sitk.Image | np.ndarray,
        spacing_xyz_mm: Sequence[float] | None = None,
        origin_lps: Sequence[float] | None = None,
        direction: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Set the image to segment; clears clicks, windows and the mask.

        Args:
            image: a 3D SimpleITK image, or a (z, y, x) numpy array with the geometry given by
                ``spacing_xyz_mm`` (x, y, z order, mm), ``origin_lps`` (mm) and ``direction``
                (3×3, columns = LPS directions of the x, y, z index axes).

        Raises:
            ImageError: the image is not a finite scalar 3D image.
        """
        if isinstance(image, np.ndarray):
            spacing, origin = spacing_xyz_mm or (1.0, 1.0, 1.0), origin_lps or (0.0, 0.0, 0.0)
            image = image_from_array(image, spacing_xyz_mm=spacing, origin_lps=origin, direction=np.eye(3) if direction is None else direction)
        image = validate_image(image)
        stop_warm_up(self.model)  # an unfinished background warm-up would compete with the first click for the cores
        if image.GetPixelID() != sitk.sitkFloat32:
            image = sitk.Cast(image, sitk.sitkFloat32)
        self._image = image
        self._image_zyx = sitk.GetArrayViewFromImage(image)
        self._geometry = ImageGeometry.from_image(image)
        self._windows = WindowStack(self.model, self.card, image, self._geometry)
        self._base_mask = np.zeros(image.GetSize()[::-1], dtype=np.uint8)
        self._editing = False
        self._locked = None
        self._clear_interaction()

    def set_mask(self, mask: np.ndarray | sitk.Image) -> None:
        """Start from an existing mask: this is the current answer, and clicks refine it.

        Clears clicks, the box and undo. Every window that overlaps the mask gets it as its dense
        prompt (:func:`~SAMMed3DLib.editing.mask_prompt_logits`), a negative click is a valid
        first click, and with ``correction="local"`` a click changes only the error region it
        points at. Voxels outside every window that runs are never touched.

        Args:
            mask: a (z, y, x) array on the image grid (non-zero = object), or a SimpleITK image
                anywhere in space (resampled onto the image grid, nearest neighbour, when its grid
                differs).

        Raises:
            SessionStateError: no image, an array of another shape, or a mask image that does not
                overlap the image.
        """
        self._require_image()
        self._base_mask = mask_on_grid(mask, self._image)  # type: ignore[arg-type]
        self._editing = bool(self._base_mask.any())
        self._clear_interaction()

    def set_locked(self, locked: np.ndarray | sitk.Image | None) -> None:
        """Voxels no click may change (other, finished segments); None unlocks all.

        Locked voxels keep their value whatever the model predicts. Takes effect from the next
        click; the mask is not changed now.
        """
        self._require_image()
        self._locked = None if locked is None else mask_on_grid(locked, self._image).astype(bool)  # type: ignore[arg-type]
        if self._locked is not None and not self._locked.any():
            self._locked = None

    @property
    def editing(self) -> bool:
        """True when the session started from a non-empty mask (:meth:`set_mask`)."""
        return self._editing

    @property
    def box(self) -> Box | None:
        """The object's box (:meth:`set_box`), or None."""
        return self._box

    def _clear_interaction(self) -> None:
        self._box = None
        self._points_lps, self._labels = [], []
        if self._windows is not None:
            self._windows.set_logits(())
        self._mask = self._base_mask.copy() if self._base_mask is not None else None
        self._scale_spacing = self._object_spacing()
        self._history.clear()

    def _require_image(self) -> None:
        if self._image is None:
            raise SessionStateError("no image is set: call session.set_image(image) before clicking")

    # -- state -----------------------------------------------------------------------------------

    @property
    def mask_array(self) -> np.ndarray:
        """Current mask, (z, y, x) uint8 on the image grid (the session's own buffer: do not modify)."""
        self._require_image()
        return self._mask  # type: ignore[return-value]

    @property
    def mask(self) -> sitk.Image:
        """Current mask as a SimpleITK uint8 image on the image grid (a copy)."""
        self._require_image()
        out = sitk.GetImageFromArray(self._mask)
        out.CopyInformation(self._image)
        return out

    @property
    def points_lps(self) -> np.ndarray:
        """(N, 3) clicks so far, LPS mm."""
        return np.array(self._points_lps, dtype=np.float64).reshape(-1, 3)

    @property
    def labels(self) -> np.ndarray:
        """(N,) click labels so far, 1 positive / 0 negative."""
        return np.array(self._labels, dtype=np.int64)

    @property
    def windows(self) -> list[Window]:
        """Windows opened so far (their embeddings are cached)."""
        return [w.window for w in self._windows] if self._windows is not None else []

    def state(self) -> SessionState:
        """The clicks and every window's logits (not the mask: see :class:`MaskChange`)."""
        self._require_image()
        return SessionState(self.points_lps, self.labels, self._windows.logits(), self._box)  # type: ignore[union-attr]

    def restore(self, state: SessionState, region_zyx: Slices3 | None = None, voxels: np.ndarray | None = None) -> None:
        """Put the session back to ``state`` and, if given, write ``voxels`` into ``region_zyx`` of the mask.

        With the ``before`` (undo) or ``after`` (redo) of the :class:`MaskChange` of the steps
        between, this returns the session exactly to where it was; the next click in a window
        stays decoder-only. Windows opened after ``state`` keep their embeddings and start from
        no logits. The history of a ``keep_history`` session is not changed.
        """
        self._require_image()
        self._points_lps = [np.array(p, dtype=np.float64) for p in state.points_lps]
        self._labels = [int(v) for v in state.labels]
        self._box = state.box
        self._windows.set_logits(state.window_logits)  # type: ignore[union-attr]
        self._scale_spacing = self._object_spacing()
        if region_zyx is not None and voxels is not None:
            self._before_mask_change(region_zyx)
            self._mask[region_zyx] = voxels  # type: ignore[index]

    def reset(self) -> None:
        """Forget all clicks and return to the starting mask; cached embeddings are kept."""
        self._require_image()
        self._clear_interaction()

    # -- clicks ----------------------------------------------------------------------------------

    def click(self, point_lps: Sequence[float] | np.ndarray, positive: bool = True) -> ClickResult:
        """Add a click and update the mask.

        Args:
            point_lps: (3,) physical point in LPS mm (ITK convention).
            positive: True for "object here", False for "not object here".

        Returns:
            The updated mask and what changed.

        Raises:
            SessionStateError: no image set.
            PromptError: the point lies outside the image (or is positive and outside the box), is
                not 3 finite numbers, or is negative and the object has no click, mask or box yet.
        """
        self._require_image()
        point = self._check_point(point_lps)
        self._check_labels([1 if positive else 0], first=not self._points_lps, points=point[None])
        before = self.state()
        self._points_lps.append(point)
        self._labels.append(1 if positive else 0)
        t0 = time.perf_counter()
        timings = dict.fromkeys(_NO_TIMINGS, 0.0)
        region, ran, previous = self._run_click(point, bool(positive), timings)
        timings["total"] = time.perf_counter() - t0
        change = self._change(region, previous)
        self._record(before, change)
        logger.debug("click %s at %s: %s", "+" if positive else "-", np.round(point, 1), {k: round(v, 4) for k, v in timings.items()})
        return self._result(change, ran, timings)

    def click_ras(self, point_ras: Sequence[float] | np.ndarray, positive: bool = True) -> ClickResult:
        """:meth:`click` with a point in RAS mm (Slicer's convention)."""
        return self.click(ras_to_lps(np.asarray(point_ras, dtype=np.float64)), positive)

    def click_index(self, index_xyz: Sequence[float] | np.ndarray, positive: bool = True) -> ClickResult:
        """:meth:`click` with an ITK voxel index (x, y, z) of the image."""
        self._require_image()
        return self.click(self.geometry.index_to_lps(np.asarray(index_xyz, dtype=np.float64)), positive)

    def set_points(self, positive_lps: np.ndarray, negative_lps: np.ndarray, box: Any = KEEP_BOX) -> ClickResult:
        """Bring the session to exactly these positive and negative points, in any order.

        For an editor that keeps the object's points as two sets (Slicer's markups nodes): the
        clicks the session already has keep their order and the new ones follow, positives
        first (:func:`~SAMMed3DLib.prompts.order_clicks`), so an added point costs one decoder
        pass and only a moved or deleted one replays. See :meth:`predict`.

        Args:
            positive_lps: (P, 3) LPS mm, P ≥ 1 (P = 0 allowed when editing a mask or inside a box).
            negative_lps: (Q, 3) LPS mm.
            box: see :meth:`predict`.
        """
        self._require_image()
        new_box = self._box if box is KEEP_BOX else as_box(box)
        allow = self._editing or new_box is not None
        points, labels = order_clicks(self.points_lps, self.labels, positive_lps, negative_lps, allow_negative_first=allow)
        return self.predict(points, labels, box=new_box)

    def predict(
        self,
        points_lps: np.ndarray | Sequence[Sequence[float]],
        labels: Sequence[int] | np.ndarray,
        progress: Callable[[int, int], None] | None = None,
        box: Any = KEEP_BOX,
    ) -> ClickResult:
        """Bring the session to exactly these clicks (in order) and return the mask.

        If the current clicks are a prefix of ``points_lps``, only the new clicks run (decoder
        only when they fall in existing windows). Otherwise (a click moved or was removed) the
        object is recomputed from the starting mask by replaying the clicks, reusing cached
        embeddings. One history step either way.

        Args:
            points_lps: (N, 3) LPS mm.
            labels: (N,) 1 positive / 0 negative.
            progress: ``progress(done, total)``, called after each click that runs (the
                ``sammed3d segment`` command's bar for many clicks).
            box: the object's box as two LPS corners (or a :class:`~SAMMed3DLib.editing.Box`), or
                None for none; by default the current one is kept. A changed box replays the object.
        """
        self._require_image()
        pts = as_points(points_lps)
        labs = as_labels(labels, len(pts))
        new_box = self._box if box is KEEP_BOX else as_box(box)
        if new_box is not None:
            self._check_point(new_box.center_lps)
        # Validate every click before anything changes: a bad point leaves the session as it was.
        checked = [self._check_point(p) for p in pts]
        self._check_labels(labs, first=True, points=pts, box=new_box)
        n = len(self._points_lps)
        is_prefix = same_box(new_box, self._box) and n <= len(pts) and all(
            np.array_equal(self._points_lps[i], pts[i]) and self._labels[i] == labs[i] for i in range(n)
        )
        t0 = time.perf_counter()
        before = self.state()
        timings = dict.fromkeys(_NO_TIMINGS, 0.0)
        ran: list[Window] = []
        if is_prefix:
            region: Slices3 | None = None
            previous: np.ndarray | None = None
            for done, (point, label) in enumerate(zip(checked[n:], labs[n:]), 1):
                self._points_lps.append(point)
                self._labels.append(label)
                r, w, p = self._run_click(point, bool(label), timings)
                region, previous = self._grow(region, previous, r, p)
                ran += w
                if progress is not None:
                    progress(done, len(pts) - n)
        else:
            region, previous, ran = self._replay(new_box, checked, labs, timings, progress)
        timings["total"] = time.perf_counter() - t0
        change = self._change(region, previous)
        if len(pts) != n or not is_prefix:
            self._record(before, change)
        return self._result(change, ran, timings)

    def set_box(self, corner_a_lps: Sequence[float] | np.ndarray, corner_b_lps: Sequence[float] | np.ndarray) -> ClickResult:
        """Give the object by a 3D box (two opposite corners, LPS mm), as its first prompt.

        The object restarts from the starting mask with the box: a window centred on the box
        (zoomed out when the box is larger than one window) with a positive click at the box's
        centre (moved off it once a negative click lands near it: :mod:`.box_prompt`), the prediction confined to the box (the CVPR 2025 baseline's use of a box, since
        SAM-Med3D has no box embedding; :mod:`.editing`). The clicks so far are replayed after
        it; later clicks refine, and the box keeps bounding the object. One history step.

        Raises:
            PromptError: a corner is not 3 finite numbers, the box is flat, its centre lies
                outside the image, or a positive click so far lies outside it.
        """
        self._require_image()
        box = Box.from_corners(corner_a_lps, corner_b_lps)
        self._check_point(box.center_lps)
        self._check_labels(list(self._labels), first=True, points=self.points_lps, box=box)
        return self._restart(box)

    def clear_box(self) -> ClickResult:
        """Forget the box and replay the clicks without it (one history step)."""
        self._require_image()
        if self._box is not None and not self._points_lps and not self._editing:
            raise PromptError("the box is the object's only prompt: add a + click before removing it, or reset()")
        return self._restart(None)

    def _restart(self, box: Box | None) -> ClickResult:
        t0 = time.perf_counter()
        before = self.state()
        timings = dict.fromkeys(_NO_TIMINGS, 0.0)
        region, previous, ran = self._replay(box, list(self._points_lps), list(self._labels), timings, None)
        timings["total"] = time.perf_counter() - t0
        change = self._change(region, previous)
        self._record(before, change)
        return self._result(change, ran, timings)

    def _replay(
        self,
        box: Box | None,
        points: list[np.ndarray],
        labels: list[int],
        timings: dict[str, float],
        progress: Callable[[int, int], None] | None,
    ) -> tuple[Slices3, np.ndarray, list[Window]]:
        """Recompute the object from the starting mask (box first, then the clicks), reusing embeddings."""
        previous = self._mask.copy()  # type: ignore[union-attr]
        self._points_lps, self._labels = [], []
        self._box = box
        self._scale_spacing = self._object_spacing(np.asarray(points).reshape(-1, 3), np.asarray(labels))
        self._windows.set_logits(())  # type: ignore[union-attr]
        self._before_mask_change()
        self._mask[...] = self._base_mask  # type: ignore[index]
        ran: list[Window] = []
        if box is not None:
            ran += self._run_box(box, timings)
        for done, (point, label) in enumerate(zip(points, labels), 1):
            self._points_lps.append(point)
            self._labels.append(label)
            ran += self._run_click(point, bool(label), timings)[1]
            if progress is not None:
                progress(done, len(points))
        region = tuple(slice(0, s) for s in self._mask.shape)  # type: ignore[union-attr]
        return region, previous, ran  # type: ignore[return-value]

    def undo(self) -> ClickResult | None:
        """Undo the last click (or replay); returns None when there is nothing to undo."""
        self._require_image()
        step = self._history.undo()
        if step is None:
            return None
        change = step.mask_change()
        return self._move(step.before, change.reversed() if change is not None else None)

    def redo(self) -> ClickResult | None:
        """Redo the last undone step; returns None when there is nothing to redo."""
        self._require_image()
        step = self._history.redo()
        if step is None:
            return None
        return self._move(step.after, step.mask_change())

    # -- internals -------------------------------------------------------------------------------

    def _move(self, state: SessionState, change: MaskChange | None) -> ClickResult:
        if change is None:
            self.restore(state)
        else:
            self.restore(state, change.region, change.after)
        return self._result(change, [], {})

    def _change(self, region: Slices3 | None, previous: np.ndarray | None) -> MaskChange | None:
        if region is None or previous is None:
            return None
        return MaskChange(region, previous, self._mask[region].copy())  # type: ignore[index]

    def _record(self, before: SessionState, change: MaskChange | None) -> None:
        if self.keep_history:
            self._history.push(_Step(before, self.state(), change.packed() if change is not None else None))

    def _result(self, change: MaskChange | None, ran: list[Window], timings: dict[str, float]) -> ClickResult:
        result = ClickResult(self._mask, self._image, change, ran, timings)  # type: ignore[arg-type]
        self._results.add(result)
        self._steps += 1
        if self._steps % TRIM_EVERY_STEPS == 0:
            release_free_memory()  # see SAMMed3DLib.memory: the freed tensors of the last steps
        return result

    def _before_mask_change(self, region: Slices3 | None = None) -> None:
        """Hand results that still share the mask buffer its voxels of ``region`` (default: all) before they change."""
        self._results = save_for_results(self._results, self._mask, region)  # type: ignore[arg-type]

    def _check_labels(self, labels: Sequence[int], first: bool, points: np.ndarray, box: Any = KEEP_BOX) -> None:
        """Refuse a negative first click of a fresh object and positive clicks outside the box."""
        check_click_labels(labels, first, points, self._box if box is KEEP_BOX else box, self._editing)

    def _check_point(self, point_lps: Sequence[float] | np.ndarray) -> np.ndarray:
        return check_click_point(lps_point(point_lps, "a click"), self.geometry)
