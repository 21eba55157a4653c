"""The steps a :class:`~SAMMed3DLib.session.Session` runs in its windows: decode, paste, follow.

Kept apart from the session's public API (:mod:`.session`): this is how one prompt becomes voxels
of the mask. A window is decoded with every prompt of the object (the box's centre click first,
then the clicks; an edited mask as dense prompt), its prediction is pasted on the voxels it owns
(:meth:`~SAMMed3DLib.windows.WindowStack.owned`) except the voxels outside the box and the locked
ones, an edit keeps only the change the click points at, and an object started from clicks is
followed into neighbouring windows (``auto_extend``) and seen zoomed out (``zoom_out``).

**Zoom out for large objects** (in the spirit of nnInteractive's AutoZoom). When the mask of a
user's window is cut off by a face of the window (:meth:`~SAMMed3DLib.windows.WindowStack.border_seeds`)
and no zoomed-out window holds that window yet, the session opens a coarse window concentric with
it: the same grid at 2× the card's spacing, then, if the object leaves that one too, at 4×
(:data:`ZOOM_FACTORS`); beyond 4× it logs that the object is larger than the tool can see at once
(:data:`TOO_LARGE_MESSAGE`). A coarse window is decoded with every click of the object and decides
only the voxels that no finer window sees, so the object is whole after one click. It is decoded
once, when it opens, never by a later click (which changes only the window it falls in: a click never
flips a far part of the object). Its mask refines at the model's resolution: every native window
that opens afterwards (an automatic extension, or a click outside the windows so far) gets the
current mask, i.e. the coarse mask where no finer window decided, as its first dense prompt
(:func:`~SAMMed3DLib.editing.mask_prompt_logits`), as an edited mask is.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from .box_prompt import stand_in_click
from .editing import Box, box_window_spacing, change_budget, click_depth, force_click, keep_clicked_change, mask_prompt_logits
from .geometry import ImageGeometry, Window
from .islands import drop_new_islands
from .paste import paste_logits
from .refine import BoundaryRefinement
from .scale import object_spacing
from .windows import WINDOW_MARGIN_VOXELS, Slices3, WindowStack, WindowState, union_region

if TYPE_CHECKING:
    from .card import ModelCard
    from .model.sam3d import Sam3D

#: Automatic extension stops once the object has decided voxels in this many windows (each costs
#: one encoder pass and ~1 MB of cache); windows opened by user clicks are not limited, and windows
#: cached for earlier objects of the image (no logits since :meth:`Session.reset`) do not count.
MAX_WINDOWS = 12
#: Automatic extensions after one click (bounds the latency of a single click).
MAX_EXTENSIONS_PER_CLICK = 2
#: Zoom factors of the coarse windows tried for an object that leaves its window, in order: the
#: model's grid at 2× then 4× the card's spacing (384 mm, then 768 mm across for the default card).
ZOOM_FACTORS = (2, 4)
#: Whether a :class:`~SAMMed3DLib.session.Session` zooms out by default (``zoom_out``; the CLI's
#: ``--zoom-out``). Off: on the long structures of the shared data the default model's masks almost
#: never reach a window face, and where they do (thin vessels, the cortex) its coarse masks cost
#: Dice (README, "Large objects").
ZOOM_OUT_DEFAULT = False
#: Logged (warning) when the object leaves even the coarsest window.
TOO_LARGE_MESSAGE = (
    "the object is larger than the tool can see at once: it leaves even the %d× zoomed-out window (%.0f mm across); "
    "the parts beyond it are segmented where you click (each click far from the windows so far opens one there)"
)

logger = logging.getLogger(__name__)


class WindowSteps:
    """Mixin of :class:`~SAMMed3DLib.session.Session`: the per-window steps of a prompt.

    It holds no state of its own; the attributes below are the session's.
    """

    model: Sam3D
    card: ModelCard
    auto_extend: bool
    zoom_out: bool
    correction: str
    _geometry: ImageGeometry | None
    _windows: WindowStack | None
    _mask: np.ndarray | None
    _editing: bool
    _box: Box | None
    _locked: np.ndarray | None
    _image_zyx: np.ndarray | None
    refinement: BoundaryRefinement | None
    signed_clicks: bool
    drop_islands: bool
    adaptive_scale: bool
    _scale_spacing: float | None

    # Also used from the session: points_lps, labels, device, _before_mask_change(), _replay().

    def _prompts(self) -> tuple[np.ndarray, np.ndarray]:
        """The decoder's sparse prompts: the box's stand-in click (if any) first, then the clicks.

        The stand-in is the box's centre until a negative click contradicts it
        (:func:`~SAMMed3DLib.box_prompt.stand_in_click`).
        """
        points, labels = self.points_lps, self.labels
        if self._box is not None:
            stand_in = stand_in_click(self._box, self._geometry, self._mask, points, labels)  # type: ignore[arg-type]
            if stand_in is not None:
                points = np.concatenate([stand_in[None], points])
                labels = np.concatenate([[1], labels]).astype(np.int64)
        return points, labels

    def _decode(self, state: WindowState, timings: dict[str, float]) -> None:
        """Decode ``state``'s window with every prompt; an edited mask is the dense prompt."""
        t = time.perf_counter()
        self._windows.decode(state, *self._prompts(), dense=self._dense_prompt(state))  # type: ignore[union-attr]
        timings["decoder"] += time.perf_counter() - t

    def _dense_prompt(self, state: WindowState):  # noqa: ANN202 (torch.Tensor | None)
        """The mask as ``state``'s dense prompt: always for an edited mask; on a native window's first
        decode once the object is seen zoomed out (the coarse mask it refines); else None (the
        window's own logits)."""
        if self._editing or (state.logits is None and state.zoom == 1 and self._zoomed()):
            return mask_prompt_logits(self._mask, self._geometry, state.window, self.model.low_res_size, self.device)  # type: ignore[arg-type]
        return None

    def _zoomed(self) -> bool:
        """Whether a zoomed-out window has decided part of the object."""
        return any(w.zoom > 1 and w.output is not None for w in self._windows)  # type: ignore[union-attr]

    def _object_spacing(self, points: np.ndarray | None = None, labels: np.ndarray | None = None) -> float | None:
        """The window spacing the object's clicks call for (:mod:`.scale`), or None: the card's (or the box's).

        None (any window, the box's included) unless the session is ``adaptive_scale`` and has no
        box; an edited mask is seen at the card's spacing (never in a finer window an earlier object
        left cached). ``points``/``labels`` default to the session's clicks.
        """
        if not self.adaptive_scale or self._box is not None:
            return None
        if self._editing:
            return self.card.spacing_mm
        points = self.points_lps if points is None else points
        labels = self.labels if labels is None else labels
        return object_spacing(points, labels, self.card.spacing_mm, self.card.input_size)

    def _run_box(self, box: Box, timings: dict[str, float]) -> list[Window]:
        windows = self._windows
        assert windows is not None
        # Our models (a fine head) see a small box zoomed in; an official checkpoint keeps the
        # CVPR 2025 baseline's window at its own spacing.
        zoom_in = bool(getattr(self.model, "has_fine_head", False))
        spacing = box_window_spacing(box, self.card.input_size, self.card.spacing_mm, WINDOW_MARGIN_VOXELS, zoom_in=zoom_in)
        state = windows.open(box.center_lps, timings, spacing_mm=spacing)
        state.automatic = False
        self._decode(state, timings)
        t = time.perf_counter()
        self._paste_owned(state)
        timings["paste"] += time.perf_counter() - t
        return [state.window]

    def _run_click(
        self, point: np.ndarray, positive: bool, timings: dict[str, float]
    ) -> tuple[Slices3 | None, list[Window], np.ndarray | None]:
        """Predict in the window of ``point`` (opening one if needed), paste, maybe extend.

        Returns the changed region, the windows that ran and the region's voxels before.
        """
        windows = self._windows
        assert windows is not None
        needed = self._object_spacing()
        if needed is not None and self._scale_spacing is not None and needed > self._scale_spacing:
            # The object is larger than this spacing's window holds: see it again at ``needed``, every click replayed there.
            logger.debug("object seen again at %.3g mm: its positive clicks span more than a finer window holds", needed)
            region, previous, ran = self._replay(self._box, list(self._points_lps), list(self._labels), timings, None)  # type: ignore[attr-defined]
            return region, ran, previous
        spacing = self._scale_spacing
        state = windows.containing(point, spacing)
        if state is None:
            state = windows.open(point, timings, spacing_mm=spacing)
        state.automatic = False  # a user's click makes the window the user's
        self._decode(state, timings)
        t = time.perf_counter()
        local = self._editing and self.correction == "local"
        region, previous = self._paste_owned(state, (point, positive) if local else None)
        timings["paste"] += time.perf_counter() - t
        ran = [state.window]
        # An edited mask or a box already covers the object: windows open only where the user clicks.
        follow = not self._editing and self._box is None
        if follow and self.zoom_out:
            extra_region, extra_prev, extra_ran = self._zoom(state, timings)
            region, previous = self._grow(region, previous, extra_region, extra_prev)
            ran += extra_ran
        if follow and self.auto_extend:
            extra_region, extra_prev, extra_ran = self._extend(state, timings)
            region, previous = self._grow(region, previous, extra_region, extra_prev)
            ran += extra_ran
        if self.signed_clicks and region is not None and previous is not None:
            # The click's way only, in every window it ran (its own, the extensions, the zoomed ones).
            block = self._mask[region]  # type: ignore[index]
            (np.maximum if positive else np.minimum)(block, previous, out=block)
        if self.drop_islands and region is not None and previous is not None:
            points, labels = self._prompts()  # the box's stand-in click counts as a positive click
            positive_zyx = self._geometry.lps_to_index(points[labels == 1])[:, ::-1] if (labels == 1).any() else np.zeros((0, 3))  # type: ignore[union-attr]
            drop_new_islands(self._mask, region, previous, positive_zyx, np.asarray(self._geometry.spacing_xyz_mm)[::-1])  # type: ignore[arg-type, union-attr]
        return region, ran, previous

    def _zoom(self, state: WindowState, timings: dict[str, float]) -> tuple[Slices3 | None, np.ndarray | None, list[Window]]:
        """Open zoomed-out windows around ``state``'s when its mask leaves it (see the module docstring)."""
        windows = self._windows
        assert windows is not None
        seeds = windows.border_seeds(state)
        if windows.decided() >= MAX_WINDOWS or not seeds:
            return None, None, []
        if all(windows.seen_zoomed_out(seed) for seed in seeds):
            return None, None, []  # a coarse window already sees where the object goes on
        coarse = []  # the windows decoded now; one that has decided already keeps its mask
        for factor in ZOOM_FACTORS:
            zoomed = windows.open(state.window.center_lps, timings, automatic=True, zoom=factor)
            if zoomed.output is None:
                self._decode(zoomed, timings)
                coarse.append(zoomed)
            if not windows.border_seeds(zoomed):
                break
        else:
            if coarse:
                logger.warning(TOO_LARGE_MESSAGE, ZOOM_FACTORS[-1], zoomed.window.size * zoomed.window.spacing_mm)
        region: Slices3 | None = None
        previous: np.ndarray | None = None
        t = time.perf_counter()
        for zoomed in coarse:  # each decides only what no finer window sees
            r, prev_block = self._paste_owned(zoomed)
            region, previous = self._grow(region, previous, r, prev_block)
        timings["paste"] += time.perf_counter() - t
        return region, previous, [z.window for z in coarse]

    def _paste_owned(
        self, state: WindowState, click: tuple[np.ndarray, bool] | None = None
    ) -> tuple[Slices3 | None, np.ndarray | None]:
        """Paste ``state``'s prediction on the voxels it owns; returns the footprint and its voxels before.

        Voxels outside the box and locked voxels keep their value; with ``click`` (point, positive),
        only the change the click points at is kept (:func:`~SAMMed3DLib.editing.keep_clicked_change`).
        """
        windows = self._windows
        assert windows is not None and state.output is not None
        region = windows.footprint([state])
        if region is None:
            return None, None
        previous = self._mask[region].copy()  # type: ignore[index]
        # None: nothing to keep (a window alone, no box, no locks; saves three passes over a CT footprint).
        keep = ~windows.owned(state, region) if windows.shares(state, region) else None
        if self._box is not None:
            outside_box = ~self._box.region_mask(self._geometry, region)  # type: ignore[arg-type]
            keep = outside_box if keep is None else keep | outside_box
        if self._locked is not None:
            keep = self._locked[region] if keep is None else keep | self._locked[region]
        if keep is not None and not keep.any():
            keep = None
        self._before_mask_change(region)
        paste_logits(state.output[0, 0], state.window, self._geometry, self._mask)  # type: ignore[index]
        block = self._mask[region]  # type: ignore[index]
        if self.refinement is not None:
            self._refine_block(block, region)
        if keep is not None:
            np.copyto(block, previous, where=keep)
        if click is not None:
            point, positive = click
            index_xyz = self._geometry.lps_to_index(point[None])[0]  # type: ignore[union-attr]
            local = index_xyz[::-1] - np.array([r.start for r in region], dtype=np.float64)
            spacing_zyx = np.asarray(self._geometry.spacing_xyz_mm, dtype=np.float64)[::-1]  # type: ignore[union-attr]
            budget = change_budget(previous)
            block[...] = keep_clicked_change(previous, block, local, positive, spacing_zyx, budget=budget)
            force_click(block, local, positive, spacing_zyx, click_depth(previous, local, positive, spacing_zyx), budget)
            if keep is not None:
                np.copyto(block, previous, where=keep)  # the box and the locks bound the forced voxels too
        return region, previous

    def _refine_block(self, block: np.ndarray, region: Slices3) -> None:
        """Snap the pasted ``block`` (the mask at ``region``) to the image's edges, in place (:mod:`.refine`)."""
        start = np.array([r.start for r in region], dtype=np.float64)
        clicks = []
        if self._points_lps:
            index_zyx = self._geometry.lps_to_index(np.asarray(self._points_lps))[:, ::-1]  # type: ignore[union-attr]
            clicks = [(zyx - start, bool(label)) for zyx, label in zip(index_zyx, self.labels)]
        spacing_zyx = np.asarray(self._geometry.spacing_xyz_mm, dtype=np.float64)[::-1]  # type: ignore[union-attr]
        refined = self.refinement.refine(self._image_zyx[region], block, spacing_zyx, clicks)  # type: ignore[union-attr, index]
        block[...] = refined

    def _grow(
        self, region: Slices3 | None, previous: np.ndarray | None, more: Slices3 | None, more_previous: np.ndarray | None
    ) -> tuple[Slices3 | None, np.ndarray | None]:
        """The region changed so far and its voxels before, after a later step changed ``more``."""
        if more is None or more_previous is None:
            return region, previous
        union = union_region(region, more)
        return union, self._merge_previous(union, region, previous, more, more_previous)  # type: ignore[arg-type]

    def _merge_previous(
        self,
        union: Slices3,
        a_region: Slices3 | None,
        a_prev: np.ndarray | None,
        b_region: Slices3,
        b_prev: np.ndarray,
    ) -> np.ndarray:
        """Voxels of ``union`` before this click: current voxels, overwritten by saved blocks.

        ``b`` was saved after ``a`` was pasted, so ``a``'s block (the older one) wins.
        """
        out = self._mask[union].copy()  # type: ignore[index]
        for region, prev in ((b_region, b_prev), (a_region, a_prev)):
            if region is None or prev is None:
                continue
            local = tuple(slice(r.start - u.start, r.stop - u.start) for r, u in zip(region, union))
            out[local] = prev
        return out

    def _extend(self, state: WindowState, timings: dict[str, float]) -> tuple[Slices3 | None, np.ndarray | None, list[Window]]:
        """Open neighbour windows where the mask of ``state`` is cut off by a window face."""
        windows = self._windows
        assert windows is not None
        region: Slices3 | None = None
        previous: np.ndarray | None = None
        ran: list[Window] = []
        frontier = [state]
        for _ in range(MAX_EXTENSIONS_PER_CLICK):
            if not frontier or windows.decided() >= MAX_WINDOWS:
                break
            source = frontier.pop(0)
            seed = windows.border_seed(source)
            if seed is None:
                continue
            if windows.containing(seed, self._scale_spacing, decided=True) is not None:
                continue  # a window of this object already covers the continuation
            new = windows.containing(seed, self._scale_spacing)  # one cached for an earlier object: its embedding serves
            if new is None:
                new = windows.open(seed, timings, automatic=True, spacing_mm=self._scale_spacing)
            new.automatic = True
            t = time.perf_counter()
            windows.decode(new, seed[None], np.array([1]), dense=self._dense_prompt(new))  # the coarse mask, once zoomed out
            timings["decoder"] += time.perf_counter() - t
            t = time.perf_counter()
            r, prev_block = self._paste_owned(new)  # an automatic window owns no voxel of a user's window
            timings["paste"] += time.perf_counter() - t
            if r is None:
                continue
            region, previous = self._grow(region, previous, r, prev_block)
            ran.append(new.window)
            frontier.append(new)
        return region, previous, ran
