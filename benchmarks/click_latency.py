"""Click latency of the interactive path (same as `sammed3d benchmark`).

    python benchmarks/click_latency.py [--threads 2] [--out benchmarks/results/click_latency.json]
"""

from __future__ import annotations

import sys

from SAMMed3DLib.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", "benchmarks/results/click_latency.json"]
    sys.exit(main(["benchmark", *args]))
