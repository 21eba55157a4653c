"""What boundary refinement (SAMMed3DLib.refine) costs a click, measured against no refinement in one run.

    python benchmarks/refine_latency.py [--model default] [--threads 2] [--clicks 10] [--rounds 3]
        [--out benchmarks/results/refine_latency.json]

On the benchmark's 512×512×200 CT (0.8×0.8×2.5 mm, tilted by 20° with ``--oblique``), after a
warm-up, each round opens two sessions, one with ``refine=False`` and one with ``refine=True``
(alternately first), and gives each the same clicks: a first click at the centre and ``--clicks``
follow-ups within ±30 mm, alternately negative and positive, as ``sammed3d benchmark`` does. It
prints and writes the medians of the first click and of the follow-ups for both, their ratios, and
the Dice between the two sessions' final masks (how much the refinement moved).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="registry name or checkpoint path (default: %(default)s)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--clicks", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--oblique", action="store_true", help="the CT tilted by 20 degrees")
    p.add_argument("--out", help="also write the JSON here")
    args = p.parse_args(argv)

    import SimpleITK as sitk
    import torch

    from SAMMed3DLib.benchmark import click_session, synthetic_ct
    from SAMMed3DLib.checkpoint import load_model
    from SAMMed3DLib.session import Session

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    warm = Session(model, sitk.Image([64, 64, 32], sitk.sitkFloat32), auto_extend=False, refine=True)
    warm.click_index((32, 32, 16))
    warm.click_index((30, 30, 16), positive=False)
    image = synthetic_ct(oblique=args.oblique)
    firsts: dict[bool, list[float]] = {False: [], True: []}
    nexts: dict[bool, list[float]] = {False: [], True: []}
    masks: dict[bool, np.ndarray] = {}
    for r in range(args.rounds):
        for refine in ((False, True) if r % 2 == 0 else (True, False)):
            session, first, _, times = click_session(model, image, args.clicks, refine=refine)
            firsts[refine].append(first)
            nexts[refine] += times
            masks[refine] = session.mask_array.copy()
    a, b = masks[False] != 0, masks[True] != 0
    out = {
        "model": args.model,
        "image_size_xyz": list(image.GetSize()),
        "spacing_xyz_mm": list(image.GetSpacing()),
        "oblique": bool(args.oblique),
        "threads": args.threads,
        "rounds": args.rounds,
        "first_click_s": {"plain": round(statistics.median(firsts[False]), 4), "refined": round(statistics.median(firsts[True]), 4)},
        "next_click_s": {"plain": round(statistics.median(nexts[False]), 4), "refined": round(statistics.median(nexts[True]), 4)},
        "first_click_ratio": round(statistics.median(firsts[True]) / statistics.median(firsts[False]), 3),
        "next_click_ratio": round(statistics.median(nexts[True]) / statistics.median(nexts[False]), 3),
        "final_mask_voxels": {"plain": int(a.sum()), "refined": int(b.sum())},
        "final_mask_dice_plain_vs_refined": round(2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum())), 4),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
