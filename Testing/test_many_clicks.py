"""Many clicks in one session: click maps without an N × grid tensor, a bounded undo history,
packed mask changes, and progress for ``predict`` and ``sammed3d segment``.

The 1,000-click memory and time figures are in ``benchmarks/many_clicks.py``; these tests stay
small and check the properties that keep those figures flat.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from SAMMed3DLib import build_sam3d, save_model
from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.cli import main
from SAMMed3DLib.errors import ConfigError
from SAMMed3DLib.model import click_maps
from SAMMed3DLib.model.click_maps import ClickMapCache, click_distance_maps, reuse_click_maps
from SAMMed3DLib.model.sam3d import Sam3D
from SAMMed3DLib.session import DEFAULT_HISTORY_LIMIT, Session
from SAMMed3DLib.steps import MaskChange, PackedMaskChange

CPU = torch.device("cpu")

SMALL = {
    "image_encoder": {
        "img_size": 128, "patch_size": 16, "embed_dim": 48, "depth": 1, "num_heads": 4, "out_chans": 48,
        "use_rel_pos": True, "window_size": 0,
    },
    "prompt_encoder": {"embed_dim": 48, "image_embedding_size": 8, "input_image_size": 128, "mask_in_chans": 16},
    "mask_decoder": {"transformer_dim": 48},
}  # fmt: skip


def dense_click_maps(coords, labels, input_size, grid, reach, batch, device):  # noqa: ANN001
    """The former implementation: one (N, *grid) squared-distance tensor per label and item."""
    maps = torch.zeros((batch, 2, *grid), dtype=torch.float32, device=device)
    if coords is None or labels is None or coords.shape[1] == 0:
        return maps
    scale = torch.tensor([i / g for i, g in zip(input_size, grid)], dtype=torch.float32, device=device)
    cells = (coords.to(device=device, dtype=torch.float32) + 0.5) / scale - 0.5
    axes = [torch.arange(g, dtype=torch.float32, device=device) for g in grid]
    for channel, label in ((0, 1), (1, 0)):
        for b in range(batch):
            pts = cells[b][labels[b].to(device) == label]
            if not len(pts):
                continue
            d2 = (
                (axes[0][None, :, None, None] - pts[:, 0, None, None, None]) ** 2
                + (axes[1][None, None, :, None] - pts[:, 1, None, None, None]) ** 2
                + (axes[2][None, None, None, :] - pts[:, 2, None, None, None]) ** 2
            )
            maps[b, channel] = (1.0 - d2.amin(dim=0).sqrt() / reach).clamp_min(0.0)
    return maps


# -- click maps ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("input_size", "grid", "reach"),
    [
        ((128,) * 3, (64,) * 3, 8.0),  # the default model's fine head (boxes of 18³ cells)
        ((128,) * 3, (32,) * 3, 16.0),  # its prompt encoder (the reach covers the grid)
        ((32,) * 3, (16,) * 3, 5.0),
        ((40, 30, 20), (20, 15, 10), 3.3),  # anisotropic grid, a reach that is no integer
    ],
    ids=["fine_head", "prompt_encoder", "tiny", "anisotropic"],
)
@pytest.mark.parametrize("clicks", [1, 7, 90])
@pytest.mark.parametrize("chunk_cells", [click_maps.CLICK_MAP_CHUNK_CELLS, 5000])
def test_click_maps_equal_the_dense_evaluation_bit_for_bit(monkeypatch, input_size, grid, reach, clicks, chunk_cells) -> None:
    monkeypatch.setattr(click_maps, "CLICK_MAP_CHUNK_CELLS", chunk_cells)  # 5000: several chunks, padded ones
    generator = torch.Generator().manual_seed(clicks)
    # clicks also a little outside the input (as a caller may pass) and repeated ones
    coords = torch.rand(2, clicks, 3, generator=generator) * (torch.tensor(input_size, dtype=torch.float32) + 6) - 3
    coords[:, clicks // 2 :] = coords[:, : clicks - clicks // 2]
    labels = torch.randint(-1, 2, (2, clicks), generator=generator)
    new = click_distance_maps(coords, labels, input_size, grid, reach, 2, CPU)
    old = dense_click_maps(coords, labels, input_size, grid, reach, 2, CPU)
    assert torch.equal(new, old)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor (bytes) any torch operation produces while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel() * tensor.element_size())
        return out


@pytest.mark.parametrize(("grid", "reach"), [((64,) * 3, 8.0), ((32,) * 3, 16.0)], ids=["fine_head", "prompt_encoder"])
@pytest.mark.parametrize("clicks", [1, 300])
def test_click_map_memory_does_not_grow_with_the_clicks(grid, reach, clicks) -> None:
    coords = torch.rand(1, clicks, 3, generator=torch.Generator().manual_seed(0)) * 127
    labels = (torch.arange(clicks) % 2)[None]
    with _LargestTensor() as probe:
        click_distance_maps(coords, labels, (128,) * 3, grid, reach, 1, CPU)
    # int64 scatter indices of one chunk, or the (1, 2, *grid) float32 maps themselves
    bound = max(8 * click_maps.CLICK_MAP_CHUNK_CELLS, 2 * 4 * int(np.prod(grid)))
    assert probe.largest <= bound
    if clicks > 1:
        with _LargestTensor() as dense:
            dense_click_maps(coords, labels, (128,) * 3, grid, reach, 1, CPU)
        assert dense.largest == 4 * (clicks // 2) * int(np.prod(grid)) > bound  # what the dense version built


def test_cached_click_maps_follow_any_click_sequence_exactly() -> None:
    """Each click extends the cache; a shorter or different sequence recomputes; all exact."""
    generator = torch.Generator().manual_seed(1)
    coords = torch.rand(1, 40, 3, generator=generator) * 127
    labels = torch.randint(0, 2, (1, 40), generator=generator)
    cache = ClickMapCache()
    steps = [slice(0, n) for n in (1, 2, 3, 10, 11, 40, 40)] + [slice(0, 12), slice(5, 30)]  # then an undo, other clicks
    for index in steps:
        for grid, reach in (((64,) * 3, 8.0), ((32,) * 3, 16.0)):
            args = (coords[:, index], labels[:, index], (128,) * 3, grid, reach, 1, CPU)
            with reuse_click_maps(cache):
                cached = click_distance_maps(*args)
            assert torch.equal(cached, dense_click_maps(*args))
    assert len(cache) == 4  # two labels on two grids


def test_cached_click_maps_evaluate_only_the_new_click() -> None:
    coords = torch.rand(1, 301, 3, generator=torch.Generator().manual_seed(2)) * 127
    labels = torch.ones(1, 301, dtype=torch.int64)
    cache = ClickMapCache()
    with reuse_click_maps(cache):
        click_distance_maps(coords[:, :300], labels[:, :300], (128,) * 3, (64,) * 3, 8.0, 1, CPU)
        with _LargestTensor() as probe:
            click_distance_maps(coords, labels, (128,) * 3, (64,) * 3, 8.0, 1, CPU)
    with _LargestTensor() as full:
        click_distance_maps(coords, labels, (128,) * 3, (64,) * 3, 8.0, 1, CPU)
    assert probe.largest <= 64**3 * 8 < full.largest  # one click's box and the grid, not 301 boxes


# -- packed mask changes -------------------------------------------------------------------------


def _blocks(kind: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    if kind == "empty":
        return np.zeros((0, 4, 5), np.uint8), np.zeros((0, 4, 5), np.uint8)
    if kind == "sphere_moved":
        z, y, x = np.mgrid[0:30, 0:40, 0:50]
        return ((x - 25) ** 2 + (y - 20) ** 2 + (z - 15) ** 2 < 100).astype(np.uint8), ((x - 27) ** 2 + (y - 20) ** 2 + (z - 15) ** 2 < 120).astype(np.uint8)
    if kind == "random_odd_size":
        return rng.integers(0, 2, (7, 11, 13), dtype=np.uint8), rng.integers(0, 2, (7, 11, 13), dtype=np.uint8)
    if kind == "label_values":
        return np.full((3, 3, 3), 2, np.uint8), np.zeros((3, 3, 3), np.uint8)
    return np.zeros((3, 3, 3), bool), np.ones((3, 3, 3), bool)  # "bool"


@pytest.mark.parametrize(
    ("kind", "packs"),
    [("empty", True), ("sphere_moved", True), ("random_odd_size", True), ("label_values", False), ("bool", False)],
)
def test_packed_mask_change_round_trips_exactly(kind, packs) -> None:
    before, after = _blocks(kind)
    region = tuple(slice(1, 1 + s) for s in before.shape)
    change = MaskChange(region, before, after)
    packed = change.packed()
    assert isinstance(packed, PackedMaskChange) is packs
    if not packs:
        assert packed is change  # kept as it is: nothing is lost
        return
    back = packed.unpacked()
    assert back.region == region and back.before.dtype == np.uint8
    np.testing.assert_array_equal(back.before, before)
    np.testing.assert_array_equal(back.after, after)
    if kind == "sphere_moved":
        assert packed.nbytes * 50 < before.nbytes + after.nbytes  # 120 kB of blocks in a few kB


# -- a bounded history -----------------------------------------------------------------------------


class _Encoder(torch.nn.Module):
    img_size = 128

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((1, 48, 8, 8, 8))


class GrowingModel(Sam3D):
    """Predicts a ball at the window centre whose radius grows with the number of clicks."""

    def __init__(self) -> None:
        base = build_sam3d(SMALL)
        super().__init__(_Encoder(), base.prompt_encoder, base.mask_decoder, base.config)
        self.card = ModelCard(name="growing", config=base.config)

    def predict_low_res(self, image_embeddings, coords, labels, mask_logits):  # noqa: ANN001
        n = 0 if coords is None else coords.shape[1]
        axis = torch.arange(32, dtype=torch.float32) - 15.5
        distance = (axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2).sqrt()
        return (1.0 + n - distance)[None, None], torch.zeros(1, 1)


@pytest.fixture
def volume() -> sitk.Image:
    image = sitk.GetImageFromArray(np.zeros((40, 50, 60), np.float32))
    image.SetSpacing((1.5, 1.5, 1.5))
    return image


def _centre(image: sitk.Image) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()]))


@pytest.mark.parametrize("limit", [1, 3, None])
def test_history_keeps_the_last_limit_steps_and_undoes_them_exactly(volume, limit) -> None:
    session = Session(GrowingModel(), volume, auto_extend=False, history_limit=limit)
    centre = _centre(volume)
    masks = [session.mask_array.copy()]
    for i in range(6):
        session.click(centre + np.array([0.5 * i, 0.0, 0.0]))
        masks.append(session.mask_array.copy())
    assert all((a != b).any() for a, b in zip(masks, masks[1:])), "every click changes the mask"
    kept = 6 if limit is None else limit
    for back in range(1, kept + 1):
        assert session.undo() is not None
        np.testing.assert_array_equal(session.mask_array, masks[-1 - back])
        assert len(session.points_lps) == 6 - back
    assert session.undo() is None, "older steps were forgotten"
    for forward in range(1, kept + 1):
        assert session.redo() is not None
        np.testing.assert_array_equal(session.mask_array, masks[6 - kept + forward])


def test_default_history_limit() -> None:
    assert DEFAULT_HISTORY_LIMIT == 50
    session = Session(GrowingModel())
    assert session._history.limit == DEFAULT_HISTORY_LIMIT


@pytest.mark.parametrize("limit", [0, -3, 2.5, True, "50"])
def test_invalid_history_limit_is_refused(limit) -> None:
    with pytest.raises(ConfigError, match=rf"history_limit must be a positive integer \(undo steps kept\) or None \(no limit\), got {limit!r}"):
        Session(GrowingModel(), history_limit=limit)


def test_numpy_integer_history_limit_is_accepted() -> None:
    assert Session(GrowingModel(), history_limit=np.int64(4))._history.limit == 4


# -- progress ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("replay", [False, True], ids=["new_clicks", "replay"])
def test_predict_reports_progress_per_click(volume, replay) -> None:
    session = Session(GrowingModel(), volume, auto_extend=False)
    centre = _centre(volume)
    points = np.stack([centre + np.array([i, 0.0, 0.0]) for i in range(5)])
    if replay:
        session.predict(points[::-1], [1] * 5)  # not a prefix of the next call: it replays everything
    calls: list[tuple[int, int]] = []
    session.predict(points, [1, 0, 1, 0, 1], progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 5) for i in range(1, 6)]


@pytest.fixture(scope="module")
def small_model_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_sam3d(SMALL)
    path = tmp_path_factory.mktemp("model") / "small.pth"
    save_model(model, path, card=ModelCard(name="small", config=model.config))
    return path


@pytest.mark.parametrize(("clicks", "bar"), [(2, False), (12, True)])
def test_segment_shows_a_progress_bar_for_many_clicks(tmp_path, small_model_path, capsys, clicks, bar) -> None:
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 1, (20, 30, 40)).astype(np.float32))
    path = tmp_path / "image.nrrd"
    sitk.WriteImage(image, str(path))
    argv = ["segment", str(path), "--ijk", "--model", str(small_model_path), "--out", str(tmp_path / "m.nii.gz"), "--threads", "1"]
    for i in range(clicks):
        argv += ["--point" if i % 2 == 0 else "--negative", f"{10 + i},15,10"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert (f"{clicks}/{clicks}" in err and "segment:" in err) is bar, err


def test_a_window_keeps_only_its_own_logits_alive(volume) -> None:
    """The decoder's single mask is a view of its four masks; the window keeps a copy of it alone."""
    torch.manual_seed(0)
    model = build_sam3d(SMALL)
    model.card = ModelCard(name="small", config=model.config)
    session = Session(model, volume, auto_extend=False)
    session.click(_centre(volume))
    logits = session._windows[0].logits
    assert logits.shape == (1, 1, 32, 32, 32) and logits.untyped_storage().nbytes() == logits.nbytes


def test_freed_heap_memory_is_handed_back_to_the_system() -> None:
    """Blocks freed below the heap's top stay resident until release_free_memory (glibc)."""
    import ctypes

    import psutil

    from SAMMed3DLib.memory import _malloc_trim, release_free_memory

    if _malloc_trim() is None:
        pytest.skip("no glibc malloc_trim on this platform: release_free_memory does nothing here")
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(100_000) for _ in range(400)]  # 40 MB below the mmap threshold: on the heap
    for b in blocks:
        ctypes.memset(b, 1, 100_000)
    process = psutil.Process()
    for b in blocks[:-1]:
        libc.free(b)  # the last block keeps the heap's top, so free() cannot shrink the heap itself
    before = process.memory_info().rss
    assert release_free_memory()
    after = process.memory_info().rss
    libc.free(blocks[-1])
    assert before - after > 20 * 2**20, (before, after)
