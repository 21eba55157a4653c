"""Command line of the trainer: ``python -m training --cache CACHE --out RUN_DIR [options]``.

Also runs under ``torchrun --nproc_per_node=N -m training ...`` (DDP from the environment).
Options: every :class:`training.config.TrainConfig` field as a flag; ``--config FILE`` loads a
saved ``config.json`` first; ``--resume`` continues ``RUN_DIR/last.pt`` with the run's saved
configuration (flags given with it override, e.g. a larger ``--max-steps``); ``--export PATH``
writes the final (or ``--export-weights best.pt``) model with its card after training.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from SAMMed3DLib.errors import SAMMed3DError

from .config import TrainConfig, add_arguments, overrides_from_args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description="Train a SAM-Med3D model with simulated clicks.")
    parser.add_argument("--cache", help="training cache from `python -m training.prepare`")
    parser.add_argument("--out", required=True, help="run folder (config.json, last.pt, best.pt, history.json, tb/)")
    parser.add_argument("--config", help="a config.json to start from (flags override it)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--export", help="after training, write the model + card to this .pth path")
    parser.add_argument("--export-weights", default="last.pt", choices=["last.pt", "best.pt"])
    parser.add_argument("--export-only", action="store_true", help="skip training; export the run's weights")
    parser.add_argument("--eval-data", help="raw case folders of the validation cases: the card's Dice then comes from `sammed3d evaluate`")
    parser.add_argument("-q", "--quiet", action="store_true")
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .trainer import Trainer

    try:
        base: dict = {}
        saved = Path(args.out) / "config.json"
        if args.config:
            base = TrainConfig.load(args.config).to_dict()
        elif (args.resume or args.export_only) and saved.is_file():
            base = TrainConfig.load(saved).to_dict()
        base.update(overrides_from_args(args))
        base["out"] = args.out
        if args.cache:
            base["cache"] = args.cache
        if not base.get("cache"):
            print("error: --cache is required (a folder written by `python -m training.prepare`)", file=sys.stderr)
            return 2
        cfg = TrainConfig.from_dict(base)
        trainer = Trainer(cfg, resume=args.resume or args.export_only)
        try:
            if not args.export_only:
                result = trainer.fit()
                if result:
                    print(f"validation Dice after step {trainer.step}: {result['dice']}")
            if args.export and trainer.info.is_main:
                card = trainer.export(Path(args.export), weights=args.export_weights, eval_data=args.eval_data)
                print(f"exported {args.export} (Dice {card.metrics.get('dice')})")
        finally:
            trainer.close()
    except SAMMed3DError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
