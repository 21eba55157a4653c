"""What the module's panel shows while an update runs (``SAMMed3DModule/feedback.py``), and the first load's warm-up.

The widget only copies :class:`Feedback`'s state into its labels; the state machine runs here with
the real worker thread and the real model holder (a checkpoint on disk, loaded as in Slicer).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SAMMed3D"))

from SAMMed3DModule.feedback import PHASE_PREFIXES, Feedback, Phase, undoText  # noqa: E402
from SAMMed3DModule.worker import ModelWorker, waitPumpingEvents  # noqa: E402

NOON = time.mktime((2026, 3, 4, 12, 0, 5, 0, 0, -1))


def test_an_update_with_a_loaded_model_shows_segmenting_then_the_time_it_was_written() -> None:
    feedback = Feedback(clock=lambda: NOON)
    assert not feedback.busy and feedback.progressBar() == (False, 0, 0) and "place + points" in feedback.status
    feedback.start(modelLoaded=True)
    assert feedback.phase is Phase.SEGMENTING and feedback.busy and feedback.cancellable
    assert feedback.status == "Segmenting…" and feedback.progressBar() == (True, 0, 0)  # Qt's busy indicator
    feedback.finished(1234, 0.12, 0.2, newSession=False)
    assert not feedback.busy and feedback.lastUpdate == "12:00:05"
    assert feedback.status == "Updated at 12:00:05: 1234 voxels changed; model 120 ms, click to display 200 ms"
    feedback.start(modelLoaded=True)
    assert feedback.status == "Segmenting… Last update at 12:00:05.", "while it runs, the last answer's time stays shown"


def test_the_first_load_shows_download_progress_then_loading_then_warm_up() -> None:
    feedback = Feedback(clock=lambda: NOON)
    feedback.start(modelLoaded=False)
    assert feedback.phase is Phase.LOADING and feedback.status.startswith("Loading")
    feedback.report(50e6, 200e6, "Downloading model sam_med3d_turbo")  # on the worker thread
    assert feedback.phase is Phase.LOADING, "nothing changes before the main thread polls"
    feedback.poll()
    assert feedback.phase is Phase.DOWNLOADING and feedback.progressBar() == (True, 1000, 250)
    assert feedback.status == "Downloading sam_med3d_turbo (first use): 50 / 200 MB"
    feedback.report(0, 0, "Loading model sam_med3d_turbo")
    feedback.poll()
    assert (feedback.phase, feedback.progressBar()) == (Phase.LOADING, (True, 0, 0))
    assert feedback.status == "Loading model sam_med3d_turbo…"
    feedback.report(0, 0, "Warming up model sam_med3d_turbo")
    feedback.poll()
    assert feedback.phase is Phase.WARMING_UP and feedback.status == "Warming up model sam_med3d_turbo (first use)…"


def test_cancel_is_offered_while_running_and_says_nothing_was_written() -> None:
    feedback = Feedback(clock=lambda: NOON)
    assert not feedback.cancel(), "nothing runs: nothing to cancel"
    feedback.start(modelLoaded=True)
    assert feedback.cancel() and feedback.phase is Phase.CANCELLING and not feedback.cancellable
    assert feedback.status == "Cancelling…"
    feedback.report(1, 2, "Downloading model x")
    feedback.poll()
    assert feedback.phase is Phase.CANCELLING, "late progress does not undo the cancel"
    feedback.cancelled()
    assert not feedback.busy and feedback.status == "Cancelled at 12:00:05: nothing was written."


def test_a_failed_update_keeps_the_time_of_the_last_good_one() -> None:
    feedback = Feedback(clock=lambda: NOON)
    feedback.start(modelLoaded=True)
    feedback.finished(10, 0.01, 0.02, newSession=True)
    assert feedback.status.endswith("(new session)")
    feedback.start(modelLoaded=True)
    feedback.failed("click inside the image")
    assert not feedback.busy and feedback.status == "click inside the image Last update at 12:00:05."


def test_the_panel_follows_a_real_worker_while_the_main_thread_waits() -> None:
    """The worker reports, the main thread polls between Qt event rounds (as _startJob does)."""
    feedback = Feedback()
    worker = ModelWorker()
    seen = []

    def job():
        for done in (0, 100, 200):
            feedback.report(done, 200, "Downloading model m")
            time.sleep(0.05)
        feedback.report(0, 0, "Loading model m")
        time.sleep(0.05)
        return "ok"

    feedback.start(modelLoaded=False)
    submitted = worker.submit(job)

    def pump() -> None:
        feedback.poll()
        seen.append(feedback.phase)

    waitPumpingEvents(submitted, pump, intervalS=0.01)
    worker.shutdown()
    assert submitted.result == "ok"
    assert Phase.DOWNLOADING in seen and seen[-1] is Phase.LOADING
    assert seen.index(Phase.DOWNLOADING) < len(seen) - 1 - seen[::-1].index(Phase.LOADING)


@pytest.mark.parametrize(("returned", "text"), [(None, "Nothing to undo."), ("Segment_1", "Undone (Segment_1)."),
                                                 ("", "Undone in the Segment Editor (an edit of its own).")])
def test_the_undo_status_says_what_moved(returned, text) -> None:
    assert undoText(returned, "Undone", "undo") == text


# -- the model holder's messages and warm-up ---------------------------------------------------------


@pytest.fixture
def small_checkpoint(tmp_path):
    pytest.importorskip("slicer", reason="the logic package imports MRML helpers (slicer-core)")
    from InteractiveSegmentationLogic.testing import SMALL_CONFIG

    from SAMMed3DLib import build_sam3d
    from SAMMed3DLib.card import ModelCard
    from SAMMed3DLib.checkpoint import save_model

    model = build_sam3d(SMALL_CONFIG)
    model.card = ModelCard(name="small-random", config=model.config)
    return save_model(model, tmp_path / "small.pth")


@pytest.mark.parametrize("warm", [True, None], ids=["warm-up", "cpu-default"])
def test_the_model_holder_names_each_phase_and_warms_up_when_asked(small_checkpoint, warm) -> None:
    from InteractiveSegmentationLogic.model_holder import ModelHolder

    messages = []
    holder = ModelHolder(str(small_checkpoint), "cpu", warm=warm)
    model = holder.load(lambda done, total, message: messages.append(message), threading.Event(), False)
    assert model is holder.model
    expected = ["Loading model", "Warming up model"] if warm else ["Loading model"]  # the CPU is not warmed up by default
    assert [next(p for p, _ in PHASE_PREFIXES if m.startswith(p)) for m in messages] == expected
    feedback = Feedback()
    feedback.start(modelLoaded=False)
    feedback.report(0, 0, messages[-1])
    feedback.poll()
    assert feedback.phase is (Phase.WARMING_UP if warm else Phase.LOADING)


def test_the_warm_up_runs_one_click_through_the_model() -> None:
    pytest.importorskip("slicer", reason="the logic package imports MRML helpers (slicer-core)")
    from InteractiveSegmentationLogic.model_holder import warm_up
    from InteractiveSegmentationLogic.testing import bright_spot_model

    model = bright_spot_model()
    seconds = warm_up(model)
    assert seconds > 0 and model.image_encoder.calls == 1
