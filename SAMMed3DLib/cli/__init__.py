"""``sammed3d`` command-line interface.

Each sub-command lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func(args) -> int`` as the default.
``main`` configures logging (the library itself never does), turns project errors into one
clear line on stderr and exit status 2, and returns the command's status.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys

# OpenMP's passive waiting is set by the package itself (SAMMed3DLib/__init__.py), before any
# sub-command imports torch.

from ..errors import SAMMed3DError

#: Sub-command modules, in the order ``--help`` lists them.
COMMAND_MODULES: tuple[str, ...] = ("models", "segment", "evaluate", "demo", "benchmark")

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="sammed3d",
        description="Interactive promptable 3D segmentation with SAM-Med3D.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


#: Options whose value may start with "-" (coordinates like -12.5,40,88); argparse would read
#: such a value as an option, so main() glues it to its option as "--point=-12.5,40,88".
COORDINATE_OPTIONS: frozenset[str] = frozenset({"--point", "--negative", "--box"})
_NUMBER_START = re.compile(r"^-[\d.]")


def _glue_negative_coordinates(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in COORDINATE_OPTIONS and i + 1 < len(argv) and _NUMBER_START.match(argv[i + 1]):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_glue_negative_coordinates(list(sys.argv[1:] if argv is None else argv)))
    level = logging.WARNING - 10 * min(args.verbose, 2) if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except SAMMed3DError as exc:
        print(f"sammed3d {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sammed3d {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
