"""``sammed3d models``: list the known models and download one.

``sammed3d models [list] [--json]`` shows each registry model's status (shipped, downloaded,
partly downloaded...), size, licence and path; it needs neither torch nor the network.
``sammed3d models download NAME`` fetches a model into the cache folder with a tqdm progress
bar; an interrupted download (Ctrl-C, lost connection) resumes on the next run.
"""

from __future__ import annotations

import argparse
import json
import sys

from .. import registry

_STATUS_HELP = f"downloads go to ${registry.CACHE_ENV} (default ~/.cache/sammed3d/models)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list known models; download one",
        description=f"List the registry's models or download one. {_STATUS_HELP}.",
    )
    parser.add_argument("--json", action="store_true", help="print the list as JSON")
    parser.set_defaults(func=_run_list)
    actions = parser.add_subparsers(dest="models_action", metavar="ACTION")

    listing = actions.add_parser("list", help="list models and their status (the default)")
    listing.add_argument("--json", action="store_true", help="print the list as JSON")
    listing.set_defaults(func=_run_list)

    download = actions.add_parser("download", help="download a model into the cache folder (resumable)")
    download.add_argument("name", help="registry name, e.g. sam_med3d_turbo")
    download.add_argument("--force", action="store_true", help="download again even if the model is already there")
    download.add_argument("--url", default=None, help=f"download from this URL instead (or set {registry.URL_ENV_PREFIX}<NAME>)")
    download.set_defaults(func=_run_download)


def _parameters(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} M"


def _run_list(args: argparse.Namespace) -> int:
    infos = registry.list_models()
    if args.json:
        print(json.dumps([info.to_dict() for info in infos], indent=2))
        return 0
    rows = [("NAME", "STATUS", "PARAMETERS", "SIZE", "LICENCE", "DESCRIPTION")]
    rows += [
        (i.name, i.status, _parameters(i.parameters), registry.format_bytes(i.size_bytes), i.license, i.description) for i in infos
    ]
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:5], widths)) + "  " + row[5])
    print()
    for info in infos:
        print(f"{info.name}: {info.path}")
    print(f"Cache folder: {registry.cache_dir()} (set {registry.CACHE_ENV} to move it)")
    missing = [i.name for i in infos if i.kind == "download" and not i.available]
    if missing:
        print(f"Download with: sammed3d models download {missing[0]}")
    return 0


def _run_download(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    entry = registry.get_entry(args.name)  # unknown name → clear error before anything starts
    bar: tqdm | None = None  # created at the first byte, so an immediate error prints no empty bar

    def progress(done: int, total: int | None) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(desc=entry.name, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, dynamic_ncols=True)
        if total is not None and bar.total != total:
            bar.total = total
            bar.refresh()
        if done < bar.n:  # the server ignored the resume request: counting starts over
            bar.reset(total=total)
        bar.update(done - bar.n)

    try:
        path = registry.download_model(args.name, progress, url=args.url, force=args.force)
    except KeyboardInterrupt:
        print(f"\ndownload interrupted; run `sammed3d models download {args.name}` again to resume", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
    print(path)
    return 0
