"""The first PyTorch install runs in the background: real child processes on the module's real worker.

``SAMMed3DModule/torch_install.py`` runs the install commands as child processes on the worker
thread while the main thread waits pumping events (as the widget's ``_installTorch`` does); here
the commands are small Python programs standing in for pip and light-the-torch. Untested: the real
light-the-torch download inside Slicer (no network, no Slicer application here).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SAMMed3D"))

from SAMMed3DModule.feedback import Feedback, Phase  # noqa: E402
from SAMMed3DModule.torch_install import LIGHT_THE_TORCH, InstallCancelled, installCommands, runCommands  # noqa: E402
from SAMMed3DModule.worker import ModelWorker, waitPumpingEvents  # noqa: E402

PRINTS = "import sys, time\nfor i in range(3):\n    print(f'Collecting part {i}', flush=True)\n    time.sleep(0.15)\n"


def _install(commands, cancelAfterS: float | None = None):
    """Run ``commands`` as the widget does: on the worker, the main thread pumping (and maybe pressing Cancel)."""
    feedback, cancel, worker, seen = Feedback(), threading.Event(), ModelWorker(), []
    feedback.startInstall()
    started = time.monotonic()
    job = worker.submit(lambda: runCommands(commands, feedback.report, cancel, pollS=0.02))

    def pump() -> None:
        feedback.poll()
        seen.append(feedback.status)
        if cancelAfterS is not None and time.monotonic() - started > cancelAfterS and feedback.cancel():
            cancel.set()

    waitPumpingEvents(job, pump, intervalS=0.01)
    worker.shutdown()
    return feedback, job, seen, time.monotonic() - started


def test_the_install_reports_each_line_while_the_main_thread_keeps_pumping() -> None:
    commands = [[sys.executable, "-c", PRINTS], [sys.executable, "-c", "import time\nprint('Successfully installed torch', flush=True)\ntime.sleep(0.5)"]]
    feedback, job, seen, _ = _install(commands)
    assert job.error is None
    assert any("step 1 of 2" in s and "Collecting part 1" in s for s in seen), "the panel shows the running command's output"
    assert any("step 2 of 2" in s and "Successfully installed torch" in s for s in seen)
    assert len(seen) > 20, "the main thread processed events all along"
    assert feedback.installFinished(job.error) and feedback.phase is Phase.IDLE and "PyTorch installed at" in feedback.status


def test_cancel_stops_the_running_command_and_runs_no_further_one(tmp_path) -> None:
    marker = tmp_path / "second-ran"
    commands = [[sys.executable, "-c", "import time\nprint('Downloading torch', flush=True)\ntime.sleep(60)"],
                [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"]]  # fmt: skip
    feedback, job, _, seconds = _install(commands, cancelAfterS=0.5)
    assert isinstance(job.error, InstallCancelled) and seconds < 15
    assert not marker.exists()
    assert not feedback.installFinished(job.error) and "cancelled" in feedback.status


def test_a_failing_command_says_why_with_the_tail_of_its_output() -> None:
    commands = [[sys.executable, "-c", "import sys\nprint('ERROR: No matching distribution found for torch>=2.2')\nsys.exit(1)"]]
    feedback, job, _, _ = _install(commands)
    assert isinstance(job.error, RuntimeError) and "exit 1" in str(job.error) and "No matching distribution" in str(job.error)
    assert not feedback.installFinished(job.error) and feedback.status.startswith("PyTorch install failed:")
    with pytest.raises(RuntimeError, match="could not run"):
        runCommands([[str(Path(sys.executable).parent / "no-such-program")]], lambda *a: None, threading.Event())


class _TorchLogic:
    @staticmethod
    def _getPipInstallArguments(forceComputationBackend=None, torchVersionRequirement=None):  # noqa: N802 - PyTorchUtils' name
        return ["install", "torch" + (torchVersionRequirement or ""), "torchvision"]


def test_the_commands_are_pytorchutils_light_the_torch_install(monkeypatch) -> None:
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "light_the_torch" else object())
    commands = installCommands(_TorchLogic(), ">=2.2", python="PythonSlicer")
    assert commands == [["PythonSlicer", "-m", "pip", "install", LIGHT_THE_TORCH],
                        ["PythonSlicer", "-m", "light_the_torch", "install", "torch>=2.2", "torchvision"]]  # fmt: skip
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert installCommands(object(), ">=2.2", python="py") == [["py", "-m", "light_the_torch", "install", "torch>=2.2", "torchvision"]]
