"""The helpers of the Slicer module (``SAMMed3D/SAMMed3DModule``) that run without the Slicer application.

``SAMMed3D.py`` itself needs the application and is checked statically (``test_slicer_packaging.py``);
what it delegates to is run here: the persistent worker thread, the module logic's parameter-node
side on a real MRML scene (slicer-core) with a small checkpoint on disk, the dependency checks and
the Segment Editor hooks. Where the code reaches for the application (``slicer.app``,
``slicer.modules``, ``slicer.mrmlScene``), the test puts a stand-in there with ``monkeypatch``.
"""

from __future__ import annotations

import pathlib
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SAMMed3D"))

slicer = pytest.importorskip("slicer", reason="slicer-core provides MRML outside Slicer (pip install slicer-core)")

from SAMMed3DModule import dependencies, segment_editor  # noqa: E402
from SAMMed3DModule.choices import DeviceChoice, ModelChoice  # noqa: E402
from SAMMed3DModule.module_logic import ParameterNodeLogic  # noqa: E402
from SAMMed3DModule.worker import WAIT_S, ModelWorker, waitPumpingEvents  # noqa: E402

# -- worker -----------------------------------------------------------------------------------------


def test_the_worker_runs_every_job_on_one_persistent_thread_in_order() -> None:
    worker = ModelWorker()
    threads, order = [], []

    def call(i: int) -> int:
        threads.append(threading.current_thread())
        order.append(i)
        return i * 10

    jobs = [worker.submit(lambda i=i: call(i)) for i in range(5)]
    assert all(job.done.wait(10) for job in jobs)
    assert [job.result for job in jobs] == [0, 10, 20, 30, 40] and order == [0, 1, 2, 3, 4]
    assert len(set(threads)) == 1 and threads[0] is not threading.current_thread()
    worker.shutdown()
    threads[0].join(10)
    assert not threads[0].is_alive()


def test_a_failing_job_hands_its_exception_to_the_main_thread_and_the_worker_goes_on() -> None:
    worker = ModelWorker()
    failing = worker.submit(lambda: 1 / 0)
    after = worker.submit(lambda: "still running")
    assert failing.done.wait(10) and after.done.wait(10)
    assert isinstance(failing.error, ZeroDivisionError) and failing.result is None
    assert after.error is None and after.result == "still running"
    worker.shutdown()


def test_the_main_thread_waits_with_the_gil_released_and_keeps_pumping_events() -> None:
    """The worker needs the GIL, which the main thread only gives up while it waits in Python."""
    worker = ModelWorker()
    release = threading.Event()
    pumps: list[float] = []

    def pump() -> None:
        pumps.append(0.0)
        if len(pumps) == 3:
            release.set()  # e.g. the user pressed Cancel: events keep flowing while the job runs

    job = worker.submit(lambda: release.wait(10.0) and "done")
    assert waitPumpingEvents(job, pump, intervalS=0.01) is job
    assert job.done.is_set() and job.result == "done" and len(pumps) == 3
    assert waitPumpingEvents(job, pump) is job and len(pumps) == 3, "a finished job is not waited for"
    assert WAIT_S == pytest.approx(0.03)
    worker.shutdown()


@pytest.mark.parametrize("interval", [0.0, -0.03])
def test_waiting_needs_a_positive_interval(interval) -> None:
    with pytest.raises(ValueError, match="intervalS"):
        waitPumpingEvents(ModelWorker().submit(lambda: None), lambda: None, intervalS=interval)


def test_the_worker_restarts_its_thread_after_a_shutdown() -> None:
    worker = ModelWorker()
    first = worker.submit(threading.current_thread)
    assert first.done.wait(10)
    worker.shutdown()
    first.result.join(10)
    second = worker.submit(threading.current_thread)
    assert second.done.wait(10) and second.result is not first.result and second.result.is_alive()
    worker.shutdown()


# -- choices ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("choices", [ModelChoice, DeviceChoice])
def test_every_choice_has_a_distinct_label(choices) -> None:
    labels = [choice.label() for choice in choices]
    assert all(labels) and len(set(labels)) == len(labels)


# -- the module logic's parameter-node side ---------------------------------------------------------


def _parameters(**fields):
    """A stand-in for ``SAMMed3DParameterNode`` (the wrapper needs the Slicer application)."""
    defaults = {"inputVolume": None, "segmentation": None, "segmentId": "", "model": ModelChoice.DEFAULT, "modelPath": pathlib.Path(),
                "device": DeviceChoice.CPU, "autoRun": True, "autoExtend": False,
                "boxRoi": None, "lockOtherSegments": False, "snapToEdges": True, "signedClicks": True}
    return types.SimpleNamespace(**{**defaults, **fields})


@pytest.mark.parametrize(
    ("model", "path", "expected"),
    [
        (ModelChoice.DEFAULT, pathlib.Path(), "default"),
        (ModelChoice.TURBO, pathlib.Path("ignored.pth"), "sam_med3d_turbo"),
        (ModelChoice.FILE, pathlib.Path("/models/mine.pth"), str(pathlib.Path("/models/mine.pth"))),
    ],
)
def test_model_spec_is_the_registry_name_or_the_chosen_file(model, path, expected) -> None:
    assert ParameterNodeLogic.modelSpec(_parameters(model=model, modelPath=path)) == expected


def test_a_local_file_choice_without_a_file_is_refused_before_any_work() -> None:
    logic = ParameterNodeLogic()
    with pytest.raises(ValueError, match="choose a checkpoint file"):
        logic.prepare(_parameters(model=ModelChoice.FILE), None, None)
    assert not logic.modelLoaded and not logic.canUndo


def test_before_any_update_there_is_nothing_to_undo_or_redo() -> None:
    logic = ParameterNodeLogic()
    assert (logic.undo(), logic.redo()) == (None, None)
    assert not logic.canUndo and not logic.canRedo and not logic.modelLoaded
    logic.endSession()  # no interactive logic yet: nothing to end, no error


@pytest.fixture
def module_case(scene, tmp_path, monkeypatch):  # noqa: F811 - the imported fixture
    """Segment "A" of an oblique sphere volume, a small random checkpoint chosen as "Local file…", no Segment Editor module.

    The module logic is configured and shows the segment's points, one + point placed on a sphere,
    as the widget does before the interactive logic (and PyTorch) is needed.
    """
    from InteractiveSegmentationLogic.testing import SMALL_CONFIG, add_sphere_volume

    from SAMMed3DLib import build_sam3d
    from SAMMed3DLib.card import ModelCard
    from SAMMed3DLib.checkpoint import save_model

    model = build_sam3d(SMALL_CONFIG)
    model.card = ModelCard(name="small-random", config=model.config)
    checkpoint = save_model(model, tmp_path / "small.pth")
    volume, centres = add_sphere_volume(scene)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    segmentation.CreateDefaultDisplayNodes()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("A", "A")
    # The Segment Editor module is not loaded (nothing to save an undo state in but our own editor).
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(), raising=False)
    parameters = _parameters(inputVolume=volume, segmentation=segmentation, segmentId=segment_id,
                             model=ModelChoice.FILE, modelPath=checkpoint)
    logic = ParameterNodeLogic()
    logic.configure(parameters)
    plus, minus = logic.pointsNodes(segmentation, segment_id)
    plus.AddControlPoint(*centres[0])
    return parameters, logic, plus, minus, centres[0]


def _update(logic: ParameterNodeLogic, parameters, plus, minus):
    request = logic.prepare(parameters, plus, minus)
    progress = []
    update = logic.compute(request, lambda *args: progress.append(args), threading.Event(), False)
    return request, logic.apply(request, update), progress


def test_points_shown_before_the_logic_exists_are_the_undo_baseline_of_the_first_update(module_case) -> None:
    from InteractiveSegmentationLogic.testing import segment_on_volume

    parameters, logic, plus, minus, _ = module_case
    assert not logic.modelLoaded
    request, result, progress = _update(logic, parameters, plus, minus)
    assert request.newSession and result.newSession and logic.modelLoaded and logic.canUndo
    assert progress and progress[0][2].startswith("Loading model")
    mask = segment_on_volume(parameters.segmentation, parameters.segmentId, parameters.inputVolume)
    assert int(mask.sum()) == result.changedVoxels
    assert logic.undo() == parameters.segmentId
    assert plus.GetNumberOfControlPoints() == 0, "undo must bring back the points as shown before the first update"
    assert int(segment_on_volume(parameters.segmentation, parameters.segmentId, parameters.inputVolume).sum()) == 0
    assert logic.canRedo and logic.redo() == parameters.segmentId and plus.GetNumberOfControlPoints() == 1


def test_changing_a_setting_starts_a_new_session_and_unchanged_settings_keep_it(module_case) -> None:
    parameters, logic, plus, minus, centre = module_case
    _update(logic, parameters, plus, minus)
    logic.configure(parameters)  # the widget calls this on every parameter node change
    minus.AddControlPoint(*(centre + 3.0))
    request, _, _ = _update(logic, parameters, plus, minus)
    assert not request.newSession
    parameters.autoExtend = True
    logic.configure(parameters)
    plus.AddControlPoint(*(centre - 2.0))
    request, _, progress = _update(logic, parameters, plus, minus)
    assert request.newSession and not progress, "the same model is kept (no reload) when only window following changes"


def test_the_mask_rule_check_boxes_mean_the_models_default_or_off_and_reach_the_session(module_case) -> None:
    parameters, logic, plus, minus, centre = module_case
    _update(logic, parameters, plus, minus)
    impl = logic._impl
    assert (impl.refine, impl.signedClicks) == (None, None), "checked: the model's own default"
    parameters.snapToEdges = parameters.signedClicks = False
    logic.configure(parameters)
    plus.AddControlPoint(*(centre - 2.0))
    request, _, _ = _update(logic, parameters, plus, minus)
    assert request.newSession and (impl.refine, impl.signedClicks) == (False, False)
    assert impl._session.refinement is None and impl._session.signed_clicks is False
    parameters.snapToEdges = True
    logic.configure(parameters)
    assert (impl.refine, impl.signedClicks) == (None, False)


def test_lock_other_segments_and_the_box_roi_reach_the_update(module_case) -> None:
    parameters, logic, plus, minus, centre = module_case
    segmentation = parameters.segmentation
    other = segmentation.GetSegmentation().AddEmptySegment("B", "B")
    roi = segmentation.GetScene().AddNewNodeByClass("vtkMRMLMarkupsROINode", "box")
    roi.SetXYZ(*centre)
    roi.SetRadiusXYZ(9.0, 9.0, 9.0)
    parameters.lockOtherSegments, parameters.boxRoi = True, roi
    request = logic.prepare(parameters, plus, minus)
    assert request.options.lockedSegmentIds == (other,)
    assert request.boxLps is not None and np.allclose((request.boxLps[0] + request.boxLps[1]) / 2.0, centre * (-1, -1, 1))
    parameters.lockOtherSegments, parameters.boxRoi = False, None
    request = logic.prepare(parameters, plus, minus)
    assert request.options.lockedSegmentIds == () and request.boxLps is None


def test_a_cancel_during_the_first_model_load_is_reported_as_cancelled(module_case) -> None:
    parameters, logic, plus, minus, _ = module_case
    request = logic.prepare(parameters, plus, minus)
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RuntimeError, match="cancelled"):
        logic.compute(request, lambda *args: None, cancel, False)


# -- the Segment Editor module's undo ---------------------------------------------------------------


class _FakeSegmentEditorWidget:
    """The parts of the Segment Editor module's ``qMRMLSegmentEditorWidget`` the hook uses (Qt's camelCase names)."""

    def __init__(self, segmentation) -> None:
        self._segmentation, self.saved = segmentation, 0

    def segmentationNode(self):
        return self._segmentation

    def saveStateForUndo(self) -> None:
        self.saved += 1


def _with_segment_editor(monkeypatch, widget) -> None:
    representation = types.SimpleNamespace(self=lambda: types.SimpleNamespace(editor=widget))
    module = types.SimpleNamespace(widgetRepresentation=lambda: representation)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(segmenteditor=module), raising=False)


def test_the_segment_editor_module_saves_an_undo_state_only_for_the_segmentation_it_edits(monkeypatch) -> None:
    bare = slicer.vtkMRMLScene()
    edited, other = (bare.AddNewNodeByClass("vtkMRMLSegmentationNode") for _ in range(2))
    widget = _FakeSegmentEditorWidget(edited)
    _with_segment_editor(monkeypatch, widget)
    segment_editor.saveCoreSegmentEditorUndoState(other)
    assert widget.saved == 0
    segment_editor.saveCoreSegmentEditorUndoState(edited)
    assert widget.saved == 1
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(), raising=False)
    segment_editor.saveCoreSegmentEditorUndoState(edited)  # Segment Editor not loaded: nothing to save, no error
    assert widget.saved == 1


# -- dependencies -----------------------------------------------------------------------------------


def test_dependencies_are_left_alone_in_testing_mode(monkeypatch) -> None:
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(testingEnabled=lambda: True), raising=False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # would raise if it were imported
    assert dependencies.ensureDependencies("no-such-requirements.txt") is True


def test_a_missing_pytorch_extension_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(testingEnabled=lambda: False), raising=False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    with pytest.raises(RuntimeError, match="needs the 'PyTorch' extension: install it from the Extensions Manager"):
        dependencies.ensureDependencies("no-such-requirements.txt")


@pytest.mark.parametrize("installed", [False, True], ids=["declined", "present"])
def test_pytorch_is_installed_through_the_extension_with_the_version_floor(monkeypatch, tmp_path, installed) -> None:
    calls = []

    class FakeTorchLogic:
        """``PyTorchUtils.PyTorchUtilsLogic``'s two methods the module calls (its camelCase names)."""

        def torchInstalled(self) -> bool:
            return installed

        def installTorch(self, **kwargs):
            calls.append(kwargs)  # returns None: the user declined

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# nothing but a comment\n", encoding="utf-8")
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(testingEnabled=lambda: False), raising=False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=FakeTorchLogic))
    assert dependencies.ensureDependencies(str(requirements), confirm=lambda text: pytest.fail(text)) is installed
    assert calls == ([] if installed else [{"askConfirmation": True, "torchVersionRequirement": dependencies.TORCH_REQUIREMENT}])
    assert dependencies.TORCH_REQUIREMENT == ">=2.2"


@pytest.mark.parametrize("answer", [True, False], ids=["accepted", "declined"])
def test_a_missing_pytorch_is_installed_in_the_background_after_asking(monkeypatch, tmp_path, answer) -> None:
    ran, questions = [], []

    class FakeTorchLogic:
        def torchInstalled(self) -> bool:
            return False

        def installTorch(self, **kwargs):
            pytest.fail("the foreground install of PyTorchUtils must not run when the module installs in the background")

        @staticmethod
        def _getPipInstallArguments(forceComputationBackend=None, torchVersionRequirement=None):  # noqa: N802
            return ["install", "torch" + torchVersionRequirement, "torchvision"]

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# nothing but a comment\n", encoding="utf-8")
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(testingEnabled=lambda: False), raising=False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=FakeTorchLogic))
    from SAMMed3DModule import torch_install

    monkeypatch.setattr(torch_install, "torchImportable", lambda: True)
    confirm = lambda text: questions.append(text) or answer  # noqa: E731
    result = dependencies.ensureDependencies(str(requirements), confirm, lambda commands: ran.append(commands) or True)
    assert result is answer and len(questions) == 1 and "Slicer stays usable" in questions[0]
    assert ran == ([] if not answer else [torch_install.installCommands(FakeTorchLogic(), dependencies.TORCH_REQUIREMENT)])
    if answer:
        assert ran[0][-1][-4:] == ["light_the_torch", "install", "torch>=2.2", "torchvision"]


@pytest.mark.parametrize(
    ("version", "ok"),
    [("2.2.0", True), ("2.13.0+cpu", True), ("2.2.0rc1", False), ("2.1.2+cu121", False), ("1.13.1", False), ("not a version", False)],
)
def test_the_torch_version_floor(version, ok) -> None:
    assert dependencies.torchVersionOk(version) is ok


def test_the_self_test_knows_when_pytorch_is_missing_or_too_old(monkeypatch) -> None:
    for installed, expected in ((None, "found no PyTorch"), ("2.0.1", "found PyTorch 2.0.1"), ("2.13.0", None)):
        monkeypatch.setattr(dependencies, "installedTorchVersion", lambda v=installed: v)
        message = dependencies.torchMissingMessage()
        assert (message is None) if expected is None else (expected in message and "install the PyTorch extension" in message)


@pytest.mark.parametrize("answer", [False, True], ids=["declined", "upgraded"])
def test_an_old_pytorch_is_detected_and_upgraded_through_the_extension_after_asking(monkeypatch, tmp_path, answer) -> None:
    calls, questions = [], []

    class OldTorchLogic:
        def torchInstalled(self) -> bool:
            return True

        def installTorch(self, **kwargs):
            calls.append(kwargs)
            return object()

    requirements = tmp_path / "requirements.txt"
    requirements.write_text("", encoding="utf-8")
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(testingEnabled=lambda: False), raising=False)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=OldTorchLogic))
    monkeypatch.setattr(dependencies, "installedTorchVersion", lambda: "2.0.1")
    confirm = lambda text: questions.append(text) or answer  # noqa: E731
    if answer:
        with pytest.raises(RuntimeError, match="upgraded from 2.0.1: restart Slicer"):
            dependencies.ensureDependencies(str(requirements), confirm=confirm)
        assert calls == [{"askConfirmation": False, "torchVersionRequirement": dependencies.TORCH_REQUIREMENT}]
    else:
        assert dependencies.ensureDependencies(str(requirements), confirm=confirm) is False and calls == []
    assert len(questions) == 1 and "PyTorch 2.0.1 is installed" in questions[0] and ">=2.2" in questions[0]


def test_pip_ensure_asks_for_missing_packages_only_and_installs_what_the_user_accepts(monkeypatch, tmp_path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\n-r other.txt\nnumpy>=1.0\nsammed3d-no-such-package>=9.9\n\n", encoding="utf-8")
    installed, questions = [], []
    monkeypatch.setattr(slicer.util, "pip_install", installed.append, raising=False)

    def confirm(answer: bool):
        return lambda text: questions.append(text) or answer

    with pytest.raises(RuntimeError, match="cannot run without sammed3d-no-such-package>=9.9"):
        dependencies.pipEnsure(str(requirements), confirm(False))
    assert installed == [] and len(questions) == 1 and "numpy" not in questions[0]
    dependencies.pipEnsure(str(requirements), confirm(True))
    assert installed == ["sammed3d-no-such-package>=9.9"]
    requirements.write_text("numpy>=1.0\n", encoding="utf-8")
    dependencies.pipEnsure(str(requirements), lambda text: pytest.fail(f"asked although nothing is missing: {text}"))


def test_a_segment_of_another_segmentation_is_not_kept_as_the_current_one(scene) -> None:
    """Switching to a segmentation without segments emits no segment change: the stale ID is dropped."""
    first = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentId = first.GetSegmentation().AddEmptySegment("liver")
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    parameters = types.SimpleNamespace(segmentation=first, segmentId=segmentId)
    assert ParameterNodeLogic.currentSegmentId(parameters) == segmentId
    parameters.segmentation = empty
    assert ParameterNodeLogic.currentSegmentId(parameters) == "" and parameters.segmentId == ""
    assert scene.GetNumberOfNodesByClass("vtkMRMLMarkupsFiducialNode") == 0, "no markups nodes for a stale segment"
    parameters.segmentation, parameters.segmentId = None, segmentId
    assert ParameterNodeLogic.currentSegmentId(parameters) == ""


@pytest.mark.parametrize("has_safetensors", [False, True])
def test_the_checkpoint_dialog_offers_safetensors_only_when_it_can_be_read(monkeypatch, has_safetensors) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (object() if has_safetensors else None) if name == "safetensors" else real(name, *a))
    (filters,) = ParameterNodeLogic.checkpointNameFilters()
    assert "*.pth" in filters and ("*.safetensors" in filters) is has_safetensors
