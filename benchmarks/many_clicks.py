"""Memory and time of one long session: 1,000 clicks with the shipped default model.

    python benchmarks/many_clicks.py [--threads 1] [--clicks 1000] [--history-limit 50] [--cli-replay]
                                     [--out benchmarks/results/many_clicks.json]

A synthetic CT-like phantom (80 x 70 x 60 voxels of 2.5 x 2.5 x 3 mm, an elongated bright organ of
about 180 x 60 x 50 mm in a body, noise) is segmented by a simulated user
(:class:`SAMMed3DLib.clicks.SimulatedUser`, "random" mode: each click is a random voxel of the
current error, positive on a missed voxel, negative on a false one; a perfect mask repeats the
last click), one :meth:`Session.click` at a time, with the default history. The organ is longer
than the model's 192 mm window less its margins, so clicks near its ends open further windows.
At 10, 100, 500 and 1,000 clicks the script records the process's resident memory (RSS), the
windows open, Dice, and the seconds of a decoder-only click, wall and CPU (median of the five
clicks up to that count that opened no window; a click that opens one adds an encoder pass).
With glibc it also records the memory malloc holds free (freed, not yet returned to the system,
part of the RSS; RSS minus it is "in use") and, at the end, the RSS after ``malloc_trim(0)``.

``--cli-replay`` then runs the same clicks through ``sammed3d segment`` (all ``--point`` and
``--negative`` options in one call, i.e. one :meth:`Session.predict`) in a child process and
records its peak RSS and time.

Targets (issue "Bad input never costs the user data"): RSS growth <= 50 MB from the 10th to the
1,000th click, and the 1,000th click no slower than 1.5 x the 10th.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from SAMMed3DLib import load_model
from SAMMed3DLib.atomic import atomic_write_text
from SAMMed3DLib.clicks import SimulatedUser
from SAMMed3DLib.metrics import dice
from SAMMed3DLib.session import DEFAULT_HISTORY_LIMIT, Session

CHECKPOINTS = (10, 100, 500, 1000)
TARGET_RSS_GROWTH_MB = 50.0
TARGET_SLOWDOWN = 1.5
#: Clicks whose decoder-only time makes up one checkpoint's "seconds a click" (their median).
TIMED_CLICKS = 5


def phantom(seed: int = 0) -> tuple[sitk.Image, np.ndarray]:
    """(image, organ mask (z, y, x) bool): 80 x 70 x 60 voxels of 2.5 x 2.5 x 3 mm."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0:60, 0:70, 0:80].astype(np.float32)
    body = ((x - 40) / 38) ** 2 + ((y - 35) / 30) ** 2 <= 1
    organ = ((x - 40) / 36) ** 2 + ((y - 33) / 12) ** 2 + ((z - 30) / 8.5) ** 2 <= 1
    arr = np.where(body, 40.0, -1000.0) + np.where(organ, 110.0, 0.0) + rng.normal(0, 12, x.shape)
    image = sitk.GetImageFromArray(arr.astype(np.float32))
    image.SetSpacing((2.5, 2.5, 3.0))
    image.SetOrigin((-100.0, -90.0, -90.0))
    return image, organ


def _glibc():  # noqa: ANN202
    """glibc through ctypes with ``mallinfo2`` typed, or None (another libc or platform)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    return libc


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_free_mb() -> float | None:
    """Memory glibc's malloc holds free (freed by the program, not returned to the system), MB."""
    libc = _glibc()
    return None if libc is None else libc.mallinfo2().fordblks / 2**20


def rss_after_trim_mb() -> float | None:
    """RSS after ``malloc_trim(0)`` hands glibc's free memory back: the memory actually in use."""
    libc = _glibc()
    if libc is None:
        return None
    libc.malloc_trim(0)
    return rss_mb()


def rss_mb() -> float:
    """Resident memory of this process now, MB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_session(model, image: sitk.Image, organ: np.ndarray, clicks: int, history_limit: int | None) -> dict:
    session = Session(model, image, history_limit=history_limit)
    user = SimulatedUser(organ, np.random.default_rng(0), mode="random")
    rss_start = rss_mb()
    pred = np.zeros_like(organ)
    times: list[tuple[float, float, bool]] = []  # (wall seconds, CPU seconds, opened a window)
    rows = []
    points, labels = [], []
    started = time.perf_counter()
    for n in range(1, clicks + 1):
        click = user.click_or_repeat(pred)
        point = session.geometry.index_to_lps(np.array(click.index[::-1], dtype=np.float64))
        points.append(point)
        labels.append(click.label)
        t, cpu = time.perf_counter(), time.process_time()
        result = session.click(point, positive=click.positive)
        times.append((time.perf_counter() - t, time.process_time() - cpu, result.timings["encoder"] > 0))
        pred = session.mask_array > 0
        if n in CHECKPOINTS or n == clicks:
            recent = [(w, c) for w, c, opened in times[-4 * TIMED_CLICKS :] if not opened][-TIMED_CLICKS:]
            free = malloc_free_mb()
            row = {
                "clicks": n,
                "rss_mb": round(rss_mb(), 1),
                "malloc_free_mb": None if free is None else round(free, 1),
                "rss_in_use_mb": None if free is None else round(rss_mb() - free, 1),
                "seconds_a_click": round(statistics.median(w for w, _ in recent), 4) if recent else None,
                "cpu_seconds_a_click": round(statistics.median(c for _, c in recent), 4) if recent else None,
                "seconds_this_click": round(times[-1][0], 4),
                "windows": len(session.windows),
                "positive_clicks": int(sum(labels)),
                "dice": round(float(dice(pred, organ)), 4),
                "elapsed_s": round(time.perf_counter() - started, 1),
            }
            rows.append(row)
            print(
                f"{n:5d} clicks: RSS {row['rss_mb']:7.1f} MB ({row['malloc_free_mb']} MB of it free in malloc), "
                f"{row['seconds_a_click']} s a click ({row['cpu_seconds_a_click']} s CPU), {row['windows']} window(s), "
                f"Dice {row['dice']:.3f}, {row['positive_clicks']} positive, {row['elapsed_s']} s",
                flush=True,
            )
    trimmed = rss_after_trim_mb()
    return {
        "rss_start_mb": round(rss_start, 1),
        "rss_end_after_trim_mb": None if trimmed is None else round(trimmed, 1),
        "rows": rows,
        "points_lps": points,
        "labels": labels,
    }


def cli_replay(image: sitk.Image, points: list[np.ndarray], labels: list[int], threads: int) -> dict:
    """The same clicks through ``sammed3d segment`` in a child process: its peak RSS and time."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "phantom.nrrd"
        sitk.WriteImage(image, str(path))
        argv = [sys.executable, "-c", "import sys; from SAMMed3DLib.cli import main; sys.argv[0] = 'sammed3d'; sys.exit(main())"]
        argv += ["segment", str(path), "--out", str(Path(folder) / "mask.nii.gz"), "--threads", str(threads)]
        for point, label in zip(points, labels):
            argv.append(f"{'--point' if label else '--negative'}={','.join(f'{v:.4f}' for v in point)}")
        t = time.perf_counter()
        done = subprocess.run(argv, check=False, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        seconds = time.perf_counter() - t
    if done.returncode:
        raise RuntimeError(f"sammed3d segment failed ({done.returncode}): {done.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {"clicks": len(labels), "seconds": round(seconds, 1), "seconds_a_click": round(seconds / len(labels), 4), "peak_rss_mb": round(peak, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clicks", type=int, default=max(CHECKPOINTS))
    parser.add_argument("--history-limit", type=int, default=DEFAULT_HISTORY_LIMIT, help="0 = no limit")
    parser.add_argument("--cli-replay", action="store_true", help="also replay the clicks through `sammed3d segment`")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/many_clicks.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    load_before = round(os.getloadavg()[0], 2)
    image, organ = phantom()
    model = load_model("default", device="cpu")
    warm = Session(model, image)  # first-call costs of torch kernels are not the session's
    warm.click(warm.geometry.index_to_lps(np.array([40.0, 33.0, 30.0])))
    del warm
    run = run_session(model, image, organ, args.clicks, args.history_limit or None)
    rows = {r["clicks"]: r for r in run["rows"]}
    first, last = rows[min(rows)], rows[max(rows)]
    growth = last["rss_mb"] - first["rss_mb"]
    slowdown = last["seconds_a_click"] / first["seconds_a_click"]
    in_use = None if first["rss_in_use_mb"] is None else round(last["rss_in_use_mb"] - first["rss_in_use_mb"], 1)
    summary = {
        "rss_growth_mb": round(growth, 1),
        "rss_in_use_growth_mb": in_use,
        "rss_growth_from_session_start_mb": round(last["rss_mb"] - run["rss_start_mb"], 1),
        "rss_end_after_trim_mb": run["rss_end_after_trim_mb"],
        "slowdown": round(slowdown, 3),
        "cpu_slowdown": round(last["cpu_seconds_a_click"] / first["cpu_seconds_a_click"], 3),
        "target_rss_growth_mb": TARGET_RSS_GROWTH_MB,
        "target_slowdown": TARGET_SLOWDOWN,
        "meets_rss_target": bool(growth <= TARGET_RSS_GROWTH_MB),
        "meets_time_target": bool(slowdown <= TARGET_SLOWDOWN),
    }
    result = {
        "benchmark": "many_clicks",
        "image": {"size_xyz": list(image.GetSize()), "spacing_xyz_mm": list(image.GetSpacing()), "organ_voxels": int(organ.sum())},
        "model": model.card.name,
        "click_mode": "random",
        "history_limit": args.history_limit or None,
        "threads": args.threads,
        "rss_session_start_mb": run["rss_start_mb"],
        "rows": run["rows"],
        "summary": summary,
    }
    print(
        f"RSS growth {first['clicks']} -> {last['clicks']} clicks: {growth:.1f} MB, in use {in_use} MB (target {TARGET_RSS_GROWTH_MB:.0f}); "
        f"click {last['clicks']} / click {first['clicks']}: {slowdown:.2f} x wall, {summary['cpu_slowdown']:.2f} x CPU "
        f"(target {TARGET_SLOWDOWN}); RSS after malloc_trim at the end: {run['rss_end_after_trim_mb']} MB"
    )
    if args.cli_replay:
        result["cli_replay"] = cli_replay(image, run["points_lps"], run["labels"], args.threads)
        print(f"sammed3d segment with the same {args.clicks} clicks: {result['cli_replay']}")
    result["load_average_before"] = load_before
    result["load_average_after"] = round(os.getloadavg()[0], 2)
    result["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
    }
    print(f"load average before: {load_before}, after: {result['load_average_after']} (cores: {os.cpu_count()})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
