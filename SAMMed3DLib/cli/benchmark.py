"""``sammed3d benchmark``: click latency of the interactive path (see SAMMed3DLib.benchmark)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..atomic import atomic_write_text


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("benchmark", help="measure click latency on a synthetic 512×512×200 CT")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--clicks", type=int, default=10, help="follow-up clicks to time (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    p.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="the network's precision: bf16 runs it under autocast and reports the mask's Dice against fp32 (default: %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    p.add_argument("--no-cold", action="store_true", help="skip the fresh-process (cold) first click")
    p.add_argument("--cold-repeats", type=int, default=3, help="fresh processes with and without pre-warming, each (default: %(default)s)")
    p.add_argument("--model", help="a registry name (e.g. default) or checkpoint file to measure (default: random weights of the official size)")
    p.add_argument("--out", help="also write the JSON to this file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..benchmark import format_table, run_click_latency, to_json
    from ..checkpoint import resolve_device

    result = run_click_latency(
        threads=args.threads, follow_ups=args.clicks, device=str(resolve_device(args.device)), cold=not args.no_cold, cold_repeats=args.cold_repeats,
        model_source=args.model, precision=args.precision,
    )
    text = to_json(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text + "\n")
    print(text if args.json else format_table(result))
    return 0
