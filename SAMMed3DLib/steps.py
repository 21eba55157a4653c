"""What one step of a :class:`~SAMMed3DLib.session.Session` produces, and what it takes to go back.

* :class:`SessionState`: the session apart from its mask (clicks, every window's logits); cheap,
  since the logits tensors are shared (the session replaces them, never modifies them).
* :class:`MaskChange`: the voxels a step changed (region, before, after), so a caller writes
  exactly those and an undo puts ``before`` back.
* :class:`PackedMaskChange`: the same change as a history keeps it, one bit a voxel and
  zlib-compressed (:meth:`MaskChange.packed`): a 0/1 block of a window's footprint is mostly
  runs, so it shrinks several hundred-fold (the two 4.4 MB blocks of a click on a 512 × 512 × 200
  CT to 24 kB, measured) in 4 ms, and unpacking (4 ms) gives back the exact arrays.
* :class:`ClickResult`: what a click, replay, undo or redo returns (the change, the windows that
  ran, timings, and the whole mask on demand).
"""

from __future__ import annotations

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
        as is, so packing never loses a value.
        """
        blocks = (self.before, self.after)
        if any(b.dtype != np.uint8 or b.shape != self.before.shape or (b.size and b.max() > 1) for b in blocks):
            return self
        packed = [zlib.compress(np.packbits(b, axis=None).tobytes(), _PACK_LEVEL) for b in blocks]
        return PackedMaskChange(self.region, self.before.shape, packed[0], packed[1])


#: zlib level of :class:`PackedMaskChange`: level 1 already removes the runs of a mask block
#: (higher levels cost several times more time for a few percent).
_PACK_LEVEL = 1


@dataclass(frozen=True)
class PackedMaskChange:
    """A :class:`MaskChange` of 0/1 uint8 blocks, kept as zlib-compressed bits (see :meth:`MaskChange.packed`).

    Attributes:
        region: the (z, y, x) slices of the change.
        shape: the blocks' (z, y, x) shape.
        before, after: the compressed bits of each block.
    """

    region: Slices3
    shape: tuple[int, ...]
    before: bytes
    after: bytes

    @property
    def nbytes(self) -> int:
        """Bytes held by the two compressed blocks."""
        return len(self.before) + len(self.after)

    def _block(self, data: bytes) -> np.ndarray:
        count = int(np.prod(self.shape, dtype=np.int64))
        bits = np.frombuffer(zlib.decompress(data), dtype=np.uint8)
        return np.unpackbits(bits, count=count).reshape(self.shape)

    def unpacked(self) -> MaskChange:
        """The :class:`MaskChange` this was packed from (fresh, writable arrays)."""
        return MaskChange(self.region, self._block(self.before), self._block(self.after))


class ClickResult:
    """Outcome of one click (or one replay of several clicks, or one undo/redo).

    Attributes:
        change: the :class:`MaskChange` this step made (region, voxels before and after), or
            None if nothing ran.
        windows: windows that were run for this click.
        timings: seconds spent per step ("extract", "encoder", "decoder", "paste", "total").

    The mask is built on first access (:attr:`mask`): converting a 512×512×200 mask into a
    SimpleITK image costs ~30 ms, which callers that only need the change (the Slicer logic,
    the evaluation loop) should not pay on every click. If the session changes before then, it
    hands the result a private copy of the mask first (a plain memory copy), so a result always
    shows the mask as it was after its click.
    """

    def __init__(self, mask_zyx: np.ndarray, reference: sitk.Image, change: MaskChange | None, windows: list[Window], timings: dict[str, float]) -> None:
        self._mask_zyx: np.ndarray | None = mask_zyx
        self._owns_array = False
        self._reference = reference
        self._mask: sitk.Image | None = None
        self.change = change
        self.windows = windows
        self.timings = timings

    @property
    def changed_zyx(self) -> Slices3 | None:
        """(z, y, x) slices of the region that may have changed, or None if nothing ran."""
        return self.change.region if self.change is not None else None

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
