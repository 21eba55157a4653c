"""Click latency of two source trees in one run: before and after a change, on a shared machine.

    git archive <commit> | tar -x -C /tmp/before
    python benchmarks/click_latency_before_after.py --before /tmp/before [--after .] [--rounds 2]
        [--threads 2] [--clicks 10] [--new-windows 0] [--cold] [--model NAME|PATH]
        [--out benchmarks/results/click_latency_before_after.json]

Each tree runs in its own child process (``PYTHONPATH`` = the tree), alternately, ``--rounds``
times, so that the machine's load falls on both alike; the ratio of the medians is the figure to
quote. Every child does what ``sammed3d benchmark`` does for its warm figures, written here
once so that both trees run the same steps whatever their benchmark code: the official-size
network with random weights (seed 0), a warm-up click on a small volume, then on the benchmark's
512×512×200 CT at 0.8×0.8×2.5 mm, axis-aligned and tilted by 20°, a first click at the centre
and ``--clicks`` follow-ups within ±30 mm (alternately negative and positive), the previous
result held meanwhile as ``result = session.click(...)`` holds it. ``next_click_cpu_s`` is the
process's CPU time of a follow-up click (all threads), which the machine's load disturbs less.
The first click's ``extract_s``, ``encoder_s`` and ``decoder_s`` come from its timings, and
``first_click_cpu_s`` is its CPU time.

``--new-windows N`` then clicks N more times on the axis-aligned CT, each time 100-120 mm away
(a new window, the official-size encoder again): ``new_window_click_s`` and its parts are the
medians over the first click and these. ``--cold`` adds, per round and tree, a fresh process in
the order of ``sammed3d segment`` (model built with the kernels pre-warmed in the background
when the tree has :mod:`SAMMed3DLib.warmup`, the CT made, then the first click):
``cold_first_click_s``.

``--wait-idle S`` waits before each child process until the machine's cores have been at least
85 % idle for 3 s (Linux ``/proc/stat``; at most S seconds): on a machine shared with other jobs
the two trees then run in the same quiet conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from SAMMed3DLib.atomic import atomic_write_text

#: Both child programs build their model the same way: a registry name or checkpoint loaded by the
#: tree itself, or random weights of the official size (``model_name`` = "").
_LOAD_MODEL = """if model_name:
    from SAMMed3DLib.checkpoint import load_model
    model = load_model(model_name).eval()
else:
    model = build_sam3d("vit_b_ori").eval()"""

_CHILD = r"""
import json, statistics, sys, time
import SAMMed3DLib
import numpy as np, SimpleITK as sitk, torch
from SAMMed3DLib.benchmark import synthetic_ct
from SAMMed3DLib.model import build_sam3d
from SAMMed3DLib.session import Session

threads, follow_ups, new_windows, model_name = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.set_num_threads(threads)
torch.manual_seed(0)
__LOAD_MODEL__
warm = Session(model, sitk.Image([64, 64, 32], sitk.sitkFloat32), auto_extend=False)
warm.click_index((32, 32, 16))
warm.click_index((30, 30, 16), positive=False)
out = {}
for name in ("axis_aligned", "oblique"):
    image = synthetic_ct()  # tilted by 20 degrees in both trees
    if name == "axis_aligned":
        image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()]))
    session = Session(model, image, auto_extend=False)
    t, c = time.perf_counter(), time.process_time()
    result = session.click(centre)
    first, first_cpu = time.perf_counter() - t, time.process_time() - c
    paste = result.timings["paste"]
    first_parts = {f"{k}_s": result.timings[k] for k in ("extract", "encoder", "decoder")}
    rng = np.random.default_rng(1)
    times, cpu, pastes = [], [], []
    for i in range(follow_ups):
        offset = rng.uniform(-30, 30, size=3)
        t, c = time.perf_counter(), time.process_time()
        result = session.click(centre + offset, positive=bool(i % 2))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        pastes.append(result.timings["paste"])
    out[name] = {"first_click_s": first, "first_click_cpu_s": first_cpu, "first_paste_s": paste, "next_click_s": statistics.median(times),
                 "next_click_cpu_s": statistics.median(cpu), "next_paste_s": statistics.median(pastes), "next_click_all_s": times,
                 **first_parts, "sammed3d": SAMMed3DLib.__file__}
    if name == "axis_aligned" and new_windows:
        clicks, clicks_cpu, parts = [first], [first_cpu], {k: [v] for k, v in first_parts.items()}
        offsets = [(100.0, 0.0, 0.0), (-100.0, 0.0, 0.0), (0.0, 100.0, 0.0), (0.0, -100.0, 0.0), (0.0, 0.0, 120.0), (0.0, 0.0, -120.0)]
        for offset in offsets[:new_windows]:
            t, c = time.perf_counter(), time.process_time()
            result = session.click(centre + np.array(offset))
            clicks.append(time.perf_counter() - t)
            clicks_cpu.append(time.process_time() - c)
            for k in parts:
                parts[k].append(result.timings[k[:-2]])
        out[name].update({"new_window_click_s": statistics.median(clicks), "new_window_click_cpu_s": statistics.median(clicks_cpu), "new_window_click_all_s": clicks,
                          **{f"new_window_{k}": statistics.median(v) for k, v in parts.items()}})
print(json.dumps(out))
""".replace("__LOAD_MODEL__", _LOAD_MODEL)


_COLD = r"""
import importlib.util, json, sys, time
import SAMMed3DLib
import numpy as np, torch
from SAMMed3DLib.benchmark import synthetic_ct
from SAMMed3DLib.model import build_sam3d
from SAMMed3DLib.session import Session

torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
model_name = sys.argv[2]
__LOAD_MODEL__
if importlib.util.find_spec("SAMMed3DLib.warmup") is not None:
    from SAMMed3DLib.warmup import warm_up_in_background
    warm_up_in_background(model)
image = synthetic_ct()
image.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
centre = np.array(image.TransformContinuousIndexToPhysicalPoint([s / 2 for s in image.GetSize()]))
t, c = time.perf_counter(), time.process_time()
result = Session(model, image, auto_extend=False).click(centre)
print(json.dumps({"cold_first_click_s": time.perf_counter() - t, "cold_first_click_cpu_s": time.process_time() - c, "cold_extract_s": result.timings["extract"],
                  "cold_encoder_s": result.timings["encoder"], "sammed3d": SAMMed3DLib.__file__}))
""".replace("__LOAD_MODEL__", _LOAD_MODEL)


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all cores since boot, or None where /proc/stat is missing."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    return values[3] + values[4], sum(values)


def wait_idle(limit_s: float, idle_share: float = 0.85, window_s: float = 3.0) -> float:
    """Wait until the cores were at least ``idle_share`` idle over ``window_s`` (at most ``limit_s``); the idle share seen."""
    deadline = time.monotonic() + limit_s
    share = 0.0
    while True:
        before = _cpu_times()
        time.sleep(window_s)
        after = _cpu_times()
        if before is None or after is None:
            return 1.0
        share = (after[0] - before[0]) / max(1, after[1] - before[1])
        if share >= idle_share or time.monotonic() >= deadline:
            return share


def _run_child(tree: Path, code: str, *args: object, wait_s: float = 0.0) -> dict:
    if wait_s > 0:
        wait_idle(wait_s)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # cwd = the tree: ``python -c`` puts the working directory first on sys.path
    out = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, cwd=tree, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"the benchmark of {tree} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for figures in result.values() if "sammed3d" not in result else [result]:
        # the child must have run this tree's code; the path stays out of the results
        if not Path(figures.pop("sammed3d")).resolve().is_relative_to(tree):
            raise SystemExit(f"the benchmark of {tree} imported SAMMed3DLib from elsewhere; run it from a checkout without `pip install -e` of another tree on the path")
    return result


def run_tree(tree: Path, threads: int, clicks: int, new_windows: int = 0, cold: bool = False, wait_s: float = 0.0, model: str = "") -> dict:
    """One child process of ``tree`` (warm figures), then with ``cold`` a fresh one for the cold first click.

    ``model``: a registry name or checkpoint each tree loads itself; "" = random weights of the official size.
    """
    result = _run_child(tree, _CHILD, threads, clicks, new_windows, model, wait_s=wait_s)
    if cold:
        result["cold"] = _run_child(tree, _COLD, threads, model, wait_s=wait_s)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the earlier source tree")
    parser.add_argument("--after", type=Path, default=Path("."), help="the later source tree (default: this one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--new-windows", type=int, default=0, choices=range(7), help="first clicks in new windows after the follow-ups (axis-aligned CT, at most 6)")
    parser.add_argument("--cold", action="store_true", help="also a cold first click in a fresh process per round and tree")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="S", help="wait up to S seconds for idle cores before each child process")
    parser.add_argument("--model", default="", help="a registry name or checkpoint each tree loads itself (default: random weights of the official size)")
    parser.add_argument("--out", default="benchmarks/results/click_latency_before_after.json")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for name in ("before", "after"):
            runs[name].append(run_tree(getattr(args, name).resolve(), args.threads, args.clicks, args.new_windows, args.cold, args.wait_idle, args.model))
    summary: dict = {"threads": args.threads, "clicks": args.clicks, "rounds": args.rounds, "new_windows": args.new_windows,
                     "model": args.model or "random weights (vit_b_ori)", "runs": runs}
    keys = ["first_click_s", "first_click_cpu_s", "extract_s", "encoder_s", "decoder_s", "first_paste_s", "next_click_s", "next_click_cpu_s", "next_paste_s"]
    keys += [f"new_window_{k}" for k in ("click_s", "click_cpu_s", "extract_s", "encoder_s", "decoder_s")]
    keys += ["cold_first_click_s", "cold_first_click_cpu_s", "cold_extract_s", "cold_encoder_s"]
    for grid in ("axis_aligned", "oblique", "cold"):
        for key in keys:
            if any(key not in r.get(grid, {}) for r in runs["before"] + runs["after"]):
                continue
            before = statistics.median(r[grid][key] for r in runs["before"])
            after = statistics.median(r[grid][key] for r in runs["after"])
            name = key if key.startswith(grid) else f"{grid}_{key}"
            summary[name] = {"before": round(before, 4), "after": round(after, 4), "ratio": round(before / after, 2)}
            print(f"{grid:<13}{key:<24} before {before:8.4f}  after {after:8.4f}  ratio {before / after:6.2f}")
    atomic_write_text(args.out, json.dumps(summary, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
