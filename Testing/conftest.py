"""Shared pytest set-up: deterministic seeds, a small thread count, data-folder skip helper, a small model and CT file for the CLI."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
#: Real labelled volumes, present for developers and CI but not in a user's clone.
SHARED_DATA = Path(os.environ.get("SAMMED3D_SHARED_DATA", ROOT.parent / "shared" / "data" / "train"))


@pytest.fixture(autouse=True)
def _torch_threads_and_seed():
    import torch

    # CI has 2 cores; oversubscribed OpenMP threads collapse (see the facts file), so use 2.
    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_data() -> Path:
    """Path of ../shared/data/train; skips the test when the folder is absent."""
    if not (SHARED_DATA / "manifest.json").is_file():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (only developers and CI have it)")
    return SHARED_DATA


#: A small SAM-Med3D (random weights) for the command-line tests: the real network path, cheap on CPU.
SMALL_CLI_MODEL = {
    "image_encoder": {
        "img_size": 128, "patch_size": 16, "embed_dim": 48, "depth": 2, "num_heads": 4, "out_chans": 48,
        "use_rel_pos": True, "window_size": 0,
    },
    "prompt_encoder": {"embed_dim": 48, "image_embedding_size": 8, "input_image_size": 128, "mask_in_chans": 16},
    "mask_decoder": {"transformer_dim": 48},
}


@pytest.fixture(scope="session")
def small_model_path(tmp_path_factory) -> Path:
    """A checkpoint of :data:`SMALL_CLI_MODEL` with its model card."""
    import torch

    from SAMMed3DLib import build_sam3d, save_model
    from SAMMed3DLib.card import ModelCard

    torch.manual_seed(0)  # the same weights whichever test comes first
    model = build_sam3d(SMALL_CLI_MODEL)
    path = tmp_path_factory.mktemp("model") / "small.pth"
    save_model(model, path, card=ModelCard(name="small", config=model.config))
    return path


@pytest.fixture
def ct_file(tmp_path) -> Path:
    """An oblique anisotropic CT-like volume with one bright block, as ``tmp_path/ct.nii.gz``."""
    rng = np.random.default_rng(0)
    arr = rng.normal(40, 10, size=(30, 60, 70)).astype(np.float32)
    arr[10:20, 20:40, 25:45] += 200
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing((0.9, 0.8, 2.5))
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection(sitk.VersorTransform((1.0, 0.2, 0.1), 0.3).GetMatrix())
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def scene():
    """An MRML scene with the logics Slicer registers at start-up (kept alive with the scene).

    An application logic (it creates the selection and interaction singletons), then the
    segmentations and markups module logics registered on the scene, as Slicer does.
    """
    slicer = pytest.importorskip("slicer", reason="slicer-core provides MRML outside Slicer (pip install slicer-core)")
    mrml = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(mrml)
    logics = [app]
    for cls in (slicer.vtkSlicerSegmentationsModuleLogic, slicer.vtkSlicerMarkupsLogic):
        logic = cls()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(mrml)
        logics.append(logic)
    yield mrml
    for logic in reversed(logics):
        logic.SetMRMLScene(None)


@pytest.fixture
def one_window_volume() -> sitk.Image:
    """A blank 64³ image of 3 mm voxels: one 192 mm window of the default card holds all of it."""
    image = sitk.GetImageFromArray(np.zeros((64, 64, 64), np.float32))
    image.SetSpacing((3.0, 3.0, 3.0))
    return image
