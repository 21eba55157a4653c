"""The windows of one object: where the model looks, what it has seen, and where the object goes on.

A :class:`WindowStack` belongs to one :class:`~SAMMed3DLib.session.Session` (one image, one
object). Each :class:`WindowState` is a ``card.input_size``³ window of ``card.spacing_mm`` voxels
(axes toward R, A, S; :class:`~SAMMed3DLib.geometry.Window`) with

* its image embedding, computed once when the window opens (the only encoder pass it costs),
* the decoder's latest low-resolution logits, fed back as the next dense prompt, and the logits of
  the mask shown (a fine head's 64³ output when the model has one, else the decoder's own),
* the normalised window image when the model has a fine head (the head reads it on every click).

The stack answers the questions the session asks on every click: which window a click belongs
to (:meth:`WindowStack.containing`), which voxels of the original grid a window decides
(:meth:`footprint`, :meth:`owned`), and where the object leaves a window
(:meth:`border_seed`, the start of the next automatic window). It never touches the mask: that
is the session's.

**One mask, many windows.** Windows overlap (a click near a face opens a new one, objects larger
than a window are followed), and each voxel must be decided by one rule, whatever the order of
the clicks: :meth:`WindowStack.owned` gives each voxel to the window that has decided something
and sees it with the most context, i.e. the smallest Chebyshev distance from the window's centre
(windows share spacing and axes, so distances compare; ties go to the later window), where
windows opened or clicked by the user always outrank automatic ones. A window pastes its
prediction only on the voxels it owns, so a click changes only what its window decides, an
automatic extension never overwrites a user's window, and no click flips a far part of the
object that its window does not own.

**Zoomed-out windows.** For an object larger than a window the session also opens coarse windows
(``zoom`` 2 or 4: the same grid at 2× or 4× the spacing, centred on the native window; see
:mod:`.session_steps`). They see the whole object at once and decide only the voxels that no
finer window sees: in :meth:`WindowStack.owned` a finer window outranks a coarser one wherever
it sees a voxel, before the user/automatic and distance rules, which order windows of one zoom.
A click never lands in a coarse window (:meth:`containing` skips them): the user works at the
model's own resolution.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from .card import ModelCard
from .errors import DeviceError
from .geometry import ImageGeometry, Window
from .model.click_maps import ClickMapCache, reuse_click_maps
from .model.sam3d import Sam3D
from .paste import window_distance, window_footprint
from .preprocessing import normalize_window
from .window_image import extract_window_fast

logger = logging.getLogger(__name__)

#: A click closer than this to a window face (in window voxels, 12 mm at 1.5 mm) opens a new
#: window centred on it instead: the model sees too little context around a click at the border.
WINDOW_MARGIN_VOXELS = 8
#: A mask touching a window face on at least this many window voxels counts as cut off there.
BORDER_TOUCH_VOXELS = 16

Slices3 = tuple[slice, slice, slice]


def union_region(a: Slices3 | None, b: Slices3 | None) -> Slices3 | None:
    """Smallest (z, y, x) box holding both boxes (None is the empty box)."""
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))  # type: ignore[return-value]


def intersect_regions(a: Slices3, b: Slices3 | None) -> Slices3 | None:
    """Common part of two (z, y, x) boxes, or None when they do not meet."""
    if b is None:
        return None
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b))
    return out if all(s.start < s.stop for s in out) else None  # type: ignore[return-value]


#: Shown logits of a window restored from a state: it has decided voxels, its logits were not kept.
DECIDED = torch.empty(0)


@dataclass
class WindowState:
    """A window with its cached image embedding and its latest low-res logits."""

    window: Window
    embedding: torch.Tensor  # (1, C, G, G, G)
    logits: torch.Tensor | None = None  # (1, 1, L, L, L) the decoder's last logits (its next dense prompt)
    automatic: bool = False  # opened by auto-extension, not by a user click
    image: torch.Tensor | None = None  # (1, 1, S, S, S) normalised window, kept for a fine head only
    output: torch.Tensor | None = None  # logits of the mask shown: the fine head's, else ``logits``
    zoom: int = 1  # 1 at the card's (or a box's) spacing; 2 or 4 for a zoomed-out window of a large object


#: An image whose voxels all fit in fewer model voxels than this per axis gives the model nothing to see.
MIN_IMAGE_WINDOW_VOXELS = 4


def _warn_about_scale(geometry: ImageGeometry, card: ModelCard) -> None:
    """Warn when the image is far too small or its voxels far too large for the model's window grid."""
    extent = geometry.spacing_xyz_mm * np.asarray(geometry.size_xyz)
    if float(extent.max()) < MIN_IMAGE_WINDOW_VOXELS * card.spacing_mm:
        logger.warning(
            "the image is %.3g mm across, less than %d voxels of the model's %.3g mm window grid: the model sees almost nothing "
            "of it; check the image's spacing (mm expected)", float(extent.max()), MIN_IMAGE_WINDOW_VOXELS, card.spacing_mm,
        )
    elif float(geometry.spacing_xyz_mm.min()) > card.window_mm / MIN_IMAGE_WINDOW_VOXELS:
        logger.warning(
            "the image's voxels (%.3g mm or more) are larger than a quarter of the model's %.3g mm window: the model sees a few "
            "voxels at a time; check the image's spacing (mm expected)", float(geometry.spacing_xyz_mm.min()), card.window_mm,
        )


class WindowStack:
    """The windows opened so far for one object in one image, oldest first.

    Args:
        model: the network (its device is where embeddings live).
        card: the model card (window size and spacing, normalisation).
        image: the float32 SimpleITK image being segmented.
        geometry: its :class:`ImageGeometry`.
    """

    def __init__(self, model: Sam3D, card: ModelCard, image: sitk.Image, geometry: ImageGeometry) -> None:
        self.model = model
        self.card = card
        self.image = image
        self.geometry = geometry
        self.states: list[WindowState] = []
        # The click maps of the window decoded last: its next click adds one click to them
        # instead of recomputing all (0.17 s at 1,000 clicks; model/click_maps.py).
        self._click_maps = ClickMapCache()
        self._click_maps_of: WindowState | None = None
        _warn_about_scale(geometry, card)

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[WindowState]:
        return iter(self.states)

    def __getitem__(self, index: int) -> WindowState:
        return self.states[index]

    def decided(self) -> int:
        """How many windows hold logits: the windows this object has been decoded in (cached ones of earlier objects hold none)."""
        return sum(1 for state in self.states if state.output is not None)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def logits(self) -> tuple[tuple[torch.Tensor | None, torch.Tensor | None], ...]:
        """(decoder logits, shown logits) of every window; tensors are replaced, never modified.

        A fine head's shown logits (1 MB a window for the default model, eight times the
        decoder's) are not kept: :data:`DECIDED` stands for them. They only matter right after
        the decode that made them (pasting, following the object), and the mask they gave is in
        every step's :class:`~SAMMed3DLib.steps.MaskChange`; so an undo history of 50 steps holds
        6 MB of logits instead of 55 MB.
        """
        return tuple((w.logits, w.output if w.output is None or w.output is w.logits else DECIDED) for w in self.states)

    def set_logits(self, logits: Sequence[tuple[torch.Tensor | None, torch.Tensor | None]]) -> None:
        """Put back :meth:`logits`; windows opened since then get none (they start afresh)."""
        for i, w in enumerate(self.states):
            w.logits, w.output = logits[i] if i < len(logits) else (None, None)

    def containing(self, point_lps: np.ndarray, spacing_mm: float | None = None, decided: bool = False) -> WindowState | None:
        """The most recent window holding ``point_lps`` at least WINDOW_MARGIN_VOXELS from its faces.

        Zoomed-out windows are left out: a click is always decoded at the model's own resolution.
        With ``spacing_mm``, only windows of that spacing count (the spacing the object is seen at,
        :mod:`.scale`); windows of other spacings keep their embeddings for later. With ``decided``,
        only windows that hold logits (this object's, not ones cached for an earlier object).
        """
        for state in reversed(self.states):
            if spacing_mm is not None and state.window.spacing_mm != spacing_mm:
                continue
            if decided and state.output is None:
                continue
            if state.zoom == 1 and self._holds(state, point_lps):
                return state
        return None

    def seen_zoomed_out(self, point_lps: np.ndarray) -> bool:
        """Whether a zoomed-out window that has decided voxels holds ``point_lps`` WINDOW_MARGIN_VOXELS from its faces."""
        return any(state.zoom > 1 and state.output is not None and self._holds(state, point_lps) for state in self.states)

    def _holds(self, state: WindowState, point_lps: np.ndarray) -> bool:
        idx = state.window.lps_to_index(point_lps[None])[0]
        return bool(np.all(idx >= WINDOW_MARGIN_VOXELS) and np.all(idx <= self.card.input_size - 1 - WINDOW_MARGIN_VOXELS))

    def open(
        self,
        center_lps: np.ndarray,
        timings: dict[str, float],
        automatic: bool = False,
        spacing_mm: float | None = None,
        zoom: int = 1,
    ) -> WindowState:
        """Open a window centred on ``center_lps``: resample, normalise, encode (adds to ``timings``).

        ``spacing_mm`` overrides the card's spacing (a box larger than a window is seen zoomed out);
        ``zoom`` > 1 opens a zoomed-out window of a large object at ``zoom`` × the card's spacing.
        """
        if zoom != 1:
            spacing_mm = self.card.spacing_mm * zoom
        window = Window.centred_at(center_lps, self.card.input_size, self.card.spacing_mm if spacing_mm is None else spacing_mm)
        for state in self.states:
            if state.window == window and state.zoom == zoom:  # the same window again (a replay): its embedding is cached
                state.automatic = state.automatic and automatic
                return state
        t = time.perf_counter()
        # a fresh array from either path, normalised in place
        array = normalize_window(extract_window_fast(self.image, window, self.geometry), self.card, copy=False)
        timings["extract"] += time.perf_counter() - t
        t = time.perf_counter()
        embedding = self._encode(array)
        timings["encoder"] += time.perf_counter() - t
        state = WindowState(window, embedding, automatic=automatic, zoom=zoom)
        if self.model.has_fine_head:
            state.image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None].to(embedding.device)
        self.states.append(state)
        return state

    def _encode(self, array: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
        try:
            with torch.inference_mode():
                return self.model.image_encoder(x.to(self.device))
        except torch.cuda.OutOfMemoryError:
            logger.warning("CUDA ran out of memory for the image encoder; moving the model to the CPU and retrying")
            torch.cuda.empty_cache()
            self.model.to("cpu")
            self._click_maps.clear()
            for w in self.states:
                w.embedding = w.embedding.cpu()
                w.logits = w.logits.cpu() if w.logits is not None else None
                w.output = w.output.cpu() if w.output is not None else None
                w.image = w.image.cpu() if w.image is not None else None
            try:
                with torch.inference_mode():
                    return self.model.image_encoder(x)
            except RuntimeError as exc:  # pragma: no cover - depends on the machine
                raise DeviceError(f"the image encoder failed on the CPU after a CUDA out-of-memory error: {exc}") from exc

    def decode(self, state: WindowState, points_lps: np.ndarray, labels: np.ndarray, dense: torch.Tensor | None = None) -> None:
        """Run the decoder (and the fine head, if any) in ``state``'s window; sets its logits/output.

        Args:
            points_lps: (N, 3) the object's clicks, LPS mm; those outside the window are left out.
            labels: (N,) 1 positive / 0 negative.
            dense: the dense prompt, (1, 1, *low_res_size) logits (an existing mask's,
                :func:`~SAMMed3DLib.editing.mask_prompt_logits`); by default the window's previous
                logits, zeros on its first decode.
        """
        size = self.card.input_size
        dev = self.device
        idx = state.window.lps_to_index(points_lps) if len(points_lps) else np.zeros((0, 3))
        inside = np.all((idx >= 0) & (idx <= size - 1), axis=1)
        coords = torch.as_tensor(idx[inside], dtype=torch.float32, device=dev)[None]
        labs = torch.as_tensor(labels[inside], dtype=torch.int64, device=dev)[None]
        prev = state.logits if dense is None else dense
        if prev is None:
            prev = torch.zeros((1, 1, *self.model.low_res_size), dtype=torch.float32, device=dev)
        coords_in, labs_in = (coords, labs) if coords.shape[1] else (None, None)
        if self._click_maps_of is not state:
            self._click_maps.clear()
            self._click_maps_of = state
        with torch.inference_mode(), reuse_click_maps(self._click_maps):
            logits, _ = self.model.predict_low_res(state.embedding, coords_in, labs_in, prev)
            # A view of the decoder's four-mask output: the copy keeps 128 kB a click alive (in
            # the window and in every undo step that refers to it) instead of 512 kB. float32
            # also under a caller's bf16 autocast: the next decode's dense prompt, the blend and
            # the paste-back read these as float32.
            logits = logits.to(torch.float32, copy=True)
            output = self.model.refine(state.image, logits, coords_in, labs_in)
            if output is not None and output.dtype != torch.float32:
                output = output.float()
        state.logits, state.output = logits, output

    def footprint(self, states: Sequence[WindowState]) -> Slices3 | None:
        """(z, y, x) box of the original grid holding the footprints of ``states``' windows."""
        region: Slices3 | None = None
        for s in states:
            region = union_region(region, window_footprint(s.window, self.geometry))
        return region

    def shares(self, state: WindowState, region: Slices3) -> bool:
        """Whether another window that holds logits sees part of ``region`` (else :meth:`owned` is all True)."""
        return any(
            other is not state and other.output is not None and intersect_regions(region, window_footprint(other.window, self.geometry)) is not None
            for other in self.states
        )

    def owned(self, state: WindowState, region: Slices3) -> np.ndarray:
        """Boolean (z, y, x) block of ``region``: the voxels ``state``'s window decides (see module docstring).

        Voxels outside every other window are ``state``'s; only the overlaps with windows that
        hold logits are computed (one distance per voxel and window).
        """
        owned = np.ones(tuple(s.stop - s.start for s in region), dtype=bool)
        mine = self.states.index(state)
        half = self.card.input_size / 2.0
        for index, other in enumerate(self.states):
            if other is state or other.output is None or other.zoom > state.zoom:
                continue  # a coarser window never takes a voxel from a finer one
            overlap = intersect_regions(region, window_footprint(other.window, self.geometry))
            if overlap is None:
                continue
            d_other = window_distance(other.window, self.geometry, overlap)
            if other.zoom < state.zoom:
                local = tuple(slice(o.start - r.start, o.stop - r.start) for o, r in zip(overlap, region))
                owned[local] &= ~(d_other <= half)  # the finer window wins wherever it sees the voxel
                continue
            d_mine = window_distance(state.window, self.geometry, overlap)
            if other.automatic != state.automatic:
                wins = np.full(d_other.shape, state.automatic)  # the user's window wins wherever both see the voxel
            elif index > mine:
                wins = d_other <= d_mine
            else:
                wins = d_other < d_mine
            local = tuple(slice(o.start - r.start, o.stop - r.start) for o, r in zip(overlap, region))
            owned[local] &= ~(wins & (d_other <= half))
        return owned

    def cut_faces(self, state: WindowState) -> list[tuple[int, np.ndarray]]:
        """(touching voxels, LPS point) of each face of ``state``'s window that cuts the mask off, most cut first.

        A face counts when the mask touches it on at least :data:`BORDER_TOUCH_VOXELS` window
        voxels; its point is the touching voxel nearest the touching part's centre (it may lie
        outside the image, where the object leaves the image).
        """
        if state.output is None or state.output.numel() == 0:
            return []
        size = self.card.input_size
        with torch.inference_mode():
            up = torch.nn.functional.interpolate(state.output, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0]
        positive = up > self.model.mask_threshold
        faces = []
        for axis in range(3):
            for side in (0, size - 1):
                face = positive.select(axis, side)
                count = int(face.sum())
                if count >= BORDER_TOUCH_VOXELS:
                    faces.append((count, axis, side, face))
        out = []
        for count, axis, side, face in sorted(faces, key=lambda f: -f[0]):
            coords = torch.nonzero(face).double()
            centre = coords.mean(0)
            nearest = coords[torch.argmin(((coords - centre) ** 2).sum(1))]
            index = [0.0, 0.0, 0.0]
            other = [a for a in range(3) if a != axis]
            index[axis] = float(side)
            index[other[0]], index[other[1]] = float(nearest[0]), float(nearest[1])
            out.append((count, state.window.index_to_lps(np.array([index]))[0]))
        return out

    def border_seeds(self, state: WindowState) -> list[np.ndarray]:
        """The points of :meth:`cut_faces` inside the image: where the object goes on beyond the window."""
        return [point for _, point in self.cut_faces(state) if self.geometry.contains_lps(point[None])[0]]

    def border_seed(self, state: WindowState) -> np.ndarray | None:
        """LPS point inside the mask where it touches the face of ``state``'s window it touches most, or None.

        None also when that point lies outside the image: the object leaves the image there.
        """
        faces = self.cut_faces(state)
        if not faces or not self.geometry.contains_lps(faces[0][1][None])[0]:
            return None
        return faces[0][1]
