"""What one step of a :class:`~SAMMed3DLib.session.Session` produces, and what it takes to go back.

* :class:`SessionState`: the session apart from its mask (clicks, every window's logits); cheap,
  since the logits tensors are shared (the session replaces them, never modifies them).
* :class:`MaskChange`: the voxels a step changed (region, before, after), so a caller writes
  exactly those and an undo puts ``before`` back.
* :class:`PackedMaskChange`: the same change as a history keeps it, one bit a voxel
  (:meth:`MaskChange.packed`), zlib-compressed when that pays: a 0/1 block of a real mask is
  mostly runs and shrinks several hundred-fold (the two 4.4 MB blocks of a click on a
  512 × 512 × 200 CT to 24 kB, measured) in about 1.5 ms a block, while the blotchy mask of an
  untrained model shrinks less than 3-fold in 20-30 ms a block; a sample of the bits decides.
* :class:`ClickResult`: what a click, replay, undo or redo returns (the change, the windows that
  ran, timings, and the whole mask on demand).
"""

from __future__ import annotations

import weakref
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from .geometry import Window
from .windows import Slices3


@dataclass(frozen=True)
class SessionState:
    """Everything of a session but its mask: the clicks and every window's logits.

    Attributes:
        points_lps: (N, 3) float64 clicks, LPS mm, in order.
        labels: (N,) int64, 1 positive / 0 negative.
        window_logits: per window opened when the state was taken, (decoder logits, shown
            logits); windows opened later start from no logits when the state is restored.
        box: the object's box (:class:`~SAMMed3DLib.editing.Box`), or None.
    """

    points_lps: np.ndarray
    labels: np.ndarray
    window_logits: tuple[tuple[torch.Tensor | None, torch.Tensor | None], ...]
    box: Any = None


@dataclass(frozen=True)
class MaskChange:
    """The voxels one step changed: ``before`` and ``after`` (z, y, x) uint8 blocks of ``region``.

    Voxels outside ``region`` did not change; inside it, ``before != after`` marks those that did.
    """

    region: Slices3
    before: np.ndarray
    after: np.ndarray

    def reversed(self) -> MaskChange:
        return MaskChange(self.region, self.after, self.before)

    def packed(self) -> PackedMaskChange | MaskChange:
        """This change in the compact form of :class:`PackedMaskChange`, or itself if it cannot be packed.

        Only uint8 blocks of 0 and 1 (the session's masks) are packed; anything else is returned
        as is, so packing never loses a value. A few milliseconds for a CT window's footprint.
        """
        blocks = (self.before, self.after)
        if any(b.dtype != np.uint8 or b.shape != self.before.shape or (b.size and b.max() > 1) for b in blocks):
            return self
        packed = [_compress(np.packbits(b, axis=None)) for b in blocks]
        return PackedMaskChange(self.region, self.before.shape, packed[0][0], packed[1][0], (packed[0][1], packed[1][1]))


#: zlib level of :class:`PackedMaskChange`: level 1 already removes the runs of a mask block
#: (higher levels cost several times more time for a few percent).
_PACK_LEVEL = 1
#: Packed bits up to this size are always compressed (at most ~1 ms even when they do not shrink).
_ALWAYS_COMPRESS_BYTES = 64 * 1024
#: Larger ones are compressed only when a sample of them shrinks to at most this fraction: an
#: organ's mask shrinks to 3 % in 1.5 ms a CT footprint; an untrained model's blotchy mask to
#: 40 %, but in 30 ms a block, which is not worth it.
_COMPRESS_IF_RATIO = 0.15
_SAMPLE_CHUNKS, _SAMPLE_CHUNK_BYTES = 4, 4 * 1024


def _compress(bits: np.ndarray) -> tuple[bytes, bool]:
    """(data, compressed): zlib of the packed bits when that pays, else the bits as they are."""
    raw = bits.tobytes()
    if len(raw) > _ALWAYS_COMPRESS_BYTES:
        starts = np.linspace(0, len(raw) - _SAMPLE_CHUNK_BYTES, _SAMPLE_CHUNKS).astype(np.int64)
        sample = b"".join(raw[s : s + _SAMPLE_CHUNK_BYTES] for s in starts)
        if len(zlib.compress(sample, _PACK_LEVEL)) > _COMPRESS_IF_RATIO * len(sample):
            return raw, False
    return zlib.compress(raw, _PACK_LEVEL), True


@dataclass(frozen=True)
class PackedMaskChange:
    """A :class:`MaskChange` of 0/1 uint8 blocks, kept as bits (see :meth:`MaskChange.packed`).

    Attributes:
        region: the (z, y, x) slices of the change.
        shape: the blocks' (z, y, x) shape.
        before, after: the bits of each block (``np.packbits``), zlib-compressed where ``compressed`` says.
        compressed: for (before, after), whether the bits are zlib-compressed.
    """

    region: Slices3
    shape: tuple[int, ...]
    before: bytes
    after: bytes
    compressed: tuple[bool, bool] = (True, True)

    @property
    def nbytes(self) -> int:
        """Bytes held by the two compressed blocks."""
        return len(self.before) + len(self.after)

    def _block(self, data: bytes, compressed: bool) -> np.ndarray:
        count = int(np.prod(self.shape, dtype=np.int64))
        bits = np.frombuffer(zlib.decompress(data) if compressed else data, dtype=np.uint8)
        return np.unpackbits(bits, count=count).reshape(self.shape)

    def unpacked(self) -> MaskChange:
        """The :class:`MaskChange` this was packed from (fresh, writable arrays)."""
        return MaskChange(self.region, self._block(self.before, self.compressed[0]), self._block(self.after, self.compressed[1]))


class ClickResult:
    """Outcome of one click (or one replay of several clicks, or one undo/redo).

    Attributes:
        change: the :class:`MaskChange` this step made (region, voxels before and after), or
            None if nothing ran.
        windows: windows that were run for this click.
        timings: seconds spent per step ("extract", "encoder", "decoder", "paste", "total").

    The mask is built on first access (:attr:`mask`): converting a 512×512×200 mask into a
    SimpleITK image costs ~30 ms, which callers that only need the change (the Slicer logic,
    the evaluation loop) should not pay on every click. Until then the result shares the
    session's mask buffer, copy-on-write: before the session writes a region of it, the result
    is handed that region's voxels as they are (:meth:`_before_write`; a window's footprint,
    0.5 ms for a CT, instead of copying the whole 52 MB mask, 20-50 ms, on every click while an
    earlier result is alive). So a result always shows the mask as it was after its click, and
    the regions it keeps never add up to more than half the mask: beyond that it takes its own copy.
    """

    def __init__(self, mask_zyx: np.ndarray, reference: sitk.Image, change: MaskChange | None, windows: list[Window], timings: dict[str, float]) -> None:
        self._mask_zyx: np.ndarray | None = mask_zyx
        self._owns_array = False
        self._saved: list[tuple[Slices3, np.ndarray]] = []  # (region, its voxels at this step), oldest first
        self._saved_bytes = 0
        self._reference = reference
        self._mask: sitk.Image | None = None
        self.change = change
        self.windows = windows
        self.timings = timings

    @property
    def changed_zyx(self) -> Slices3 | None:
        """(z, y, x) slices of the region that may have changed, or None if nothing ran."""
        return self.change.region if self.change is not None else None

    def _shares(self, buffer: np.ndarray) -> bool:
        """Whether this result still reads the session's ``buffer`` (and must hear of writes to it)."""
        return self._mask is None and not self._owns_array and self._mask_zyx is buffer

    def _before_write(self, region: Slices3, voxels: np.ndarray) -> None:
        """Called by the session before it writes ``region`` of the shared buffer; ``voxels`` is that
        region as it is now (read-only, possibly shared with other results)."""
        if self._mask is not None or self._owns_array:
            return
        self._saved.append((region, voxels))
        self._saved_bytes += voxels.nbytes
        if self._saved_bytes > self._mask_zyx.nbytes // 2:  # type: ignore[union-attr]
            self._detach()

    def _detach(self) -> None:
        """Take a private copy of the mask of this step (the session is about to rewrite most of the buffer)."""
        if self._mask is None and not self._owns_array:
            self._mask_zyx, self._owns_array = self._array(), True
            self._saved, self._saved_bytes = [], 0

    def _array(self) -> np.ndarray:
        """The mask of this step as a fresh array: the buffer with the saved regions put back, newest first."""
        assert self._mask_zyx is not None
        array = self._mask_zyx.copy()
        for region, voxels in reversed(self._saved):
            array[region] = voxels
        return array

    @property
    def mask(self) -> sitk.Image:
        """The whole mask after this step: SimpleITK uint8 image on the input image's grid."""
        if self._mask is None:
            image = sitk.GetImageFromArray(self._array() if self._saved else self._mask_zyx)
            image.CopyInformation(self._reference)
            self._mask, self._mask_zyx, self._saved = image, None, []
        return self._mask

    @property
    def mask_array(self) -> np.ndarray:
        """The mask as a (z, y, x) uint8 array (a copy)."""
        if self._mask is None:
            return self._array()
        return sitk.GetArrayFromImage(self._mask)


def save_for_results(results: weakref.WeakSet[ClickResult], buffer: np.ndarray, region: Slices3 | None) -> weakref.WeakSet[ClickResult]:
    """Before ``region`` (default: all) of a session's mask ``buffer`` is rewritten: hand it to the results sharing it.

    One read-only copy of the region serves all of them (see :class:`ClickResult`); when the
    region is most of the mask (a replay), each takes its own copy instead. Returns the results
    that still share the buffer afterwards.
    """
    sharing = [r for r in results if r._shares(buffer)]
    if not sharing:
        return weakref.WeakSet()
    region = region if region is not None else tuple(slice(0, s) for s in buffer.shape)  # type: ignore[assignment]
    if 2 * int(np.prod([r.stop - r.start for r in region])) > buffer.size:  # type: ignore[union-attr]
        for result in sharing:
            result._detach()
        return weakref.WeakSet()
    voxels = buffer[region].copy()
    voxels.setflags(write=False)
    for result in sharing:
        result._before_write(region, voxels)  # type: ignore[arg-type]
    return weakref.WeakSet(r for r in sharing if r._shares(buffer))
