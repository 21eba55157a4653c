"""``sammed3d web``: the interactive loop in a browser (slice views, 3D view, ± clicks, undo, save).

Needs the ``web`` extra (``pip install -e ".[web]"``: trame-slicer on slicer-core) and a source
checkout (the app runs the Slicer module's logic). Serves on 127.0.0.1 by default; see
:mod:`SAMMed3DLib.web.server` for why another interface needs ``--allow-remote``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ._common import add_model_args, apply_threads

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "web",
        help="segment in a browser: slice and 3D views, ± clicks, undo, save (needs the web extra)",
        description=(
            "Serve the interactive loop as a web page: slice and 3D views of IMAGE on Slicer core, + and - clicks "
            "through the Slicer module's logic, undo, several segments, save. Needs the web extra "
            '(pip install -e ".[web]") in a source checkout. Serves on 127.0.0.1: reach it from another machine '
            "through an SSH tunnel (ssh -L 8080:127.0.0.1:8080 HOST)."
        ),
    )
    p.add_argument("image", nargs="?", metavar="IMAGE", help="NIfTI, NRRD, MHA file or DICOM folder to show (or upload one in the page)")
    p.add_argument("--segmentation", metavar="SEG", help="start from this segmentation (.seg.nrrd, or a label image on IMAGE)")
    p.add_argument("--sample", action="store_true", help="show the demo's sample volume (MNI152 T1, or a phantom without nilearn)")
    p.add_argument("--out", default="sammed3d-web", help="folder the Save button writes into (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="interface to serve on (default: %(default)s, this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--allow-remote", action="store_true", help="allow a --host other than loopback (no authentication!)")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..web import server
    from ..web.app import WebOptions

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    if args.image and args.sample:
        raise ConfigError("give IMAGE or --sample, not both")
    warning = server.check_host(args.host, args.allow_remote)
    options = WebOptions(
        images=(args.image,) if args.image else (),
        segmentation=args.segmentation,
        model=args.model,
        device=args.device,
        out_dir=Path(args.out),
        sample=args.sample,
    )
    if args.verbose < 2:  # trame, wslink and aiohttp log every request and template token at INFO
        for name in ("trame_server", "trame_client", "trame_vuetify", "trame_slicer", "wslink", "aiohttp.access"):
            logging.getLogger(name).setLevel(logging.WARNING)
    apply_threads(args)
    app = server.create_app(options)
    if warning:
        print(warning, flush=True)

    def ready(port: int) -> None:
        print(f"sammed3d web: open http://{args.host}:{port}/ (Ctrl+C stops)", flush=True)
        if server.is_loopback(args.host):
            print(server.TUNNEL_HINT.format(port=port), flush=True)

    server.start(app, args.host, args.port, on_ready=ready)
    return 0
