"""Installing PyTorch the first time, in the background, with its progress in the panel.

Design: the PyTorch extension (``PyTorchUtils``) picks the right build with ``light-the-torch``,
but its ``installTorch`` runs the install in the foreground: Slicer freezes for the minutes it
takes. Here the same ``light_the_torch install`` command (the arguments come from PyTorchUtils
when it offers them) runs as a child process on the module's persistent worker thread
(:mod:`.worker`), which touches neither Qt nor Slicer: it only reads the child's output and hands
each line to the panel's :class:`~.feedback.Feedback` (a thread-safe store). The main thread
waits the way every update does (``waitPumpingEvents``: the GIL released, Qt events processed),
so the panel shows the install's last line and Cancel stops it (the child is terminated, then
killed). A failed install raises with the tail of its output.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from typing import Any

#: The package that picks the PyTorch build for the GPU and driver (what PyTorchUtils uses).
LIGHT_THE_TORCH = "light-the-torch>=0.5"
#: Seconds between two checks of Cancel while a command runs; seconds to wait after terminate().
POLL_S = 0.2
TERMINATE_WAIT_S = 10.0
#: Lines of output kept for the error message of a failed command.
TAIL_LINES = 20


class InstallCancelled(RuntimeError):
    """The user cancelled the install; nothing more was run."""


def pythonExecutable() -> str:
    """Slicer's Python launcher (``PythonSlicer``, as ``slicer.util.pip_install`` uses), else this interpreter."""
    return shutil.which("PythonSlicer") or sys.executable


def installCommands(torchLogic: Any, requirement: str, python: str | None = None) -> list[list[str]]:
    """The commands that install PyTorch ``requirement`` (e.g. ``">=2.2"``) the way PyTorchUtils does.

    ``light-the-torch`` first when it is missing, then ``light_the_torch install torch<requirement>
    torchvision`` with PyTorchUtils' own arguments when it has them.
    """
    python = python or pythonExecutable()
    commands = []
    if importlib.util.find_spec("light_the_torch") is None:
        commands.append([python, "-m", "pip", "install", LIGHT_THE_TORCH])
    argumentsOf = getattr(torchLogic, "_getPipInstallArguments", None)
    arguments = list(argumentsOf(None, requirement)) if callable(argumentsOf) else ["install", f"torch{requirement}", "torchvision"]
    commands.append([python, "-m", "light_the_torch", *arguments])
    return commands


def runCommands(
    commands: Sequence[Sequence[str]],
    report: Callable[[float, float, str], None],
    cancel: threading.Event,
    pollS: float = POLL_S,
) -> None:
    """Run ``commands`` one after the other (on the worker thread), reporting each output line.

    Args:
        commands: argv lists.
        report: ``report(done, total, message)``: command ``done`` of ``total`` and its last line.
        cancel: set by the main thread to stop; the running child is terminated (then killed).
        pollS: how often Cancel is checked.

    Raises:
        InstallCancelled: ``cancel`` was set.
        RuntimeError: a command could not start or exited with an error (the message holds the tail of its output).
    """
    for number, command in enumerate(commands):
        if cancel.is_set():
            raise InstallCancelled("the PyTorch install was cancelled")
        # The child writes to a file that is read between checks of Cancel: no second thread, and
        # it works where pipes cannot be polled (Windows).
        with tempfile.TemporaryFile(mode="w+b") as output:
            try:
                child = subprocess.Popen(list(command), stdout=output, stderr=subprocess.STDOUT)
            except OSError as exc:
                raise RuntimeError(f"could not run {' '.join(command)}: {exc}") from exc
            lines = _Lines(output, lambda line, n=number: report(n, len(commands), line))
            while child.poll() is None:
                if cancel.wait(pollS):
                    child.terminate()
                    try:
                        child.wait(TERMINATE_WAIT_S)
                    except subprocess.TimeoutExpired:
                        child.kill()
                        child.wait()
                    raise InstallCancelled("the PyTorch install was cancelled")
                lines.read()
            lines.read(final=True)
        if child.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed (exit {child.returncode}):\n" + "\n".join(lines.tail))


class _Lines:
    """The complete lines a child has appended to ``output`` since the last read, each reported once."""

    def __init__(self, output: Any, report: Callable[[str], None]) -> None:
        self._output, self._report = output, report
        self._offset, self._partial = 0, b""
        self.tail: list[str] = []

    def read(self, final: bool = False) -> None:
        self._output.seek(self._offset)
        data = self._output.read()
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        if final and self._partial:
            complete, self._partial = [*complete, self._partial], b""
        for raw in complete:
            line = raw.decode("utf-8", errors="replace").strip()
            if line:
                self.tail = [*self.tail[-(TAIL_LINES - 1):], line]
                self._report(line)


def torchImportable() -> bool:
    """Whether ``import torch`` would find a package now (after an install in this process)."""
    importlib.invalidate_caches()
    return importlib.util.find_spec("torch") is not None


__all__ = ["InstallCancelled", "installCommands", "pythonExecutable", "runCommands", "torchImportable"]
