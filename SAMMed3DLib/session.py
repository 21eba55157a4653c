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
  decided — so what the user refined is never overwritten by an automatic step. See the README
  ("Large objects") for the strategy and its limits.

Undo/redo restore the mask voxels, the clicks and every window's feedback (and shown) logits exactly.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch

from .card import ModelCard, official_card
from .errors import DeviceError, PromptError, SessionStateError
from .geometry import ImageGeometry, Window, extract_window, lps_to_ras, ras_to_lps
from .io import image_from_array, validate_image
from .model.sam3d import Sam3D
from .paste import paste_logits, window_footprint
from .preprocessing import normalize_window

logger = logging.getLogger(__name__)

#: A click closer than this to a window face (in window voxels, 12 mm at 1.5 mm) opens a new
#: window centred on it instead: the model sees too little context around a click at the border.
WINDOW_MARGIN_VOXELS = 8
#: A mask touching a window face on at least this many window voxels counts as cut off there.
BORDER_TOUCH_VOXELS = 16
#: Automatic extension stops once a session holds this many windows (each costs one encoder
#: pass and ~1 MB of cache); windows opened by user clicks are not limited.
MAX_WINDOWS = 12
#: Automatic extensions after one click (bounds the latency of a single click).
MAX_EXTENSIONS_PER_CLICK = 2

Slices3 = tuple[slice, slice, slice]


class ClickResult:
    """Outcome of one click (or one replay of several clicks).

    Attributes:
        changed_zyx: (z, y, x) slices of the region that may have changed (union of the
            footprints of the windows that ran), or None if nothing ran.
        windows: windows that were run for this click.
        timings: seconds spent per step ("extract", "encoder", "decoder", "paste", "total").

    The mask is built on first access (:attr:`mask`): converting a 512×512×200 mask into a
    SimpleITK image costs ~30 ms, which callers that read ``session.mask_array`` or only
    ``changed_zyx`` (the Slicer logic, the evaluation loop) should not pay on every click. If
    the session changes before then, it hands the result a private copy of the mask first
    (a plain memory copy), so a result always shows the mask as it was after its click.
    """

    def __init__(self, mask_zyx: np.ndarray, reference: sitk.Image, changed_zyx: Slices3 | None, windows: list[Window], timings: dict[str, float]) -> None:
        self._mask_zyx: np.ndarray | None = mask_zyx
        self._owns_array = False
        self._reference = reference
        self._mask: sitk.Image | None = None
        self.changed_zyx = changed_zyx
        self.windows = windows
        self.timings = timings

    def _detach(self) -> None:
        """Called by the session before it modifies the buffer this result refers to."""
        if self._mask is None and not self._owns_array and self._mask_zyx is not None:
            self._mask_zyx = self._mask_zyx.copy()
            self._owns_array = True

    @property
    def mask(self) -> sitk.Image:
        """The whole mask after this step: SimpleITK uint8 image on the input image's grid."""
        if self._mask is None:
            image = sitk.GetImageFromArray(self._mask_zyx)
            image.CopyInformation(self._reference)
            self._mask, self._mask_zyx = image, None
        return self._mask

    @property
    def mask_array(self) -> np.ndarray:
        """The mask as a (z, y, x) uint8 array (a copy)."""
        return sitk.GetArrayFromImage(self.mask)


@dataclass
class _WindowState:
    """A window with its cached image embedding and its latest low-res logits."""

    window: Window
    embedding: torch.Tensor  # (1, C, G, G, G)
    logits: torch.Tensor | None = None  # (1, 1, L, L, L) the decoder's last logits (its next dense prompt)
    automatic: bool = False  # opened by auto-extension, not by a user click
    image: torch.Tensor | None = None  # (1, 1, S, S, S) normalised window, kept for a fine head only
    output: torch.Tensor | None = None  # logits of the mask shown: the fine head's, else ``logits``


@dataclass
class _Snapshot:
    """State needed to undo or redo one step."""

    points_lps: list[np.ndarray]
    labels: list[int]
    logits: list[tuple[torch.Tensor | None, torch.Tensor | None]]  # (logits, output) per window
    region_zyx: Slices3 | None
    voxels: np.ndarray | None


@dataclass
class _History:
    undo: list[tuple[_Snapshot, _Snapshot]] = field(default_factory=list)
    redo: list[tuple[_Snapshot, _Snapshot]] = field(default_factory=list)


def _union(a: Slices3 | None, b: Slices3 | None) -> Slices3 | None:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))  # type: ignore[return-value]


class Session:
    """Interactive promptable segmentation of one object in one 3D image.

    Args:
        model: a :class:`Sam3D`; its ``card`` attribute (set by ``load_model``) says how to
            preprocess. Official weights without a card use :func:`official_card`.
        image: optional image to set right away (see :meth:`set_image`).
        card: overrides ``model.card``.
        auto_extend: follow objects that leave the window (see module docstring).

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
    ) -> None:
        if not isinstance(model, Sam3D):
            raise TypeError(f"model must be a SAMMed3DLib Sam3D (from load_model or build_sam3d), got {type(model).__name__}")
        self.model = model.eval()
        self.card: ModelCard = card or getattr(model, "card", None) or official_card(config=model.config)
        if self.card.input_size != model.img_size:
            raise SessionStateError(
                f"model card {self.card.name!r} says input size {self.card.input_size} but the model takes {model.img_size}"
            )
        self.auto_extend = auto_extend
        self._image: sitk.Image | None = None
        self._geometry: ImageGeometry | None = None
        self._windows: list[_WindowState] = []
        self._points_lps: list[np.ndarray] = []
        self._labels: list[int] = []
        self._mask: np.ndarray | None = None
        self._base_mask: np.ndarray | None = None
        self._history = _History()
        self._results: weakref.WeakSet[ClickResult] = weakref.WeakSet()
        if image is not None:
            self.set_image(image)

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
            image = image_from_array(
                image,
                spacing_xyz_mm=spacing_xyz_mm or (1.0, 1.0, 1.0),
                origin_lps=origin_lps or (0.0, 0.0, 0.0),
                direction=np.eye(3) if direction is None else direction,
            )
        image = validate_image(image)
        if image.GetPixelID() != sitk.sitkFloat32:
            image = sitk.Cast(image, sitk.sitkFloat32)
        self._image = image
        self._geometry = ImageGeometry.from_image(image)
        self._windows = []
        self._base_mask = np.zeros(image.GetSize()[::-1], dtype=np.uint8)
        self._clear_interaction()

    def set_mask(self, mask_zyx: np.ndarray | sitk.Image) -> None:
        """Start from an existing mask (e.g. the segment being edited); clears clicks and undo."""
        self._require_image()
        arr = sitk.GetArrayFromImage(mask_zyx) if isinstance(mask_zyx, sitk.Image) else np.asarray(mask_zyx)
        if arr.shape != self._base_mask.shape:  # type: ignore[union-attr]
            raise SessionStateError(f"mask shape {arr.shape} does not match the image's (z, y, x) shape {self._base_mask.shape}")  # type: ignore[union-attr]
        self._base_mask = (arr > 0).astype(np.uint8)
        self._clear_interaction()

    def _clear_interaction(self) -> None:
        self._points_lps, self._labels = [], []
        for w in self._windows:
            w.logits = w.output = None
        self._mask = self._base_mask.copy() if self._base_mask is not None else None
        self._history = _History()

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
        return [w.window for w in self._windows]

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
            The updated mask and the region that may have changed.

        Raises:
            SessionStateError: no image set.
            PromptError: the point lies outside the image, is not 3 finite numbers, or the first
                click of the object is negative.
        """
        self._require_image()
        point = self._check_point(point_lps)
        if not self._points_lps and not positive:
            raise PromptError("the first click of an object must be positive: click inside the structure first")
        before = self._snapshot(None)
        self._points_lps.append(point)
        self._labels.append(1 if positive else 0)
        t0 = time.perf_counter()
        timings: dict[str, float] = {"extract": 0.0, "encoder": 0.0, "decoder": 0.0, "paste": 0.0}
        region, ran, prev = self._run_click(point, timings)
        timings["total"] = time.perf_counter() - t0
        self._history.undo.append((self._with_region(before, region, prev), self._snapshot(region)))
        self._history.redo.clear()
        logger.debug("click %s at %s: %s", "+" if positive else "-", np.round(point, 1), {k: round(v, 4) for k, v in timings.items()})
        return self._result(region, ran, timings)

    def click_ras(self, point_ras: Sequence[float] | np.ndarray, positive: bool = True) -> ClickResult:
        """:meth:`click` with a point in RAS mm (Slicer's convention)."""
        return self.click(ras_to_lps(np.asarray(point_ras, dtype=np.float64)), positive)

    def click_index(self, index_xyz: Sequence[float] | np.ndarray, positive: bool = True) -> ClickResult:
        """:meth:`click` with an ITK voxel index (x, y, z) of the image."""
        self._require_image()
        return self.click(self.geometry.index_to_lps(np.asarray(index_xyz, dtype=np.float64)), positive)

    def predict(self, points_lps: np.ndarray | Sequence[Sequence[float]], labels: Sequence[int] | np.ndarray) -> ClickResult:
        """Bring the session to exactly these clicks (in order) and return the mask.

        If the current clicks are a prefix of ``points_lps``, only the new clicks run (decoder
        only when they fall in existing windows). Otherwise (a click moved or was removed) the
        object is recomputed from the starting mask by replaying the clicks, reusing cached
        embeddings. This is what an editor that keeps a list of points needs.

        Args:
            points_lps: (N, 3) LPS mm.
            labels: (N,) 1 positive / 0 negative.
        """
        self._require_image()
        pts = np.asarray(points_lps, dtype=np.float64).reshape(-1, 3)
        labs = [int(v) for v in np.asarray(labels).reshape(-1)]
        if len(labs) != len(pts):
            raise PromptError(f"got {len(pts)} points but {len(labs)} labels")
        if any(v not in (0, 1) for v in labs):
            raise PromptError(f"labels must be 1 (positive) or 0 (negative), got {sorted(set(labs))}")
        # Validate every click before anything changes: a bad point leaves the session as it was.
        checked = [self._check_point(p) for p in pts]
        if labs and not labs[0]:
            raise PromptError("the first click of an object must be positive: click inside the structure first")
        n = len(self._points_lps)
        is_prefix = n <= len(pts) and all(
            np.array_equal(self._points_lps[i], pts[i]) and self._labels[i] == labs[i] for i in range(n)
        )
        t0 = time.perf_counter()
        region: Slices3 | None = None
        ran: list[Window] = []
        timings: dict[str, float] = {"extract": 0.0, "encoder": 0.0, "decoder": 0.0, "paste": 0.0}
        if is_prefix:
            for point, label in zip(checked[n:], labs[n:]):
                result = self.click(point, bool(label))
                region, ran = _union(region, result.changed_zyx), ran + result.windows
                for key in timings:
                    timings[key] += result.timings[key]
        else:
            # Replay from the starting mask; one undo entry restores the whole previous mask.
            before = self._snapshot(None)
            previous = self._mask.copy()  # type: ignore[union-attr]
            history = self._history
            self._clear_interaction()
            self._history = history
            for point, label in zip(checked, labs):
                self._points_lps.append(point)
                self._labels.append(label)
                ran += self._run_click(point, timings)[1]
            region = self._full_region()
            self._history.undo.append((self._with_region(before, region, previous), self._snapshot(region)))
            self._history.redo.clear()
        timings["total"] = time.perf_counter() - t0
        return self._result(region, ran, timings)

    def undo(self) -> ClickResult | None:
        """Undo the last click (or replay); returns None when there is nothing to undo."""
        self._require_image()
        if not self._history.undo:
            return None
        before, after = self._history.undo.pop()
        self._history.redo.append((before, after))
        self._restore(before)
        return self._result(before.region_zyx, [], {})

    def redo(self) -> ClickResult | None:
        """Redo the last undone step; returns None when there is nothing to redo."""
        self._require_image()
        if not self._history.redo:
            return None
        before, after = self._history.redo.pop()
        self._history.undo.append((before, after))
        self._restore(after)
        return self._result(after.region_zyx, [], {})

    # -- internals -------------------------------------------------------------------------------

    def _result(self, region: Slices3 | None, ran: list[Window], timings: dict[str, float]) -> ClickResult:
        result = ClickResult(self._mask, self._image, region, ran, timings)  # type: ignore[arg-type]
        self._results.add(result)
        return result

    def _before_mask_change(self) -> None:
        """Give results that still refer to the mask buffer their own copy before it changes."""
        for result in list(self._results):
            result._detach()
        self._results.clear()

    def _full_region(self) -> Slices3:
        return tuple(slice(0, s) for s in self._mask.shape)  # type: ignore[union-attr,return-value]

    def _snapshot(self, region: Slices3 | None) -> _Snapshot:
        voxels = self._mask[region].copy() if region is not None else None  # type: ignore[index]
        return _Snapshot(list(self._points_lps), list(self._labels), [(w.logits, w.output) for w in self._windows], region, voxels)

    @staticmethod
    def _with_region(snapshot: _Snapshot, region: Slices3 | None, previous_voxels: np.ndarray | None) -> _Snapshot:
        snapshot.region_zyx, snapshot.voxels = region, previous_voxels
        return snapshot

    def _restore(self, snap: _Snapshot) -> None:
        self._points_lps = list(snap.points_lps)
        self._labels = list(snap.labels)
        for i, w in enumerate(self._windows):
            w.logits, w.output = snap.logits[i] if i < len(snap.logits) else (None, None)
        if snap.region_zyx is not None and snap.voxels is not None:
            self._before_mask_change()
            self._mask[snap.region_zyx] = snap.voxels  # type: ignore[index]

    def _check_point(self, point_lps: Sequence[float] | np.ndarray) -> np.ndarray:
        try:
            point = np.asarray(point_lps, dtype=np.float64).reshape(3)
        except (ValueError, TypeError) as exc:
            raise PromptError(f"a click must be 3 numbers (x, y, z in mm), got {point_lps!r}") from exc
        if not np.all(np.isfinite(point)):
            raise PromptError(f"a click must be finite, got {point.tolist()}")
        if not self.geometry.contains_lps(point[None])[0]:
            index = self.geometry.lps_to_index(point[None])[0]
            raise PromptError(
                f"click at LPS {np.round(point, 2).tolist()} mm (RAS {np.round(lps_to_ras(point), 2).tolist()}, "
                f"voxel {np.round(index, 1).tolist()}) lies outside the image of size {list(self.geometry.size_xyz)}: "
                "click inside the image (check that points and image share the same coordinate frame)"
            )
        return point

    def _window_for(self, point: np.ndarray) -> _WindowState | None:
        """The most recent window holding ``point`` at least WINDOW_MARGIN_VOXELS from its faces."""
        size = self.card.input_size
        for state in reversed(self._windows):
            idx = state.window.lps_to_index(point[None])[0]
            if np.all(idx >= WINDOW_MARGIN_VOXELS) and np.all(idx <= size - 1 - WINDOW_MARGIN_VOXELS):
                return state
        return None

    def _open_window(self, center_lps: np.ndarray, timings: dict[str, float], automatic: bool = False) -> _WindowState:
        window = Window.centred_at(center_lps, self.card.input_size, self.card.spacing_mm)
        t = time.perf_counter()
        array = normalize_window(extract_window(self._image, window), self.card)
        timings["extract"] += time.perf_counter() - t
        t = time.perf_counter()
        embedding = self._encode(array)
        timings["encoder"] += time.perf_counter() - t
        state = _WindowState(window, embedding, automatic=automatic)
        if self.model.has_fine_head:
            state.image = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None].to(embedding.device)
        self._windows.append(state)
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
            for w in self._windows:
                w.embedding = w.embedding.cpu()
                w.logits = w.logits.cpu() if w.logits is not None else None
                w.output = w.output.cpu() if w.output is not None else None
                w.image = w.image.cpu() if w.image is not None else None
            try:
                with torch.inference_mode():
                    return self.model.image_encoder(x)
            except RuntimeError as exc:  # pragma: no cover - depends on the machine
                raise DeviceError(f"the image encoder failed on the CPU after a CUDA out-of-memory error: {exc}") from exc

    def _decode(self, state: _WindowState, points: np.ndarray, labels: np.ndarray) -> None:
        """Run the decoder (and the fine head, if any) in ``state``'s window; sets logits/output."""
        size = self.card.input_size
        dev = self.device
        idx = state.window.lps_to_index(points) if len(points) else np.zeros((0, 3))
        inside = np.all((idx >= 0) & (idx <= size - 1), axis=1)
        coords = torch.as_tensor(idx[inside], dtype=torch.float32, device=dev)[None]
        labs = torch.as_tensor(labels[inside], dtype=torch.int64, device=dev)[None]
        prev = state.logits
        if prev is None:
            prev = torch.zeros((1, 1, *self.model.low_res_size), dtype=torch.float32, device=dev)
        coords_in, labs_in = (coords, labs) if coords.shape[1] else (None, None)
        with torch.inference_mode():
            logits, _ = self.model.predict_low_res(state.embedding, coords_in, labs_in, prev)
            output = self.model.refine(state.image, logits, coords_in, labs_in)
        state.logits, state.output = logits, output

    def _run_click(self, point: np.ndarray, timings: dict[str, float]) -> tuple[Slices3 | None, list[Window], np.ndarray | None]:
        """Predict in the window of ``point`` (opening one if needed), paste, maybe extend.

        Returns the changed region, the windows that ran and the region's voxels before.
        """
        state = self._window_for(point)
        if state is None:
            state = self._open_window(point, timings)
        points, labels = self.points_lps, self.labels
        t = time.perf_counter()
        self._decode(state, points, labels)
        timings["decoder"] += time.perf_counter() - t
        region = self._footprint_union([state])
        previous = self._mask[region].copy() if region is not None else None  # type: ignore[index]
        t = time.perf_counter()
        self._before_mask_change()
        paste_logits(state.output[0, 0], state.window, self._geometry, self._mask)  # type: ignore[index]
        timings["paste"] += time.perf_counter() - t
        ran = [state.window]
        if self.auto_extend:
            extra_region, extra_prev, extra_ran = self._extend(state, timings)
            if extra_region is not None:
                union = _union(region, extra_region)
                previous = self._merge_previous(union, region, previous, extra_region, extra_prev)
                region = union
                ran += extra_ran
        return region, ran, previous

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

    def _footprint_union(self, states: Sequence[_WindowState]) -> Slices3 | None:
        region: Slices3 | None = None
        for s in states:
            region = _union(region, window_footprint(s.window, self._geometry))
        return region

    def _extend(self, state: _WindowState, timings: dict[str, float]) -> tuple[Slices3 | None, np.ndarray | None, list[Window]]:
        """Open neighbour windows where the mask of ``state`` is cut off by a window face."""
        region: Slices3 | None = None
        previous: np.ndarray | None = None
        ran: list[Window] = []
        frontier = [state]
        for _ in range(MAX_EXTENSIONS_PER_CLICK):
            if not frontier or len(self._windows) >= MAX_WINDOWS:
                break
            source = frontier.pop(0)
            seed = self._border_seed(source)
            if seed is None:
                continue
            if self._window_for(seed) is not None:
                continue  # an existing window already covers the continuation
            covered = list(self._windows)
            new = self._open_window(seed, timings, automatic=True)
            t = time.perf_counter()
            self._decode(new, seed[None], np.array([1]))
            timings["decoder"] += time.perf_counter() - t
            r = self._footprint_union([new])
            if r is None:
                continue
            prev_block = self._mask[r].copy()  # type: ignore[index]
            t = time.perf_counter()
            scratch = self._mask.copy()  # type: ignore[union-attr]
            paste_logits(new.output[0, 0], new.window, self._geometry, scratch)  # type: ignore[index]
            # Only voxels no earlier window covers take the automatic prediction.
            keep_old = self._covered_mask(r, covered)
            block = scratch[r]
            block[keep_old] = prev_block[keep_old]
            self._before_mask_change()
            self._mask[r] = block  # type: ignore[index]
            timings["paste"] += time.perf_counter() - t
            if region is None:
                region, previous = r, prev_block
            else:
                union = _union(region, r)
                previous = self._merge_previous(union, region, previous, r, prev_block)  # type: ignore[arg-type]
                region = union
            ran.append(new.window)
            frontier.append(new)
        return region, previous, ran

    def _covered_mask(self, region: Slices3, states: Sequence[_WindowState]) -> np.ndarray:
        """Boolean (z, y, x) block of ``region``: voxel centre inside any of ``states``' windows."""
        zz, yy, xx = np.meshgrid(*(np.arange(s.start, s.stop) for s in region), indexing="ij")
        index_xyz = np.stack([xx.ravel(), yy.ravel(), zz.ravel()], axis=1).astype(np.float64)
        points = self._geometry.index_to_lps(index_xyz)
        covered = np.zeros(len(points), dtype=bool)
        size = self.card.input_size
        for s in states:
            idx = s.window.lps_to_index(points)
            covered |= np.all((idx >= -0.5) & (idx <= size - 0.5), axis=1)
        return covered.reshape(zz.shape)

    def _border_seed(self, state: _WindowState) -> np.ndarray | None:
        """LPS point inside the mask where it touches a face of ``state``'s window, or None."""
        assert state.output is not None
        size = self.card.input_size
        with torch.inference_mode():
            up = torch.nn.functional.interpolate(state.output, size=(size,) * 3, mode="trilinear", align_corners=False)[0, 0]
        positive = up > self.model.mask_threshold
        best = None
        for axis in range(3):
            for side in (0, size - 1):
                face = positive.select(axis, side)
                count = int(face.sum())
                if count >= BORDER_TOUCH_VOXELS and (best is None or count > best[0]):
                    best = (count, axis, side, face)
        if best is None:
            return None
        _, axis, side, face = best
        coords = torch.nonzero(face).double()
        centre = coords.mean(0)
        nearest = coords[torch.argmin(((coords - centre) ** 2).sum(1))]
        index = [0.0, 0.0, 0.0]
        other = [a for a in range(3) if a != axis]
        index[axis] = float(side)
        index[other[0]], index[other[1]] = float(nearest[0]), float(nearest[1])
        point = state.window.index_to_lps(np.array([index]))[0]
        if not self._geometry.contains_lps(point[None])[0]:
            return None  # the object leaves the image there: nothing to follow
        return point
