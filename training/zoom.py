"""Zoom-out augmentation: a training window that sees a wider block, shrunk onto the same grid.

The model runs on 128³ windows of 1.5 mm at inference, so a structure of 10–20 mm is 7–14
voxels across, smaller than one 16-voxel patch of the encoder. The training caches drop
structures under 0.3 ml and 6 mm, and most of what remains fills a good part of its window: the
default model learnt few small objects, and on unseen nuclei, cord levels and subcortical labels
its first mask is a blob 3–5 times too large (benchmarks/results/window_spacing_unseen.json).

With probability ``prob`` a sample is drawn zoomed out by a factor ``f`` (log-uniform in
[1, ``max_factor``]): the block of ``round(f × side)`` voxels with the same centre as the window
is read from the cache and shrunk to ``side`` voxels, as a window of ``1.5 × f`` mm would see it.
Every structure then appears ``f`` times smaller, in the window's usual context. Images are
shrunk by averaging (``adaptive_avg_pool3d``: each output voxel the mean of the block voxels it
covers, no aliasing), a structure's mask by the same average at ≥ 0.5, a label map (for the
synthetic painter) by taking the label at each output voxel's centre. A zoom that would make the
structure vanish from the window falls back to no zoom.

Random numbers: one draw of the generator decides whether to zoom and one more the factor, only
when ``prob`` > 0, so runs without zoom keep their exact samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from SAMMed3DLib.errors import ConfigError


def check_zoom(prob: float, max_factor: float) -> None:
    """Raise :class:`ConfigError` unless ``prob`` lies in [0, 1] and ``max_factor`` in [1, 4]."""
    if not 0.0 <= prob <= 1.0:
        raise ConfigError(f"--zoom-prob must lie in [0, 1], got {prob}")
    if not 1.0 <= max_factor <= 4.0:
        raise ConfigError(f"--zoom-max must lie in [1, 4] (1 = no zoom; 4 reads blocks of 512³ voxels), got {max_factor}")


def draw_factor(rng: np.random.Generator, prob: float, max_factor: float) -> float:
    """1.0, or with probability ``prob`` a factor log-uniform in [1, ``max_factor``]."""
    if prob <= 0.0:
        return 1.0
    zoom = rng.random() < prob
    u = rng.random()
    if not zoom or max_factor <= 1.0:
        return 1.0
    return float(math.exp(u * math.log(max_factor)))


def zoomed_block(start: Sequence[int], side: int, factor: float) -> tuple[np.ndarray, int]:
    """(start, side) of the block that, shrunk to ``side``, is the window at ``start`` zoomed out ``factor`` times (same centre)."""
    big = max(side, int(round(side * factor)))
    centre2 = 2 * np.asarray(start, dtype=np.int64) + side  # twice the centre, to stay in integers
    return (centre2 - big) // 2, big


def shrink_image(block: np.ndarray, side: int) -> np.ndarray:
    """``block`` (n³) averaged onto ``side``³ voxels (float32)."""
    x = torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32))[None, None]
    return torch.nn.functional.adaptive_avg_pool3d(x, (side,) * 3)[0, 0].numpy()


def shrink_mask(block: np.ndarray, side: int) -> np.ndarray:
    """A 0/1 ``block`` (n³) onto ``side``³ voxels: the voxels at least half covered by it (bool)."""
    return shrink_image(block.astype(np.float32), side) >= 0.5


def shrink_labels(block: np.ndarray, side: int) -> np.ndarray:
    """A label map ``block`` (n³) onto ``side``³ voxels: the label at each output voxel's centre."""
    n = block.shape[0]
    idx = np.minimum(((np.arange(side) + 0.5) * (n / side)).astype(np.int64), n - 1)
    return np.ascontiguousarray(block[np.ix_(idx, idx, idx)])


__all__ = ["check_zoom", "draw_factor", "shrink_image", "shrink_labels", "shrink_mask", "zoomed_block"]
