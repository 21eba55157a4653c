"""What the panel shows while an update runs: the phase, the status text, the progress bar, Cancel.

Design: one small state machine, :class:`Feedback`, with no Qt: the widget calls it at the
start and end of every update and when the user cancels, the worker thread reports progress
into it (:meth:`Feedback.report` only stores numbers), and the main thread, while it waits for
the worker (``worker.waitPumpingEvents``), calls :meth:`Feedback.poll` and copies
:attr:`Feedback.status`, :meth:`Feedback.progressBar` and the busy state into the widgets.

Phases: idle → (downloading → loading → warming up, the first time a model is needed) →
segmenting → idle; Cancel → cancelling → idle. The model holder's progress messages name the
phase (:data:`PHASE_PREFIXES`). Every status after an update carries the wall-clock time it was
written, so a user can tell a fresh answer from an old one.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

from .torch_install import InstallCancelled


class Phase(enum.Enum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    LOADING = "loading"
    WARMING_UP = "warming up"
    SEGMENTING = "segmenting"
    CANCELLING = "cancelling"
    INSTALLING = "installing PyTorch"


#: Progress messages of ``InteractiveSegmentationLogic.model_holder`` → phase.
PHASE_PREFIXES = (("Downloading model", Phase.DOWNLOADING), ("Loading model", Phase.LOADING), ("Warming up model", Phase.WARMING_UP))


class Feedback:
    """Status text, progress and busy state of the running update.

    Args:
        clock: returns the wall-clock time (seconds since the epoch) shown in the status.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._reported: tuple[float, float, str] = (0.0, 0.0, "")
        self.phase = Phase.IDLE
        self.status = "Choose a volume and a segment in the Segment Editor below, then place + points (P)."
        self.lastUpdate = ""  # "HH:MM:SS" of the last update written
        self._done, self._total = 0.0, 0.0

    # -- main thread ---------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """An update is running (the widget shows a wait cursor and disables undo)."""
        return self.phase is not Phase.IDLE

    @property
    def cancellable(self) -> bool:
        return self.phase not in (Phase.IDLE, Phase.CANCELLING)

    def start(self, modelLoaded: bool) -> None:
        """An update was handed to the worker; the model is loaded first unless ``modelLoaded``."""
        with self._lock:
            self._reported = (0.0, 0.0, "")
        self._done = self._total = 0.0
        self.phase = Phase.SEGMENTING if modelLoaded else Phase.LOADING
        self._describe("")

    def poll(self) -> None:
        """Take the worker's last report into the phase, the progress and the status."""
        if self.phase in (Phase.IDLE, Phase.CANCELLING):
            return
        with self._lock:
            done, total, message = self._reported
        if message:
            phase = next((p for prefix, p in PHASE_PREFIXES if message.startswith(prefix)), None)
            if phase is not None:
                self.phase = phase
        self._done, self._total = done, total
        self._describe(message)

    def cancel(self) -> bool:
        """The user pressed Cancel: True if there was something to cancel."""
        if not self.cancellable:
            return False
        self.phase = Phase.CANCELLING
        self.status = "Cancelling…"
        return True

    def finished(self, changedVoxels: int, modelSeconds: float, clickSeconds: float, newSession: bool) -> None:
        """The update was written."""
        self.lastUpdate = self._now()
        self.phase = Phase.IDLE
        self.status = (
            f"Updated at {self.lastUpdate}: {changedVoxels} voxels changed; model {modelSeconds * 1000:.0f} ms, "
            f"click to display {clickSeconds * 1000:.0f} ms" + (" (new session)" if newSession else "")
        )

    def startInstall(self) -> None:
        """PyTorch is being installed on the worker (``torch_install.runCommands`` reports its output)."""
        with self._lock:
            self._reported = (0.0, 0.0, "")
        self.phase = Phase.INSTALLING
        self._describe("")

    def installFinished(self, error: BaseException | None) -> bool:
        """The install ended; True when it succeeded (the status says what happened either way)."""
        self.phase = Phase.IDLE
        if error is None:
            self.status = f"PyTorch installed at {self._now()}."
        elif isinstance(error, InstallCancelled):
            self.status = f"PyTorch install cancelled at {self._now()}: place a point to try again."
        else:
            self.status = f"PyTorch install failed: {str(error).splitlines()[0]}"
        return error is None

    def cancelled(self) -> None:
        """The update was cancelled: nothing was written."""
        self.phase = Phase.IDLE
        self.status = f"Cancelled at {self._now()}: nothing was written." + self._since()

    def failed(self, message: str) -> None:
        self.phase = Phase.IDLE
        self.status = message + self._since()

    def progressBar(self) -> tuple[bool, int, int]:
        """(visible, maximum, value): maximum 0 is Qt's busy indicator; a download shows its share in 0..1000."""
        if self.phase is Phase.IDLE:
            return False, 0, 0
        if self.phase is Phase.DOWNLOADING and self._total > 0:
            return True, 1000, int(1000 * min(self._done / self._total, 1.0))
        return True, 0, 0

    # -- worker thread ---------------------------------------------------------------------------------

    def report(self, done: float, total: float, message: str) -> None:
        """``progress(done, total, message)`` of the model holder; called on the worker thread."""
        with self._lock:
            self._reported = (float(done), float(total), str(message))

    # -- texts -----------------------------------------------------------------------------------------

    def _describe(self, message: str) -> None:
        if self.phase is Phase.DOWNLOADING:
            name = message[len("Downloading model"):].strip() or "the model"
            amount = f": {self._done / 1e6:.0f} / {self._total / 1e6:.0f} MB" if self._total > 0 else "…"
            self.status = f"Downloading {name} (first use){amount}"
        elif self.phase is Phase.LOADING:
            self.status = (message or "Loading the model") + "…"
        elif self.phase is Phase.WARMING_UP:
            self.status = (message or "Warming up the model") + " (first use)…"
        elif self.phase is Phase.SEGMENTING:
            self.status = "Segmenting…" + self._since()
        elif self.phase is Phase.INSTALLING:
            step = f" (step {int(self._done) + 1} of {int(self._total)})" if self._total > 1 else ""
            self.status = f"Installing PyTorch, first use, a few minutes{step}" + (f": {message[:120]}" if message else "…")

    def _since(self) -> str:
        return f" Last update at {self.lastUpdate}." if self.lastUpdate else ""

    def _now(self) -> str:
        return time.strftime("%H:%M:%S", time.localtime(self._clock()))



def undoText(segmentId: str | None, done: str, verb: str) -> str:
    """The status after Undo/Redo, from what ``ParameterNodeLogic.undo``/``redo`` returned.

    Args:
        segmentId: the segment whose update moved; "" when the Segment Editor moved an edit of its
            own; None when there was nothing to move.
        done: "Undone" or "Redone".
        verb: "undo" or "redo".
    """
    if segmentId is None:
        return f"Nothing to {verb}."
    return f"{done} ({segmentId})." if segmentId else f"{done} in the Segment Editor (an edit of its own)."
