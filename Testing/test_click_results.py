"""A result a user holds never changes, and what a click keeps for later costs little.

``ClickResult`` shares the session's mask buffer copy-on-write (it is handed the voxels of each
region before the session rewrites it), and a history step packs its change as bits, compressed
only when that pays. These tests check what users rely on: every result held, read at any
time, shows the mask of its own step, through clicks, undo, redo, replays, restores and resets;
and the packed changes give back the exact voxels.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SAMMed3DLib import build_sam3d
from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.model.sam3d import Sam3D
from SAMMed3DLib.session import Session
from SAMMed3DLib.steps import MaskChange, PackedMaskChange
from test_many_clicks import SMALL, _Encoder

class BallsModel(Sam3D):
    """Logits > 0 within 4 low-res cells of the last positive click, < 0 near negative ones."""

    def __init__(self) -> None:
        base = build_sam3d(SMALL)
        super().__init__(_Encoder(), base.prompt_encoder, base.mask_decoder, base.config)
        self.card = ModelCard(name="balls", config=base.config)

    def predict_low_res(self, image_embeddings, coords, labels, mask_logits):  # noqa: ANN001
        logits = torch.full((32, 32, 32), -1.0)
        for point, label in zip(low_res_cells(coords[0]), labels[0]):
            logits[low_res_ball(point, 4.0)] = 2.0 if int(label) == 1 else -2.0
        return logits[None, None], torch.zeros(1, 1)


def low_res_cells(window_index: torch.Tensor) -> torch.Tensor:
    """Window voxel indices (128³ window) as positions on the decoder's 32³ grid."""
    return (window_index + 0.5) / 4 - 0.5


def low_res_ball(centre, radius: float) -> torch.Tensor:
    """Boolean (32, 32, 32) block of the decoder's grid: the cells within ``radius`` cells of ``centre``."""
    axis = torch.arange(32, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    return (grid - torch.as_tensor(centre, dtype=torch.float32)).norm(dim=-1) < radius


def point_lps(image: sitk.Image, index_xyz) -> np.ndarray:
    """LPS mm of a (continuous) voxel index of ``image``."""
    return np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index_xyz]))


@pytest.fixture
def long_volume() -> sitk.Image:
    """192 × 192 × 576 mm in 3 mm voxels, three 192 mm windows long: a window's footprint is a third of the mask."""
    image = sitk.GetImageFromArray(np.zeros((192, 64, 64), np.float32))
    image.SetSpacing((3.0, 3.0, 3.0))
    return image



def test_every_held_result_shows_the_mask_of_its_own_step(long_volume) -> None:
    session = Session(BallsModel(), long_volume, auto_extend=False)
    held: list[tuple[object, np.ndarray]] = []

    def keep(result) -> None:  # noqa: ANN001
        held.append((result, session.mask_array.copy()))

    rng = np.random.default_rng(0)
    for step in range(12):
        z = [32, 96, 160][step % 3]  # three windows along the volume
        keep(session.click(point_lps(long_volume, (32 + rng.integers(-6, 7), 32, z + rng.integers(-6, 7))), positive=bool(step % 4 != 3)))
    keep(session.undo())
    keep(session.undo())
    keep(session.redo())
    state = session.state()
    keep(session.click(point_lps(long_volume, (30, 30, 40))))
    change = held[-1][0].change
    session.restore(state, change.region, change.before)
    keep(session.predict(session.points_lps[::-1], session.labels[::-1]))  # a replay: rewrites the whole mask
    keep(session.click(point_lps(long_volume, (34, 30, 100))))
    session.reset()
    keep(session.click(point_lps(long_volume, (32, 32, 32))))
    assert len({m.tobytes() for _, m in held}) > 10, "the steps changed the mask"
    for i, (result, expected) in enumerate(held):
        # read in both ways, in an order unrelated to the steps: each is the mask of its own step
        got = result.mask_array if i % 2 else sitk.GetArrayFromImage(result.mask)
        np.testing.assert_array_equal(got, expected, err_msg=f"result {i}")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(result.mask), expected, err_msg=f"result {i} again")


def test_a_held_result_keeps_only_the_regions_the_session_rewrote(long_volume) -> None:
    # copy-on-write: a click saves the footprint of its window for the held result, never a copy
    # of the whole mask, and what a result keeps stays below half the mask
    session = Session(BallsModel(), long_volume, auto_extend=False)
    first = session.click(point_lps(long_volume, (32, 32, 32)))
    expected = session.mask_array.copy()
    session.click(point_lps(long_volume, (30, 30, 34)))
    assert not first._owns_array and 0 < first._saved_bytes < expected.nbytes // 2
    for z in (96, 160, 40, 150):
        session.click(point_lps(long_volume, (32, 32, z)))
        assert first._owns_array or first._saved_bytes <= expected.nbytes // 2
    assert first._owns_array, "beyond half the mask the result takes its own copy"
    np.testing.assert_array_equal(first.mask_array, expected)


def _blocks(kind: str, shape=(77, 240, 240)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    if kind == "blotchy":  # what an untrained model pastes: a random low-res field upsampled, > 0
        from scipy.ndimage import zoom

        fields = [zoom(rng.normal(size=(10, 30, 30)), (7.7, 8.0, 8.0), order=1)[: shape[0], : shape[1], : shape[2]] for _ in range(2)]
        return (fields[0] > 0).astype(np.uint8), (fields[1] > 0).astype(np.uint8)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    ball = ((z - 38) * 3.0) ** 2 + (y - 120.0) ** 2 + (x - 120.0) ** 2
    return (ball < 70.0**2).astype(np.uint8), (ball < 74.0**2).astype(np.uint8)


@pytest.mark.parametrize(("kind", "compressed"), [("organ", True), ("blotchy", False)])
def test_a_large_change_is_compressed_only_when_that_pays(kind, compressed) -> None:
    before, after = _blocks(kind)
    region = (slice(10, 87), slice(0, 240), slice(5, 245))
    packed = MaskChange(region, before, after).packed()
    assert isinstance(packed, PackedMaskChange) and packed.compressed == (compressed, compressed)
    bits = before.size // 8
    if compressed:
        assert packed.nbytes < 0.05 * 2 * bits  # an organ's blocks shrink to a few percent of a bit a voxel
    else:
        assert packed.nbytes == 2 * bits  # one bit a voxel, no time spent on zlib
    back = packed.unpacked()
    assert back.region == region
    np.testing.assert_array_equal(back.before, before)
    np.testing.assert_array_equal(back.after, after)
