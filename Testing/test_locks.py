"""The lock file that keeps two downloads of one model from sharing a ``.part`` file.

Both implementations run everywhere they can: ``fcntl.flock`` (POSIX) and the exclusive-create
fallback that Windows gets, with its stale-lock handling.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from SAMMed3DLib import locks
from SAMMed3DLib.errors import OperationCancelledError
from SAMMed3DLib.locks import FileLock, lock_path

BACKENDS = [pytest.param(True, id="flock", marks=pytest.mark.skipif(locks.fcntl is None, reason="no fcntl")), pytest.param(False, id="exclusive_create")]


@pytest.mark.parametrize("use_flock", BACKENDS)
def test_a_second_holder_waits_until_the_first_releases(tmp_path, use_flock) -> None:
    target = tmp_path / "model.pth"
    order: list[str] = []
    first = FileLock(target, use_flock=use_flock, poll_s=0.01)
    first.acquire()
    assert lock_path(target).read_text().strip() == str(os.getpid())

    def second() -> None:
        with FileLock(target, use_flock=use_flock, poll_s=0.01) as lock:
            order.append(f"second (waited={lock.waited})")

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.2)
    order.append("first releases")
    first.release()
    thread.join(5)
    assert order == ["first releases", "second (waited=True)"]
    assert not lock_path(target).exists()  # the last holder removed it
    with FileLock(target, use_flock=use_flock) as lock:
        assert not lock.waited


@pytest.mark.parametrize("use_flock", BACKENDS)
def test_cancel_stops_the_wait(tmp_path, use_flock) -> None:
    target = tmp_path / "model.pth"
    cancel = threading.Event()
    with FileLock(target, use_flock=use_flock):
        threading.Timer(0.1, cancel.set).start()
        started = time.perf_counter()
        with pytest.raises(OperationCancelledError, match=r"cancelled while waiting for another download \(lock file .*model\.pth\.lock\)"):
            FileLock(target, use_flock=use_flock, cancel=cancel, poll_s=0.01).acquire()
        assert time.perf_counter() - started < 2


@pytest.mark.parametrize(("age_s", "taken_at_once"), [(3600.0, True), (0.0, False)], ids=["stale", "fresh"])
def test_fallback_removes_only_a_stale_lock(tmp_path, age_s, taken_at_once) -> None:
    target = tmp_path / "model.pth"
    lock_file = lock_path(target)
    lock_file.write_text("12345\n")  # a holder that is gone (stale) or still refreshing it (fresh)
    os.utime(lock_file, (time.time() - age_s,) * 2)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    lock = FileLock(target, use_flock=False, cancel=cancel, poll_s=0.01, stale_s=60.0)
    if taken_at_once:
        with lock:
            assert lock_file.read_text().strip() == str(os.getpid())
    else:
        with pytest.raises(OperationCancelledError):
            lock.acquire()
        assert lock_file.read_text() == "12345\n"  # not touched


def test_fallback_heartbeat_keeps_a_long_hold_fresh(tmp_path) -> None:
    target = tmp_path / "model.pth"
    with FileLock(target, use_flock=False, heartbeat_s=0.05):
        os.utime(lock_path(target), (time.time() - 3600,) * 2)
        time.sleep(0.3)
        assert time.time() - lock_path(target).stat().st_mtime < 5  # refreshed by the heartbeat


@pytest.mark.skipif(locks.fcntl is None, reason="no fcntl")
def test_a_killed_holder_leaves_no_stale_flock(tmp_path) -> None:
    target = tmp_path / "model.pth"
    script = "import sys, time; from SAMMed3DLib.locks import FileLock; FileLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", script, str(target)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        cancel = threading.Event()
        threading.Timer(0.3, cancel.set).start()
        with pytest.raises(OperationCancelledError):
            FileLock(target, cancel=cancel, poll_s=0.01).acquire()  # held by the child
    finally:
        child.kill()
        child.wait(10)
    with FileLock(target, poll_s=0.01) as lock:  # the kernel dropped the dead child's lock
        assert lock_path(target).read_text().strip() == str(os.getpid())
    assert not lock.waited


def test_flock_on_a_file_deleted_by_its_holder_is_retaken_on_the_new_file(tmp_path, monkeypatch) -> None:
    """A waiter that gets the lock of a file its holder just deleted must not count it as held."""
    if locks.fcntl is None:
        pytest.skip("no fcntl")
    target = tmp_path / "model.pth"
    lock = FileLock(target, poll_s=0.01)
    real_flock = locks.fcntl.flock
    calls = {"n": 0}

    def flock_then_holder_deletes(fd: int, op: int) -> None:
        real_flock(fd, op)
        calls["n"] += 1
        if calls["n"] == 1:
            lock_path(target).unlink()  # as a releasing holder does, between our open and flock
            Path(lock_path(target)).write_text("other\n")  # and a third process creates a new one

    monkeypatch.setattr(locks.fcntl, "flock", flock_then_holder_deletes)
    with lock:
        assert calls["n"] == 2  # the first lock was on the deleted file: taken again
        assert os.path.samestat(os.fstat(lock._fd), os.stat(lock_path(target)))
