"""Start the web app: check the extra, bind to loopback unless told otherwise, serve.

Design:

- The app has no authentication: anyone who reaches the port can read the volume and write
  files into the output folder. So it binds to 127.0.0.1 by default, and another interface is
  an explicit choice (``--host ADDRESS --allow-remote``) that prints a warning. From another
  machine, the safe way is an SSH tunnel (:data:`TUNNEL_HINT`).
- trame parses ``sys.argv`` itself when it starts; it is given only the options it needs (host,
  port, no browser, no idle time-out), never the ``sammed3d`` command line.
- :func:`start` serves on the calling thread (the command); :func:`start_in_thread` serves on a
  thread of its own with its own event loop and returns a :class:`RunningApp` (embedding,
  tests), whose :meth:`RunningApp.call` runs a function on the server's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

logger = logging.getLogger(__name__)

#: How to reach a server on another machine without exposing it.
TUNNEL_HINT = "from another machine: ssh -L {port}:127.0.0.1:{port} USER@THIS_HOST, then open http://127.0.0.1:{port}/"

_names = itertools.count(1)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_host(host: str, allow_remote: bool) -> str | None:
    """The warning to print for ``host`` (None for loopback).

    Raises:
        ConfigError: a non-loopback host without ``allow_remote``.
    """
    if is_loopback(host):
        return None
    if not allow_remote:
        raise ConfigError(
            f"--host {host} would serve the page, the volume and the save button to the network without any "
            f"authentication; keep the default 127.0.0.1 and use an SSH tunnel ({TUNNEL_HINT.format(port='PORT')}), "
            "or add --allow-remote if this network is trusted"
        )
    return (
        f"WARNING: serving on {host} without authentication: anyone who can reach this port can see the volume and "
        "write files into the output folder. Prefer the default 127.0.0.1 with an SSH tunnel."
    )


def prepare_environment() -> None:
    """Everything that must happen before the first trame or VTK import: the extra, EGL, the logic's path.

    Raises:
        ConfigError: the ``web`` extra is missing, or the logic cannot be found (a wheel install).
    """
    from . import add_logic_to_path, missing_web_extra, use_egl_rendering

    problem = missing_web_extra()
    if problem:
        raise ConfigError(problem)
    use_egl_rendering()
    add_logic_to_path()


def create_app(options: Any, name: str | None = None) -> Any:
    """A new trame server with a :class:`~.app.WebApp` on it, its volume loaded (not serving yet)."""
    prepare_environment()
    from trame.app import get_server

    from .app import WebApp

    server = get_server(name or f"sammed3d-web-{next(_names)}", client_type="vue3")
    app = WebApp(server, options)
    if options.images:
        app.load_paths(options.images, options.segmentation)
    elif options.sample:
        from ..cli.demo import load_sample

        image, _, _, description = load_sample()
        logger.info("sample volume: %s", description)
        app.show_image(image, "sample", options.segmentation)
    elif options.segmentation:
        raise ConfigError("--segmentation needs the image it was made on: give IMAGE too (or --sample)")
    return app


@contextlib.contextmanager
def _trame_argv(host: str, port: int) -> Iterator[None]:
    """trame reads ``sys.argv`` when it starts: give it only what it should see."""
    saved = sys.argv
    sys.argv = [saved[0] if saved else "sammed3d", "--server", "--host", host, "--port", str(port), "--timeout", "0"]
    try:
        yield
    finally:
        sys.argv = saved


def start(app: Any, host: str = "127.0.0.1", port: int = 8080, on_ready: Callable[[int], None] | None = None, **kwargs: Any) -> None:
    """Serve ``app`` on this thread until the server stops (Ctrl+C)."""
    server = app.server

    def ready(**_: Any) -> None:
        if on_ready is not None:
            on_ready(server.port)

    server.controller.on_server_ready.add(ready)
    with _trame_argv(host, port):
        try:
            server.start(host=host, port=port, open_browser=False, show_connection_info=False, timeout=0, **kwargs)
        finally:
            app.close()


@dataclass
class RunningApp:
    """A web app served by :func:`start_in_thread`."""

    app: Any
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    port: int
    host: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def call(self, function: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Run ``function`` on the server's event loop (where MRML lives) and return its result."""

        async def run() -> Any:
            result = function()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving and wait for the thread."""
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.app.server.stop(), self.loop).result(timeout)
            self.thread.join(timeout)


def start_in_thread(options: Any, host: str = "127.0.0.1", port: int = 0, timeout: float = 120.0) -> RunningApp:
    """Build and serve a web app on a thread of its own; returns once it accepts connections.

    Raises:
        ConfigError: see :func:`create_app`; RuntimeError: the server did not start in time.
    """
    started = threading.Event()
    box: dict[str, Any] = {}

    def serve() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        box["loop"] = loop
        try:
            box["app"] = create_app(options)

            def ready(actual_port: int) -> None:
                box["port"] = actual_port
                started.set()

            start(box["app"], host, port, on_ready=ready, thread=True)
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=serve, name="sammed3d-web", daemon=True)
    thread.start()
    if not started.wait(timeout):
        raise RuntimeError(f"the web app did not start within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return RunningApp(box["app"], box["loop"], thread, box["port"], host)
