"""Geodesic click maps: the distance transform against Dijkstra, and the fine head's use of it."""

from __future__ import annotations

import copy
import heapq
from pathlib import Path

import numpy as np
import pytest
import torch

from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.checkpoint import load_model, save_model
from SAMMed3DLib.errors import ConfigError
from SAMMed3DLib.model import build_sam3d, infer_config
from SAMMed3DLib.model.fine_head import NEW_FINE_HEAD, add_geodesic_inputs
from SAMMed3DLib.model.geodesic import UNREACHED, _running_min, geodesic_distance, step_costs, sweep

from test_fine_head import TINY, TINY_FINE, _cfg, tiny_cache  # noqa: F401  (fixture re-used)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _dijkstra(image: np.ndarray, seeds: np.ndarray, weight: float) -> np.ndarray:
    """Reference: 6-connected shortest paths with step cost sqrt(1 + (weight·ΔI)²)."""
    dist = np.full(image.shape, np.inf)
    heap = []
    for s in zip(*np.nonzero(seeds)):
        dist[s] = 0.0
        heap.append((0.0, s))
    heapq.heapify(heap)
    steps = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    while heap:
        d, p = heapq.heappop(heap)
        if d > dist[p]:
            continue
        for step in steps:
            q = tuple(a + b for a, b in zip(p, step))
            if all(0 <= q[i] < image.shape[i] for i in range(3)):
                nd = d + np.sqrt(1.0 + (weight * (image[q] - image[p])) ** 2)
                if nd < dist[q]:
                    dist[q] = nd
                    heapq.heappush(heap, (nd, q))
    return dist


def _as5d(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a)[None, None]


def test_distance_converges_to_dijkstra_from_above() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(9, 7, 11)).astype(np.float32)  # noise: paths turn often, the hard case
    seeds = np.zeros(image.shape, bool)
    seeds[2, 3, 4] = seeds[7, 1, 9] = True
    ref = _dijkstra(image.astype(np.float64), seeds, 2.0)
    errors = []
    for sweeps in (1, 2, 4, 8):
        d = geodesic_distance(_as5d(image), _as5d(seeds), 2.0, sweeps)[0, 0].double().numpy()
        assert (d >= ref - 1e-3).all()  # every scan follows real paths: never shorter than the truth
        errors.append(float(np.abs(d - ref).max()))
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3


def test_constant_image_gives_the_city_block_distance_in_one_sweep() -> None:
    image = np.full((6, 8, 5), 3.0, np.float32)
    seeds = np.zeros(image.shape, bool)
    seeds[1, 6, 2] = True
    d = geodesic_distance(_as5d(image), _as5d(seeds), 50.0, sweeps=1)[0, 0].numpy()
    z, y, x = np.indices(image.shape)
    np.testing.assert_allclose(d, np.abs(z - 1) + np.abs(y - 6) + np.abs(x - 2), atol=1e-4)


def test_an_edge_stops_the_spread_and_channels_are_independent() -> None:
    image = np.zeros((10, 10, 10), np.float32)
    image[:, :, 5:] = 1.0  # an edge between x = 4 and x = 5
    seeds = np.zeros((1, 2, 10, 10, 10), bool)
    seeds[0, 0, 5, 5, 2] = True  # left of the edge
    d = geodesic_distance(_as5d(image), torch.from_numpy(seeds), 10.0)[0]
    assert d[0, 5, 5, 4] == pytest.approx(2.0)  # same side, two steps
    assert d[0, 5, 5, 7] == pytest.approx(4.0 + np.sqrt(101.0), rel=1e-5)  # across the edge: one costly step
    assert (d[1] == UNREACHED).all()  # no seed in channel 1


def test_a_bounded_scan_window_follows_only_short_runs_and_never_undercuts() -> None:
    x = torch.tensor([[5.0, 3.0, 9.0, 8.0, 7.0, 6.0, 4.0, 2.0, 1.0]])
    # a window of 3 rounds up to 4: each element holds the minimum of the 4 elements up to it
    expected = [min(x[0, max(0, k - 3) : k + 1].tolist()) for k in range(x.shape[1])]
    assert _running_min(x, window=3)[0].tolist() == expected
    assert _running_min(x, reverse=True, window=3)[0].tolist() == [min(x[0, k : k + 4].tolist()) for k in range(x.shape[1])]
    assert torch.equal(_running_min(x, window=64), _running_min(x))

    rng = np.random.default_rng(3)
    image = _as5d(rng.normal(size=(8, 12, 30)).astype(np.float32))
    seeds = np.zeros((8, 12, 30), bool)
    seeds[4, 6, 1] = True
    init = torch.where(_as5d(seeds), 0.0, UNREACHED).float()
    costs = step_costs(image, 0.5, (2.0, 1.0, 0.5))
    full = sweep(init, costs, 2)
    bounded = sweep(init, costs, 2, windows=(4, 4, 4))
    assert torch.equal(sweep(init, costs, 2, windows=(8, 16, 32)), full)  # windows as long as the lines
    assert (bounded >= full).all()  # fewer paths, never shorter ones
    near = (slice(None), slice(None), slice(2, 6), slice(4, 9), slice(0, 4))  # within one window of the seed
    assert torch.equal(bounded[near], full[near])
    assert bounded[0, 0, 4, 6, 29] > full[0, 0, 4, 6, 29]  # 28 cells along x: beyond runs of 4 in 2 sweeps


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"image must be \(B, 1, D, H, W\)"):
        geodesic_distance(torch.zeros(1, 2, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match=r"seeds must be \(B, C, 4, 4, 4\)"):
        geodesic_distance(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5, dtype=torch.bool), 1.0)


# -- the fine head's geodesic inputs -------------------------------------------------------------

TINY_GEO = {**copy.deepcopy(TINY), "fine_head": {"channels": [4, 6, 8], "click_reach": 5.0, "geodesic_reach": 4.0}}


def _trained_like(model):
    with torch.no_grad():
        model.fine_head.out.weight.normal_(0.0, 0.5)
        model.fine_head.enc0[0][0].weight.normal_(0.0, 0.3)  # also the (zero-started) geodesic inputs
    return model.eval()


def test_geodesic_maps_peak_at_the_clicks_and_follow_the_image() -> None:
    torch.manual_seed(0)
    head = build_sam3d(TINY_GEO).fine_head.eval()
    image = torch.zeros(1, 1, 32, 32, 32)
    image[..., 16:] = 3.0  # an edge across the last axis at the middle of the window
    coords = torch.tensor([[[8.0, 8.0, 10.0], [24.0, 24.0, 26.0], [2.0, 2.0, 2.0]]])
    labels = torch.tensor([[1, 0, -1]])
    maps = head.geodesic_maps(image, coords, labels)
    assert maps.shape == (1, 2, 16, 16, 16)
    assert maps[0, 0, 4, 4, 5] == 1.0 and maps[0, 1, 12, 12, 13] == 1.0  # each click's cell
    assert maps[0, 0, 1, 1, 1] < maps[0, 0, 4, 4, 2]  # the padding click (2, 2, 2) seeds nothing
    # three cells from the positive click: on its side of the edge vs across it
    assert maps[0, 0, 4, 4, 2] > 0.4 > 1e-3 > maps[0, 0, 4, 4, 8]
    assert not head.geodesic_maps(image, None, None).any()


def test_adding_geodesic_inputs_keeps_the_heads_output_until_trained() -> None:
    model = build_sam3d(TINY_FINE)
    _trained_like(model)
    image, low = torch.randn(1, 1, 32, 32, 32), torch.randn(1, 1, 8, 8, 8)
    clicks = (torch.tensor([[[5.0, 6.0, 7.0], [20.0, 3.0, 9.0]]]), torch.tensor([[1, 0]]))
    with torch.inference_mode():
        before = model.refine(image, low, *clicks)
    new = add_geodesic_inputs(model.fine_head)
    assert new.geodesic and float(new.geodesic_reach) == NEW_FINE_HEAD["geodesic_reach"]
    with torch.inference_mode():
        torch.testing.assert_close(new(image, low, *clicks), before, rtol=0, atol=1e-5)  # conv sums in another order
    with pytest.raises(ValueError, match="already has geodesic inputs"):
        add_geodesic_inputs(new)


def test_a_geodesic_head_round_trips_and_uses_its_maps(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = _trained_like(build_sam3d(TINY_GEO))
    assert infer_config(model.state_dict()) == model.config
    assert model.config["fine_head"]["geodesic_reach"] == 4.0
    save_model(model, tmp_path / "geo.pth", card=ModelCard(name="geo", config=model.config))
    torch.save(model.state_dict(), tmp_path / "bare.pth")
    image, low = torch.randn(1, 1, 32, 32, 32), torch.zeros(1, 1, 8, 8, 8)
    clicks = (torch.tensor([[[5.0, 6.0, 7.0]]]), torch.tensor([[1]]))
    for path in (tmp_path / "geo.pth", tmp_path / "bare.pth"):
        loaded = load_model(path, device="cpu")
        assert loaded.fine_head.geodesic and loaded.config == model.config
        with torch.inference_mode():
            torch.testing.assert_close(loaded.refine(image, low, *clicks), model.refine(image, low, *clicks), rtol=0, atol=0)
    # the geodesic maps matter: the same clicks on an image with an edge next to the click differ
    edged = image.clone()
    edged[..., 9:] += 5.0
    with torch.inference_mode():
        plain_maps = model.fine_head.geodesic_maps(image, *clicks)
        edge_maps = model.fine_head.geodesic_maps(edged, *clicks)
    assert (plain_maps - edge_maps).abs().max() > 0.1


def test_trainer_geodesic_upgrades_an_init_head_and_trains_only_it(tiny_cache: Path, tmp_path: Path) -> None:  # noqa: F811
    from training.trainer import LAST, Trainer, load_state

    start = _trained_like(build_sam3d(TINY_FINE))
    save_model(start, tmp_path / "start.pth", card=ModelCard(name="start", config=start.config))
    cfg = _cfg(tiny_cache, tmp_path / "run", init=str(tmp_path / "start.pth"), fine_head=True, geodesic=True,
               train_only_fine_head=True, fine_grad_rounds=2, max_steps=2)
    trainer = Trainer(cfg)
    trainer.fit()
    card = trainer.export(tmp_path / "geo.pth")
    trainer.close()
    assert card.config["fine_head"]["geodesic_reach"] == NEW_FINE_HEAD["geodesic_reach"]
    after = load_state(tmp_path / "run" / LAST)["model"]
    before = start.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("fine_head."))
    new_inputs = after["fine_head.enc0.0.0.weight"][:, -2:]
    assert new_inputs.abs().sum() > 0  # the geodesic inputs (zero at the start) were trained
    assert load_model(tmp_path / "geo.pth", device="cpu").fine_head.geodesic


def test_geodesic_without_a_head_is_refused(tiny_cache: Path, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="--geodesic adds geodesic click maps to a fine head"):
        _cfg(tiny_cache, tmp_path / "x", geodesic=True)
