"""Click latency of two source trees in one run: before and after a change, on a shared machine.

    git archive <commit> | tar -x -C /tmp/before
    python benchmarks/click_latency_before_after.py --before /tmp/before [--after .] [--rounds 2]
        [--threads 2] [--clicks 10] [--model NAME|PATH] [--out benchmarks/results/click_latency_before_after.json]

Each tree runs in its own child process (``PYTHONPATH`` = the tree), alternately, ``--rounds``
times, so that the machine's load falls on both alike; the ratio of the medians is the figure to
quote. Every child does what ``sammed3d benchmark`` does for its warm figures, written here
once so that both trees run the same steps whatever their benchmark code: the official-size
network with random weights (seed 0), a warm-up click on a small volume, then on the benchmark's
512×512×200 CT at 0.8×0.8×2.5 mm, axis-aligned and tilted by 20°, a first click at the centre
and ``--clicks`` follow-ups within ±30 mm (alternately negative and positive), the previous
result held meanwhile as ``result = session.click(...)`` holds it. ``next_click_cpu_s`` is the
process's CPU time of a follow-up click (all threads), which the machine's load disturbs less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from SAMMed3DLib.atomic import atomic_write_text

_CHILD = r"""
import json, statistics, sys, time
import SAMMed3DLib
import numpy as np, SimpleITK as sitk, torch
from SAMMed3DLib.benchmark import synthetic_ct
from SAMMed3DLib.model import build_sam3d
from SAMMed3DLib.session import Session

threads, follow_ups, model_name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(threads)
torch.manual_seed(0)
if model_name:
    from SAMMed3DLib.checkpoint import load_model
    model = load_model(model_name).eval()
else:
    model = build_sam3d("vit_b_ori").eval()
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
    t = time.perf_counter()
    result = session.click(centre)
    first = time.perf_counter() - t
    paste = result.timings["paste"]
    rng = np.random.default_rng(1)
    times, cpu, pastes = [], [], []
    for i in range(follow_ups):
        offset = rng.uniform(-30, 30, size=3)
        t, c = time.perf_counter(), time.process_time()
        result = session.click(centre + offset, positive=bool(i % 2))
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        pastes.append(result.timings["paste"])
    out[name] = {"first_click_s": first, "first_paste_s": paste, "next_click_s": statistics.median(times),
                 "next_click_cpu_s": statistics.median(cpu), "next_paste_s": statistics.median(pastes), "next_click_all_s": times,
                 "sammed3d": SAMMed3DLib.__file__}
print(json.dumps(out))
"""


def run_tree(tree: Path, threads: int, clicks: int, model: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # cwd = the tree: ``python -c`` puts the working directory first on sys.path
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(threads), str(clicks), model], env=env, cwd=tree, capture_output=True, text=True, timeout=1800
    )
    if out.returncode != 0:
        raise SystemExit(f"the benchmark of {tree} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for figures in result.values():  # the child must have run this tree's code; the path stays out of the results
        if not Path(figures.pop("sammed3d")).resolve().is_relative_to(tree):
            raise SystemExit(f"the benchmark of {tree} imported SAMMed3DLib from elsewhere; run it from a checkout without `pip install -e` of another tree on the path")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the earlier source tree")
    parser.add_argument("--after", type=Path, default=Path("."), help="the later source tree (default: this one)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--model", default="", help="a registry name or checkpoint each tree loads itself (default: random weights of the official size)")
    parser.add_argument("--out", default="benchmarks/results/click_latency_before_after.json")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    for _ in range(args.rounds):
        for name in ("before", "after"):
            runs[name].append(run_tree(getattr(args, name).resolve(), args.threads, args.clicks, args.model))
    summary: dict = {"threads": args.threads, "clicks": args.clicks, "rounds": args.rounds, "model": args.model or "random weights (vit_b_ori)", "runs": runs}
    for grid in ("axis_aligned", "oblique"):
        for key in ("first_click_s", "first_paste_s", "next_click_s", "next_click_cpu_s", "next_paste_s"):
            before = statistics.median(r[grid][key] for r in runs["before"])
            after = statistics.median(r[grid][key] for r in runs["after"])
            summary[f"{grid}_{key}"] = {"before": round(before, 4), "after": round(after, 4), "ratio": round(before / after, 2)}
            print(f"{grid:<13}{key:<15} before {before:8.4f}  after {after:8.4f}  ratio {before / after:6.2f}")
    atomic_write_text(args.out, json.dumps(summary, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
