"""Image-aware (geodesic) distance from clicks, vectorised with cumulative minima.

The geodesic distance from a set of seed cells is the length of the shortest path to them when a
step between neighbouring cells p, q costs ``sqrt(1 + (weight · (I_p − I_q))²)`` cells: inside a
homogeneous structure it grows like the ordinary (city-block) distance, across an edge it jumps.
Interactive segmentation has long used it to turn clicks into maps that follow the anatomy
(Criminisi et al., "GeoS", ECCV 2008; Wang et al., "DeepIGeoS", TPAMI 2019).

Exact along one line, a forward scan ``d[k] = min(d[k], d[k−1] + c[k−1→k])`` is a cumulative
minimum: with ``C`` the running sum of the step costs, ``d[k] = C[k] + min_{j≤k}(d[j] − C[j])``.
So each scan is two tensor operations instead of a Python loop over slices; alternating scans
along the three axes, forward and backward, ``sweeps`` times, converges to the 6-connected
geodesic distance for paths that turn at most ``3 · sweeps`` times (enough for a feature map).
"""

from __future__ import annotations

import torch

#: Distance given to cells no seed can reach (and to every cell when there is no seed).
UNREACHED = 1.0e6


def _step_costs(image: torch.Tensor, dim: int, weight: float, length: float = 1.0) -> torch.Tensor:
    """Running sum ``C`` of the step costs along ``dim`` (same shape as ``image``, C[0] = 0)."""
    diff = torch.diff(image, dim=dim)
    steps = torch.sqrt(length * length + (weight * diff) ** 2)
    zero = torch.zeros_like(image.narrow(dim, 0, 1))
    return torch.cumsum(torch.cat([zero, steps], dim=dim), dim=dim)


def step_costs(image: torch.Tensor, weight: float, lengths: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> dict[int, torch.Tensor]:
    """The running step costs of ``image`` (B, 1, D, H, W) along each spatial axis (2, 3, 4).

    Each is laid out with its axis last (a contiguous copy: cummin is several times faster
    along the last dimension than along an outer one). They depend on the image alone, so a
    caller that runs several seed sets on one image computes them once. ``lengths`` are the
    steps' lengths along D, H and W: one cell each for a feature map; a voxel's spacing in mm
    for distances in mm on an anisotropic image (:mod:`SAMMed3DLib.refine`).
    """
    image = image.float()
    return {
        dim: _step_costs(image.movedim(dim, -1).contiguous(), -1, float(weight), float(length))
        for dim, length in zip((2, 3, 4), lengths)
    }


def _running_min(x: torch.Tensor, reverse: bool = False, window: int | None = None) -> torch.Tensor:
    """Running minimum along the last dimension (from its end when ``reverse``), exactly.

    A doubling scan between two buffers: after the step of shift s every element holds the
    minimum of the 2s elements up to it. log2(n) element-wise minima replace ``torch.cummin``
    (which also computes indices) and the two flips a reverse scan needs: a single-channel 64³
    sweep took 23 ms instead of 31 ms on 2 threads, bit-identical since a minimum never rounds.
    With ``window`` the doubling stops once it covers ``window`` elements: every element holds
    the minimum of the last ``w`` elements up to it, ``w`` the first power of two ≥ ``window``
    (all of them when that exceeds the line). ``x`` is not modified.
    """
    n, shift = x.shape[-1], 1
    reach = n if window is None else min(n, max(1, int(window)))
    src, dst = x, torch.empty_like(x)
    while shift < reach:
        if reverse:
            dst[..., n - shift :] = src[..., n - shift :]
            torch.minimum(src[..., :-shift], src[..., shift:], out=dst[..., :-shift])
        else:
            dst[..., :shift] = src[..., :shift]
            torch.minimum(src[..., shift:], src[..., :-shift], out=dst[..., shift:])
        spare = torch.empty_like(x) if src is x else src
        src, dst, shift = dst, spare, shift * 2
    return src


def sweep(
    dist: torch.Tensor, costs: dict[int, torch.Tensor], sweeps: int = 2, windows: tuple[int | None, int | None, int | None] | None = None
) -> torch.Tensor:
    """Run the scans of :func:`geodesic_distance` on initial distances ``dist`` (B, C, D, H, W).

    ``windows`` bounds each axis's scans (D, H, W) to runs of at least that many cells
    (:func:`_running_min`; None = whole lines): the distances are then those of paths whose
    straight runs are no longer, never less than the unbounded ones. A caller whose paths are
    short (:mod:`SAMMed3DLib.refine`'s thin band) saves most of the scans' doublings.

    The scans are *min-plus linear*: every step is a sum with a fixed cost, a minimum or a
    running minimum, and float rounding is monotone, so ``sweep(min(a, b)) == min(sweep(a),
    sweep(b))`` bit for bit. That is what lets :class:`GeodesicCache` add a click by sweeping
    its seed alone and taking the minimum with the earlier result.
    """
    for _ in range(max(1, int(sweeps))):
        for dim in (2, 3, 4):
            cum = costs[dim]
            window = None if windows is None else windows[dim - 2]
            d = dist.movedim(dim, -1).contiguous()
            # forward: d[k] = C[k] + min_{j<=k} (d[j] - C[j])
            d = torch.minimum(d, cum + _running_min(d - cum, window=window))
            # backward: d[k] = -C[k] + min_{j>=k} (d[j] + C[j])
            d = torch.minimum(d, _running_min(d + cum, reverse=True, window=window) - cum)
            dist = d.movedim(-1, dim)
    return dist.contiguous().clamp_max(UNREACHED)


def _check_shapes(image: torch.Tensor, seeds: torch.Tensor) -> None:
    if image.dim() != 5 or image.shape[1] != 1:
        raise ValueError(f"image must be (B, 1, D, H, W), got {tuple(image.shape)}")
    if seeds.dim() != 5 or seeds.shape[0] != image.shape[0] or seeds.shape[2:] != image.shape[2:]:
        raise ValueError(f"seeds must be (B, C, {', '.join(map(str, image.shape[2:]))}), got {tuple(seeds.shape)}")


def geodesic_distance(image: torch.Tensor, seeds: torch.Tensor, weight: float, sweeps: int = 2) -> torch.Tensor:
    """Geodesic distance (in cells) from the seed cells of each channel.

    Args:
        image: (B, 1, D, H, W) intensities (for example the z-normalised window, pooled).
        seeds: (B, C, D, H, W) bool, True at the seed cells; channels are independent.
        weight: cost of an intensity step, in cells per intensity unit (0 = Euclidean-like).
        sweeps: passes over the three axes (each forward and backward).

    Returns:
        (B, C, D, H, W) float32 distances; :data:`UNREACHED` where a channel has no seed.
    """
    _check_shapes(image, seeds)
    seeded = seeds.flatten(2).any(dim=2)  # (B, C)
    if bool(seeded.all()):
        return sweep(torch.where(seeds, 0.0, UNREACHED).to(torch.float32), step_costs(image, weight), sweeps)
    # A channel without seeds is UNREACHED everywhere: no sweep (the first click has one polarity).
    out = torch.full(seeds.shape, UNREACHED, dtype=torch.float32, device=seeds.device)
    for b in torch.nonzero(seeded.any(dim=1)).flatten().tolist():
        channels = torch.nonzero(seeded[b]).flatten()
        init = torch.where(seeds[b : b + 1, channels], 0.0, UNREACHED).to(torch.float32)
        out[b, channels] = sweep(init, step_costs(image[b : b + 1], weight), sweeps)[0]
    return out


class GeodesicCache:
    """The latest geodesic distances of one window, so that a new click costs one seed's sweep.

    A window's follow-up click adds one seed to one polarity. Because the scans are min-plus
    linear (:func:`sweep`), the distances from the old seeds plus the new one are the minimum of
    the cached distances and a sweep from the new seed alone, bit-identical to sweeping all of
    them; the other polarity's seeds did not change and its distances are reused as they are.
    The step costs are kept with the image they came from. Any other change (another image,
    weight or sweep count, a seed removed by an undo) starts that channel over.
    """

    def __init__(self) -> None:
        self._image: torch.Tensor | None = None
        self._params: tuple[float, int] | None = None
        self._costs: dict[int, dict[int, torch.Tensor]] = {}
        self._channels: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def clear(self) -> None:
        self._image, self._params = None, None
        self._costs.clear()
        self._channels.clear()

    def distance(self, image: torch.Tensor, seeds: torch.Tensor, weight: float, sweeps: int = 2) -> torch.Tensor:
        """:func:`geodesic_distance` of ``image`` and ``seeds``, reusing what the last call computed."""
        _check_shapes(image, seeds)
        image = image.detach().float()
        params = (float(weight), max(1, int(sweeps)))
        if self._image is None or self._params != params or self._image.shape != image.shape or not torch.equal(self._image, image):
            self.clear()
            self._image, self._params = image.clone(), params
        out = torch.empty(seeds.shape, dtype=torch.float32, device=image.device)
        for b in range(seeds.shape[0]):
            costs = self._costs.get(b)
            if costs is None:
                costs = self._costs[b] = step_costs(image[b : b + 1], weight)
            for c in range(seeds.shape[1]):
                now = seeds[b, c]
                entry = self._channels.get((b, c))
                if entry is not None and torch.equal(entry[0], now):
                    out[b, c] = entry[1]
                    continue
                if not now.any():
                    dist = torch.full(now.shape, UNREACHED, dtype=torch.float32, device=now.device)
                elif entry is not None and not (entry[0] & ~now).any():
                    added = now & ~entry[0]
                    fresh = sweep(torch.where(added, 0.0, UNREACHED)[None, None].to(torch.float32), costs, sweeps)[0, 0]
                    dist = torch.minimum(entry[1], fresh)
                else:
                    dist = sweep(torch.where(now, 0.0, UNREACHED)[None, None].to(torch.float32), costs, sweeps)[0, 0]
                self._channels[(b, c)] = (now.clone(), dist)
                out[b, c] = dist
        return out
