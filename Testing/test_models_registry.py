"""Model registry, cache folder and downloader; the ``sammed3d models`` command.

Downloads run against a real ``http.server`` on 127.0.0.1 in a thread, serving real (small)
checkpoints; nothing here touches the internet. Every transfer has a socket timeout and a
bounded number of retries.
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from SAMMed3DLib import build_sam3d, load_model, save_model
from SAMMed3DLib import cli as sammed3d_cli
from SAMMed3DLib import download, locks
from SAMMed3DLib import registry as reg
from SAMMed3DLib.errors import (
    CheckpointError,
    ConfigError,
    DownloadError,
    IntegrityError,
    OperationCancelledError,
    UnknownModelError,
)
from SAMMed3DLib.model import KNOWN_CONFIGS

SMALL = {
    "image_encoder": {
        "img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 2, "out_chans": 48,
        "use_rel_pos": True, "window_size": 3, "global_attn_indexes": [1],
    },
    "prompt_encoder": {"embed_dim": 48, "image_embedding_size": 4, "input_image_size": 32, "mask_in_chans": 8},
    "mask_decoder": {"transformer_dim": 48},
}  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # Tiny models on a shared 2-core machine: one OpenMP thread is ~100x faster here (measured).
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch) -> Path:
    """Every test gets its own cache folder and no URL overrides from the developer's shell."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(reg.CACHE_ENV, str(cache))
    monkeypatch.delenv(reg.URL_ENV_PREFIX + "SAM_MED3D_TURBO", raising=False)
    return cache


# ---------------------------------------------------------------------------------------------
# A local HTTP server with controllable misbehaviour


#: Misbehaving-server timings: "trickle" sends a byte every TRICKLE_S; "slow" sends pieces of
#: SLOW_PIECE_BYTES with SLOW_PAUSE_S between them (2.8 MB in about 0.9 s); "pause_half" sends
#: the first half at once, then pauses PAUSE_S before the rest.
TRICKLE_S = 0.05
SLOW_PIECE_BYTES = 64 * 1024
SLOW_PAUSE_S = 0.02
PAUSE_S = 5.0


class _State:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.lock = threading.Lock()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection; the server closes after it
    state: _State

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        return

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        state = self.state
        path = self.path
        range_header = self.headers.get("Range")
        with state.lock:
            state.requests.append((path, range_header))
            count = sum(1 for p, _ in state.requests if p == path)
        mode = state.modes.get(path, "normal")
        if mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "/" + path.rsplit("/redirect-to/", 1)[-1])
            self.end_headers()
            return
        if path not in state.files:
            self.send_error(404, "Not Found")
            return
        data = state.files[path]
        if mode == "huge":  # announces a petabyte, sends nothing
            self.send_response(200)
            self.send_header("Content-Length", str(10**15))
            self.end_headers()
            return
        if mode == "stall":
            time.sleep(3)
            return
        if mode == "drop_first" and count == 1:  # full length announced, half sent, connection closed
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if mode == "trickle":  # full length announced, then one byte every TRICKLE_S
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for i in range(len(data)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(TRICKLE_S)
            except OSError:  # the client gave up
                pass
            return
        start = 0
        if range_header and mode != "ignore_range":
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        pieces = {"slow": range(start, len(data), SLOW_PIECE_BYTES), "pause_half": (start, max(start, len(data) // 2))}.get(mode)
        if pieces is not None:  # slow: a piece every SLOW_PAUSE_S; pause_half: PAUSE_S after the first half
            pause = SLOW_PAUSE_S if mode == "slow" else PAUSE_S
            ends = list(pieces[1:]) + [len(data)]
            try:
                for begin, end in zip(pieces, ends):
                    self.wfile.write(data[begin:end])
                    self.wfile.flush()
                    if end < len(data):
                        time.sleep(pause)
            except OSError:
                pass
            return
        self.wfile.write(data[start:])


class LocalServer:
    def __init__(self) -> None:
        self.state = _State()
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def serve(self, path: str, data: bytes, mode: str = "normal") -> str:
        self.state.files[path] = data
        self.state.modes[path] = mode
        return self.url(path)

    def ranges(self, path: str) -> list[str | None]:
        return [r for p, r in self.state.requests if p == path]


@pytest.fixture
def server() -> Iterator[LocalServer]:
    srv = LocalServer()
    srv.thread.start()
    try:
        yield srv
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
        srv.thread.join(timeout=5)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> bytes:
    """Bytes of a real small checkpoint in our format (~2.8 MB: several download chunks)."""
    torch.manual_seed(3)
    path = save_model(build_sam3d(SMALL), tmp_path_factory.mktemp("ckpt") / "small.pth", card_json=False)
    return path.read_bytes()


@pytest.fixture(scope="module")
def vit_b_ori_on_meta() -> torch.nn.Module:
    """The released checkpoints' architecture, without memory (shapes only)."""
    with torch.device("meta"):
        return build_sam3d("vit_b_ori")


@pytest.fixture(scope="module")
def turbo_shaped_checkpoint(tmp_path_factory, vit_b_ori_on_meta) -> bytes:
    """An official-layout file with every vit_b_ori key and shape, one float of storage each."""
    state = {k: torch.zeros(1).expand(v.shape) for k, v in vit_b_ori_on_meta.state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "turbo_shaped.pth"
    torch.save({"model_state_dict": state, "epoch": 1}, path)
    return path.read_bytes()


def _registry(cache: Path, **entry: object) -> reg.ModelRegistry:
    base = {"description": "test model", "license": "Apache-2.0", "source": "tests", "filename": "tiny.pth"}
    return reg.ModelRegistry(reg.parse_registry({"schema_version": 1, "models": {"tiny": {**base, **entry}}}), cache=cache)


class _Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))


# ---------------------------------------------------------------------------------------------
# The shipped registry


def test_registry_module_does_not_import_torch() -> None:
    code = (
        "import sys, SAMMed3DLib.registry as m, SAMMed3DLib.cli.models\n"
        "infos = m.list_models()\n"
        "assert [i.name for i in infos] == ['default', 'sam_med3d_turbo'], infos\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_shipped_registry_entries() -> None:
    registry = reg.default_registry()
    assert registry.names() == ["default", "sam_med3d_turbo"]
    turbo = registry.entry("sam_med3d_turbo")
    assert turbo.kind == "download" and turbo.url == "https://huggingface.co/blueyo0/SAM-Med3D/resolve/main/sam_med3d_turbo.pth"
    assert turbo.license == "Apache-2.0" and turbo.parameters == 100_509_232 and turbo.architecture == "vit_b_ori"
    default = registry.entry("default")
    assert default.kind == "shipped" and default.file == "Models/default.pth" and default.card == "Models/default.json"
    for name in registry.names():
        arch = registry.entry(name).architecture
        assert arch is None or arch in KNOWN_CONFIGS


def test_vit_b_ori_parameter_count_matches_the_registry(vit_b_ori_on_meta) -> None:
    assert sum(p.numel() for p in vit_b_ori_on_meta.parameters()) == reg.get_entry("sam_med3d_turbo").parameters


def test_default_model_status() -> None:
    info = reg.default_registry().info("default")
    assert info.path == reg.RESOURCES_DIR / "Models" / "default.pth"
    assert (info.status, info.available) == (("shipped", True) if info.path.is_file() else ("not shipped yet", False))


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(reg.CACHE_ENV, str(tmp_path / "elsewhere"))
    assert reg.model_path("sam_med3d_turbo") == tmp_path / "elsewhere" / "sam_med3d_turbo.pth"
    monkeypatch.delenv(reg.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert reg.cache_dir() == tmp_path / "home" / ".cache" / "sammed3d" / "models"


def test_url_override_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("SAMMED3D_MODEL_URL_SAM_MED3D_TURBO", "http://mirror.example/turbo.pth")
    assert reg.default_registry().url("sam_med3d_turbo") == "http://mirror.example/turbo.pth"


def test_status_follows_the_cache(_isolated_cache) -> None:
    registry = reg.default_registry()
    assert registry.info("sam_med3d_turbo").status == "not downloaded"
    _isolated_cache.mkdir(parents=True)
    (_isolated_cache / "sam_med3d_turbo.pth.part").write_bytes(b"x" * 1500)
    assert registry.info("sam_med3d_turbo").status == "partly downloaded (1.5 kB of ?)"
    (_isolated_cache / "sam_med3d_turbo.pth").write_bytes(b"y" * 2000)
    info = registry.info("sam_med3d_turbo")
    assert (info.status, info.available, info.size_bytes) == ("downloaded", True, 2000)


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(UnknownModelError, match=r"unknown model 'turbo'; known models: default, sam_med3d_turbo"):
        reg.get_entry("turbo")


def test_not_downloaded_model_says_which_command_to_run() -> None:
    with pytest.raises(CheckpointError, match=r"run `sammed3d models download sam_med3d_turbo` first"):
        reg.ensure_model("sam_med3d_turbo")


_VALID_ENTRY = {"description": "d", "license": "MIT", "source": "s", "url": "https://x.org/m.pth", "filename": "m.pth"}


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.update(schema_version=2), r"schema_version must be 1"),
        (lambda d: d.update(models={}), r"'models' must be a non-empty object"),
        (lambda d: d["models"].update({"Bad-Name": dict(_VALID_ENTRY)}), r"names use lower-case letters"),
        (lambda d: d["models"]["m"].update(sha256="abc"), r"'sha256' must be 64 lower-case hex digits"),
        (lambda d: d["models"]["m"].update(size=-3), r"'size' must be a positive integer"),
        (lambda d: d["models"]["m"].update(url="ftp://x.org/m.pth"), r"'url' must be an http\(s\) URL"),
        (lambda d: d["models"]["m"].update(filename="../m.pth"), r"'filename' must be a plain file name"),
        (lambda d: d["models"]["m"].update(file="Models/m.pth"), r"needs exactly one of 'file'"),
        (lambda d: d["models"]["m"].update(licence="MIT"), r"unknown key\(s\) \['licence'\]"),
        (lambda d: d["models"]["m"].pop("license"), r"'license' must be a non-empty string"),
        (lambda d: d["models"]["m"].update(parameters="100M"), r"'parameters' must be a positive integer or null"),
    ],
    ids=["schema", "empty", "name", "sha256", "size", "url", "filename", "file and url", "typo", "missing", "parameters"],
)
def test_invalid_registry_documents(change, match) -> None:
    doc = {"schema_version": 1, "models": {"m": copy.deepcopy(_VALID_ENTRY)}}
    assert reg.parse_registry(copy.deepcopy(doc))["m"].url == "https://x.org/m.pth"
    change(doc)
    with pytest.raises(ConfigError, match=match):
        reg.parse_registry(doc, "test.json")


# ---------------------------------------------------------------------------------------------
# Downloads


def test_full_download_with_progress(server, tmp_path, small_checkpoint) -> None:
    url = server.serve("/tiny.pth", small_checkpoint)
    digest = hashlib.sha256(small_checkpoint).hexdigest()
    registry = _registry(tmp_path / "c", url=url, size=len(small_checkpoint), sha256=digest)
    progress = _Progress()

    path = registry.download_model("tiny", progress)

    assert path == tmp_path / "c" / "tiny.pth" and path.read_bytes() == small_checkpoint
    assert not (tmp_path / "c" / "tiny.pth.part").exists()
    assert progress.calls[0] == (0, len(small_checkpoint)) and progress.calls[-1] == (len(small_checkpoint),) * 2
    assert len(progress.calls) >= 3 and all(a[0] <= b[0] for a, b in zip(progress.calls, progress.calls[1:]))
    assert server.ranges("/tiny.pth") == [None]
    assert load_model(path, device="cpu").card.name == "small"
    assert registry.download_model("tiny") == path and len(server.state.requests) == 1  # already there: no request


def test_download_follows_redirects(server, tmp_path, small_checkpoint) -> None:
    server.serve("/files/tiny.pth", small_checkpoint)
    url = server.url("/redirect-to/files/tiny.pth")
    server.state.modes["/redirect-to/files/tiny.pth"] = "redirect"
    path = _registry(tmp_path / "c", url=url).download_model("tiny")
    assert path.read_bytes() == small_checkpoint


def test_interrupted_download_resumes_with_range(server, tmp_path, small_checkpoint) -> None:
    url = server.serve("/tiny.pth", small_checkpoint, mode="drop_first")
    registry = _registry(tmp_path / "c", url=url, sha256=hashlib.sha256(small_checkpoint).hexdigest())
    part = tmp_path / "c" / "tiny.pth.part"

    with pytest.raises(DownloadError, match=r"connection closed after \d+ of \d+ bytes.*run the command again to resume"):
        registry.download_model("tiny", retries=0)
    half = len(small_checkpoint) // 2
    assert part.stat().st_size == half and not (tmp_path / "c" / "tiny.pth").exists()
    assert registry.info("tiny").status.startswith("partly downloaded")

    progress = _Progress()
    path = registry.download_model("tiny", progress, retries=0)

    assert server.ranges("/tiny.pth") == [None, f"bytes={half}-"]
    assert progress.calls[0] == (half, len(small_checkpoint))
    assert path.read_bytes() == small_checkpoint and not part.exists()


def test_dropped_connection_is_retried_automatically(server, tmp_path, small_checkpoint) -> None:
    url = server.serve("/tiny.pth", small_checkpoint, mode="drop_first")
    path = _registry(tmp_path / "c", url=url, size=len(small_checkpoint)).download_model("tiny", retries=1, retry_wait_s=0)
    assert path.read_bytes() == small_checkpoint
    assert server.ranges("/tiny.pth") == [None, f"bytes={len(small_checkpoint) // 2}-"]


def test_server_ignoring_range_starts_over(server, tmp_path, small_checkpoint) -> None:
    url = server.serve("/tiny.pth", small_checkpoint, mode="ignore_range")
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "tiny.pth.part").write_bytes(b"\xff" * 1000)  # stale bytes that must not end up in the file
    progress = _Progress()

    path = _registry(cache, url=url).download_model("tiny", progress)

    assert server.ranges("/tiny.pth") == ["bytes=1000-"]
    assert progress.calls[0] == (0, len(small_checkpoint))
    assert path.read_bytes() == small_checkpoint


def test_corrupt_download_is_deleted(server, tmp_path, small_checkpoint) -> None:
    corrupt = bytearray(small_checkpoint)
    corrupt[len(corrupt) // 2] ^= 0xFF
    url = server.serve("/tiny.pth", bytes(corrupt))
    expected = hashlib.sha256(small_checkpoint).hexdigest()
    got = hashlib.sha256(corrupt).hexdigest()

    with pytest.raises(IntegrityError, match=rf"SHA-256 expected {expected}, got {got}; it was deleted\. Run the command again"):
        _registry(tmp_path / "c", url=url, sha256=expected).download_model("tiny")
    assert list((tmp_path / "c").iterdir()) == []


def test_unknown_digest_falls_back_to_a_structural_check(server, tmp_path, small_checkpoint, turbo_shaped_checkpoint) -> None:
    """Without a SHA-256 the file must load as a checkpoint of the expected architecture."""
    garbage = server.serve("/garbage.pth", b"<html>rate limited</html>" * 100)
    with pytest.raises(IntegrityError, match=r"not a usable checkpoint \(cannot read checkpoint .*\); it was deleted"):
        _registry(tmp_path / "a", url=garbage).download_model("tiny")
    assert list((tmp_path / "a").iterdir()) == []

    small = server.serve("/small.pth", small_checkpoint)
    with pytest.raises(IntegrityError, match=r"not a usable checkpoint .*expected architecture vit_b_ori"):
        _registry(tmp_path / "b", url=small, architecture="vit_b_ori").download_model("tiny")
    assert list((tmp_path / "b").iterdir()) == []

    shaped = server.serve("/turbo.pth", turbo_shaped_checkpoint)
    path = _registry(tmp_path / "c", url=shaped, architecture="vit_b_ori").download_model("tiny")
    assert path.read_bytes() == turbo_shaped_checkpoint


def test_wrong_size_is_rejected(server, tmp_path, small_checkpoint) -> None:
    url = server.serve("/tiny.pth", small_checkpoint)
    with pytest.raises(IntegrityError, match=rf"announces {len(small_checkpoint)} bytes .* but 1234 are expected"):
        _registry(tmp_path / "c", url=url, size=1234).download_model("tiny")
    assert not (tmp_path / "c" / "tiny.pth").exists()


def test_http_404_is_a_download_error(server, tmp_path) -> None:
    url = server.url("/missing.pth")
    with pytest.raises(DownloadError, match=rf"cannot download {url}: HTTP 404"):
        _registry(tmp_path / "c", url=url).download_model("tiny")
    assert server.ranges("/missing.pth") == [None]  # a 404 is not retried
    assert list((tmp_path / "c").iterdir()) == []


def test_refused_connection_is_a_download_error(tmp_path) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/m.pth"
    with pytest.raises(DownloadError, match=rf"download of {url} failed: URLError.*check the network"):
        _registry(tmp_path / "c", url=url).download_model("tiny", retries=1, retry_wait_s=0)


def test_stalled_server_times_out(server, tmp_path, small_checkpoint) -> None:
    url = server.serve("/tiny.pth", small_checkpoint, mode="stall")
    started = time.perf_counter()
    with pytest.raises(DownloadError, match=r"timed out"):
        _registry(tmp_path / "c", url=url).download_model("tiny", timeout_s=0.5, retries=0)
    assert time.perf_counter() - started < 2.5


@pytest.mark.parametrize("retries", [0, 1])
def test_trickling_server_is_a_stall_and_the_part_file_resumes(server, tmp_path, small_checkpoint, retries) -> None:
    """One byte every 50 ms never hits the socket timeout; the stall check ends it."""
    url = server.serve("/tiny.pth", small_checkpoint, mode="trickle")
    registry = _registry(tmp_path / "c", url=url, size=len(small_checkpoint))
    started = time.perf_counter()
    with pytest.raises(DownloadError, match=r"the server stalled: \d+ bytes in the last \d+ s \(fewer than 65\.5 kB\).*kept in .*tiny\.pth\.part.*resume"):
        registry.download_model("tiny", stall_s=0.4, retries=retries, retry_wait_s=0)
    assert time.perf_counter() - started < 0.4 * (retries + 1) + 2.0
    kept = (tmp_path / "c" / "tiny.pth.part").stat().st_size
    assert 0 < kept < len(small_checkpoint)
    assert len(server.ranges("/tiny.pth")) == retries + 1 and all(r is not None for r in server.ranges("/tiny.pth")[1:])
    assert not (tmp_path / "c" / "tiny.pth.lock").exists()

    server.state.modes["/tiny.pth"] = "normal"
    assert registry.download_model("tiny").read_bytes() == small_checkpoint
    assert server.ranges("/tiny.pth")[-1] == f"bytes={kept}-"


def test_a_slow_but_steady_server_is_no_stall(server, tmp_path, small_checkpoint) -> None:
    url = server.serve("/tiny.pth", small_checkpoint, mode="slow")  # ~0.9 s, 64 kB every 20 ms
    path = _registry(tmp_path / "c", url=url).download_model("tiny", stall_s=0.1, retries=0)
    assert path.read_bytes() == small_checkpoint and server.ranges("/tiny.pth") == [None]


def test_ctrl_c_keeps_a_resumable_part_file(server, tmp_path, small_checkpoint) -> None:
    url = server.serve("/tiny.pth", small_checkpoint)
    registry = _registry(tmp_path / "c", url=url, size=len(small_checkpoint))

    def progress(done: int, total: int | None) -> None:
        if done >= download.CHUNK_BYTES:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        registry.download_model("tiny", progress)
    kept = (tmp_path / "c" / "tiny.pth.part").stat().st_size
    assert download.CHUNK_BYTES <= kept < len(small_checkpoint)
    assert not (tmp_path / "c" / "tiny.pth.lock").exists()  # the lock went with the interrupted call

    assert registry.download_model("tiny").read_bytes() == small_checkpoint
    assert server.ranges("/tiny.pth") == [None, f"bytes={kept}-"]


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill (POSIX)")
def test_cli_ctrl_c_exits_130_and_the_next_run_resumes(server, turbo_shaped_checkpoint, _isolated_cache, monkeypatch, capsys) -> None:
    """A real SIGINT to the main thread while it waits for the second half of the file."""
    monkeypatch.setenv("SAMMED3D_MODEL_URL_SAM_MED3D_TURBO", server.serve("/turbo.pth", turbo_shaped_checkpoint, mode="pause_half"))
    part = _isolated_cache / "sam_med3d_turbo.pth.part"
    main_thread = threading.get_ident()

    def interrupt_when_half_is_there() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (part.exists() and part.stat().st_size >= len(turbo_shaped_checkpoint) // 3):
            time.sleep(0.02)
        signal.pthread_kill(main_thread, signal.SIGINT)

    # Ctrl+C as on a terminal: a process started in the background of a shell script (nohup ... &) inherits
    # SIGINT ignored, and Python then installs no handler, so the signal would be dropped
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Thread(target=interrupt_when_half_is_there, daemon=True).start()
        assert _cli(["models", "download", "sam_med3d_turbo"], monkeypatch) == 130
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    err = capsys.readouterr().err
    assert "download interrupted; run `sammed3d models download sam_med3d_turbo` again to resume" in err
    assert err.rstrip().endswith("sammed3d models: interrupted")
    kept = part.stat().st_size
    assert 0 < kept < len(turbo_shaped_checkpoint) and not (_isolated_cache / "sam_med3d_turbo.pth.lock").exists()

    server.state.modes["/turbo.pth"] = "normal"
    assert _cli(["models", "download", "sam_med3d_turbo"], monkeypatch) == 0
    assert (_isolated_cache / "sam_med3d_turbo.pth").read_bytes() == turbo_shaped_checkpoint
    assert server.ranges("/turbo.pth")[-1] == f"bytes={kept}-"


@pytest.mark.parametrize("use_flock", [True, False], ids=["flock", "exclusive_create"])
def test_concurrent_downloads_of_one_model_share_one_transfer(server, tmp_path, small_checkpoint, monkeypatch, use_flock) -> None:
    if use_flock and locks.fcntl is None:
        pytest.skip("no fcntl on this platform")
    if not use_flock:
        monkeypatch.setattr(locks, "fcntl", None)  # what Windows gets
    url = server.serve("/tiny.pth", small_checkpoint, mode="slow")
    registry = _registry(tmp_path / "c", url=url, size=len(small_checkpoint))
    results: list[object] = []

    def fetch() -> None:
        try:
            results.append(registry.download_model("tiny"))
        except Exception as exc:  # noqa: BLE001 - checked below
            results.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)  # the first one is under way when the others start
    for thread in threads:
        thread.join(30)
    assert results == [tmp_path / "c" / "tiny.pth"] * 3
    assert server.ranges("/tiny.pth") == [None]  # one transfer; the others reused its file
    assert (tmp_path / "c" / "tiny.pth").read_bytes() == small_checkpoint
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["tiny.pth"]  # no .part, no .lock


def test_a_second_process_waits_for_the_first_download(server, tmp_path, small_checkpoint) -> None:
    url = server.serve("/tiny.pth", small_checkpoint, mode="slow")
    dest = tmp_path / "c" / "tiny.pth"
    script = "import sys; from SAMMed3DLib.download import download_file; print(download_file(sys.argv[1], sys.argv[2], size=int(sys.argv[3])))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", script, url, str(dest), str(len(small_checkpoint))], env=env, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while not download.partial_path(dest).exists() and time.monotonic() < deadline:
            time.sleep(0.02)  # the child's transfer has started
        assert download.download_file(url, dest, size=len(small_checkpoint)) == dest
        out, _ = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == 0 and out.strip() == str(dest)
    assert server.ranges("/tiny.pth") == [None] and dest.read_bytes() == small_checkpoint


def test_not_enough_disk_space(server, tmp_path, small_checkpoint) -> None:
    url = server.serve("/tiny.pth", small_checkpoint, mode="huge")
    with pytest.raises(DownloadError, match=r"not enough disk space in .*: the download needs 1000\.0 TB more.*SAMMED3D_CACHE_DIR"):
        _registry(tmp_path / "c", url=url).download_model("tiny")
    assert list((tmp_path / "c").iterdir()) == []


def test_cancel_keeps_the_partial_file_for_a_resume(server, tmp_path, small_checkpoint) -> None:
    url = server.serve("/tiny.pth", small_checkpoint)
    registry = _registry(tmp_path / "c", url=url, size=len(small_checkpoint))
    cancel = threading.Event()

    def progress(done: int, total: int | None) -> None:
        if done >= download.CHUNK_BYTES:
            cancel.set()

    with pytest.raises(OperationCancelledError, match=r"cancelled; \d+ bytes kept .* the next download resumes"):
        registry.download_model("tiny", progress, cancel)
    kept = (tmp_path / "c" / "tiny.pth.part").stat().st_size
    assert download.CHUNK_BYTES <= kept < len(small_checkpoint)

    path = registry.download_model("tiny")
    assert server.ranges("/tiny.pth") == [None, f"bytes={kept}-"]
    assert path.read_bytes() == small_checkpoint


def test_download_into_the_environment_cache(server, _isolated_cache, turbo_shaped_checkpoint, monkeypatch) -> None:
    """The shipped turbo entry, pointed at the local server through the environment."""
    monkeypatch.setenv("SAMMED3D_MODEL_URL_SAM_MED3D_TURBO", server.serve("/turbo.pth", turbo_shaped_checkpoint))
    path = reg.download_model("sam_med3d_turbo")
    assert path == _isolated_cache / "sam_med3d_turbo.pth" and path.read_bytes() == turbo_shaped_checkpoint
    assert reg.ensure_model("sam_med3d_turbo") == path


def test_load_model_downloads_only_when_asked(server, small_checkpoint, monkeypatch) -> None:
    monkeypatch.setenv("SAMMED3D_MODEL_URL_SAM_MED3D_TURBO", server.serve("/turbo.pth", small_checkpoint))
    with pytest.raises(CheckpointError, match=r"not downloaded yet"):
        load_model("sam_med3d_turbo", device="cpu")
    assert server.state.requests == []
    # download=True fetches and vets the file: a small model is not the expected vit_b_ori.
    with pytest.raises(IntegrityError, match=r"expected architecture vit_b_ori"):
        load_model("sam_med3d_turbo", device="cpu", download=True)
    assert server.ranges("/turbo.pth") == [None]


# ---------------------------------------------------------------------------------------------
# CLI


def _cli(argv: list[str], monkeypatch) -> int:
    monkeypatch.setattr(sammed3d_cli, "COMMAND_MODULES", ("models",))  # this command alone
    return sammed3d_cli.main(argv)


def test_cli_list(monkeypatch, capsys) -> None:
    assert _cli(["models"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert "sam_med3d_turbo  not downloaded" in out and "100.5 M" in out and "Apache-2.0" in out
    assert "Download with: sammed3d models download sam_med3d_turbo" in out

    assert _cli(["models", "list", "--json"], monkeypatch) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed["sam_med3d_turbo"]["status"] == "not downloaded" and listed["sam_med3d_turbo"]["parameters"] == 100_509_232
    assert listed["default"]["kind"] == "shipped"


def test_cli_download(server, turbo_shaped_checkpoint, _isolated_cache, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SAMMED3D_MODEL_URL_SAM_MED3D_TURBO", server.serve("/turbo.pth", turbo_shaped_checkpoint))
    assert _cli(["models", "download", "sam_med3d_turbo"], monkeypatch) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(_isolated_cache / "sam_med3d_turbo.pth")
    assert "sam_med3d_turbo" in captured.err  # the tqdm bar

    assert _cli(["models", "--json"], monkeypatch) == 0
    listed = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listed["sam_med3d_turbo"]["status"] == "downloaded" and listed["sam_med3d_turbo"]["available"] is True


@pytest.mark.parametrize(
    "argv, match",
    [
        (["models", "download", "sam_med3d_trubo"], r"Did you mean 'sam_med3d_turbo'"),
        (["models", "download", "sam_med3d_turbo", "--url", "URL404"], r"HTTP 404"),
    ],
    ids=["typo", "404"],
)
def test_cli_download_errors(server, argv, match, monkeypatch, capsys) -> None:
    argv = [a.replace("URL404", server.url("/nope.pth")) for a in argv]
    assert _cli(argv, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("sammed3d models: error:")  # no empty progress bar before the error
    assert re.search(match, err), err
