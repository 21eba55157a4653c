"""Pieces of the Slicer logic one by one: masking rules, click order, grids, MRML → LPS conversions."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SAMMed3D"))

slicer = pytest.importorskip("slicer", reason="slicer-core provides MRML outside Slicer (pip install slicer-core)")
vtk = pytest.importorskip("vtk")

from InteractiveSegmentationLogic import WriteOptions, points_role, write_options_for_mode  # noqa: E402
from InteractiveSegmentationLogic.labelmaps import integer_shift, map_extent, resample_block  # noqa: E402
from InteractiveSegmentationLogic.masking import CODE_BACKGROUND, CODE_OBJECT, CODE_UNDECIDED, compose_update  # noqa: E402
from InteractiveSegmentationLogic.mrml_geometry import control_points_world_lps, volume_geometry, volume_to_image  # noqa: E402
from InteractiveSegmentationLogic.testing import add_sphere_volume, ijk_to_ras_matrix, rotation_matrix  # noqa: E402
from SAMMed3DLib.errors import ConfigError, ImageError  # noqa: E402

# -- masking ----------------------------------------------------------------------------------------
# One row of 6 voxels: the model decides voxels 0-4 (object at 0-2, background at 3-4), not voxel 5.
CODE = np.array([[[CODE_OBJECT, CODE_OBJECT, CODE_OBJECT, CODE_BACKGROUND, CODE_BACKGROUND, CODE_UNDECIDED]]], np.uint8)
TARGET = np.array([[[0, 0, 0, 1, 0, 1]]], np.uint8)
OTHER = np.array([[[1, 1, 0, 0, 0, 0]]], np.uint8)  # segment "B", visible
HIDDEN = np.array([[[0, 0, 1, 1, 0, 0]]], np.uint8)  # segment "H", hidden


@pytest.mark.parametrize(
    ("options", "target_after", "b_after", "h_after"),
    [
        (WriteOptions(), [1, 1, 1, 0, 0, 1], None, None),
        (WriteOptions(overwrite="all"), [1, 1, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]),
        (WriteOptions(overwrite="visible"), [1, 1, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0], None),
        (WriteOptions(editableArea="outside_all_segments"), [0, 0, 0, 1, 0, 1], None, None),
        (WriteOptions(editableArea="outside_visible_segments"), [0, 0, 1, 0, 0, 1], None, None),
        (WriteOptions(editableArea="inside_all_segments"), [1, 1, 1, 0, 0, 1], None, None),
        (WriteOptions(editableArea="inside_visible_segments"), [1, 1, 0, 1, 0, 1], None, None),
        (WriteOptions(editableArea="inside_segment", maskSegmentId="H"), [0, 0, 1, 0, 0, 1], None, None),
        (WriteOptions(editableArea="inside_segment", maskSegmentId="T"), [0, 0, 0, 0, 0, 1], None, None),
        (WriteOptions(intensityRange=(10.0, 20.0)), [1, 0, 1, 1, 0, 1], None, None),
    ],
)
def test_compose_update_applies_editable_area_and_overwrite(options, target_after, b_after, h_after) -> None:
    intensity = np.array([[[15.0, 5.0, 20.0, 30.0, 12.0, 15.0]]])
    after, others = compose_update(CODE, TARGET, {"B": OTHER, "H": HIDDEN}, options, "T", visible_ids=["T", "B"], intensity=intensity)
    assert after.ravel().tolist() == target_after
    assert (others["B"].ravel().tolist() if "B" in others else None) == b_after
    assert (others["H"].ravel().tolist() if "H" in others else None) == h_after
    assert after[0, 0, 5] == TARGET[0, 0, 5]  # an undecided voxel never changes


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"editableArea": "inside_segmnet"}, "Did you mean 'inside_segment'"),
        ({"overwrite": "some"}, "overwrite 'some' is not one of"),
        ({"editableArea": "inside_segment"}, "needs maskSegmentId"),
        ({"intensityRange": (5.0, 1.0)}, "low <= high"),
        ({"intensityRange": "abc"}, "must be \\(low, high\\) numbers"),
    ],
)
def test_invalid_write_options_are_refused(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        WriteOptions(**kwargs)


def test_missing_mask_segment_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="inside segment 'Gone', but that segment does not exist"):
        compose_update(CODE, TARGET, {}, WriteOptions(editableArea="inside_segment", maskSegmentId="Gone"), "T")


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("allow_overlap", WriteOptions()),
        ("overwrite_visible", WriteOptions(overwrite="visible")),
        ("overwrite_all", WriteOptions(overwrite="all")),
        ("segment_editor", WriteOptions(overwrite="all")),  # no Segment Editor node: its defaults
    ],
)
def test_write_modes_of_the_module(mode, expected) -> None:
    assert write_options_for_mode(mode) == expected


def test_unknown_write_mode() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'overwrite_all'"):
        write_options_for_mode("overwrite_al")


@pytest.mark.parametrize(("segment_id", "role"), [("Segment_1", "SAMMed3DPositivePoints_Segment_1"), ("liver left;x:y", "SAMMed3DPositivePoints_liver%20left%3Bx%3Ay")])
def test_points_role_is_a_safe_reference_role(segment_id, role) -> None:
    assert points_role(segment_id, True) == role
    assert points_role(segment_id, False).startswith("SAMMed3DNegativePoints_")


# -- grids ----------------------------------------------------------------------------------------------


def _grid(spacing, origin, rotation=np.eye(3)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rotation * np.asarray(spacing, float)
    m[:3, 3] = origin
    return m


def test_integer_shift_recognises_the_same_lattice() -> None:
    a = _grid((0.8, 0.9, 2.5), (1.0, 2.0, 3.0), rotation_matrix((0.3, 0.2, 1.0), 25.0))
    b = a.copy()
    b[:3, 3] = (a @ np.array([3.0, -2.0, 5.0, 1.0]))[:3]
    assert integer_shift(a, b).tolist() == [3, -2, 5]
    c = b.copy()
    c[:3, 3] += 0.1
    assert integer_shift(a, c) is None


def test_resample_block_fast_path_and_vtk_path_agree() -> None:
    rng = np.random.default_rng(0)
    src = _grid((1.0, 1.0, 2.0), (0.0, 0.0, 0.0))
    values = (rng.random((6, 12, 10)) > 0.5).astype(np.uint8)
    extent = (2, 11, 3, 14, 1, 6)
    # same lattice, shifted extent: exact slicing with zero padding
    out = resample_block(values, src, extent, src, (0, 5, 0, 5, 0, 3))
    expected = np.zeros((4, 6, 6), np.uint8)
    expected[1:, 3:, 2:] = values[:3, :3, :4]
    assert np.array_equal(out, expected)
    # a grid at half the spacing: every fine voxel takes its nearest coarse voxel (VTK path)
    fine = _grid((0.5, 0.5, 1.0), (2.25, 3.25, 2.5))
    fine_extent = (0, 15, 0, 19, 0, 9)
    out = resample_block(values, src, extent, fine, fine_extent)
    zz, yy, xx = np.meshgrid(np.arange(10), np.arange(20), np.arange(16), indexing="ij")
    ras = np.stack([xx * 0.5 + 2.25, yy * 0.5 + 3.25, zz * 1.0 + 2.5], -1)
    ijk = np.floor(ras / np.array([1.0, 1.0, 2.0]) + 0.5).astype(int)
    inside = np.all((ijk >= [2, 3, 1]) & (ijk <= [11, 14, 6]), axis=-1)
    want = np.zeros(out.shape, np.uint8)
    want[inside] = values[ijk[inside][:, 2] - 1, ijk[inside][:, 1] - 3, ijk[inside][:, 0] - 2]
    assert np.mean(out != want) < 0.01  # ties at exact half-voxels may round either way


def test_map_extent_covers_the_region_on_another_grid() -> None:
    src = _grid((1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    dst = _grid((0.5, 0.5, 0.5), (0.0, 0.0, 0.0))
    assert map_extent((0, 3, 0, 1, 0, 0), src, dst) == (-1, 7, -1, 3, -1, 1)


# -- MRML → LPS --------------------------------------------------------------------------------------


@pytest.fixture
def scene():
    mrml = slicer.vtkMRMLScene()
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(mrml)
    yield mrml
    app.SetMRMLScene(None)


def test_volume_to_image_matches_the_ijk_to_ras_geometry(scene) -> None:
    volume, _ = add_sphere_volume(scene, size_xyz=(20, 16, 8))
    image, geometry = volume_to_image(volume)
    m = ijk_to_ras_matrix(volume)
    for index in [(0, 0, 0), (19, 15, 7), (3, 11, 5)]:
        ras = (m @ np.array([*index, 1.0]))[:3]
        lps = np.asarray(image.TransformIndexToPhysicalPoint(index))
        np.testing.assert_allclose(lps, ras * [-1, -1, 1], atol=1e-9)
    assert image.GetSize() == (20, 16, 8)
    np.testing.assert_allclose(geometry.spacing_xyz_mm, (0.8, 0.9, 2.5))


def test_linear_parent_transform_is_hardened_into_the_image(scene) -> None:
    volume, _ = add_sphere_volume(scene, size_xyz=(20, 16, 8))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    t = np.eye(4)
    t[:3, :3] = rotation_matrix((0.0, 1.0, 0.0), 40.0)
    t[:3, 3] = (5.0, -3.0, 8.0)
    vm = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            vm.SetElement(r, c, t[r, c])
    transform.SetMatrixTransformToParent(vm)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    image, _ = volume_to_image(volume)
    world = (t @ ijk_to_ras_matrix(volume) @ np.array([4.0, 5.0, 6.0, 1.0]))[:3]
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((4, 5, 6)), world * [-1, -1, 1], atol=1e-9)


def test_shearing_transform_is_refused(scene) -> None:
    volume, _ = add_sphere_volume(scene, size_xyz=(10, 10, 4))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    vm = vtk.vtkMatrix4x4()
    vm.SetElement(0, 1, 0.4)
    transform.SetMatrixTransformToParent(vm)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    with pytest.raises(ImageError, match="sheared axes"):
        volume_geometry(volume)


def test_vector_volume_is_refused(scene) -> None:
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "RGB")
    slicer.util.updateVolumeFromArray(node, np.zeros((4, 5, 6, 3), np.uint8))
    with pytest.raises(ImageError, match="3 components per voxel"):
        volume_geometry(node)


def test_control_points_are_world_lps_and_skip_points_being_placed(scene) -> None:
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
    node.AddControlPoint(1.0, 2.0, 3.0)
    node.AddControlPoint(4.0, 5.0, 6.0)
    node.SetNthControlPointPositionMissing(1)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    vm = vtk.vtkMatrix4x4()
    vm.SetElement(0, 3, 10.0)
    transform.SetMatrixTransformToParent(vm)
    node.SetAndObserveTransformNodeID(transform.GetID())
    assert control_points_world_lps(node, "positive points").tolist() == [[-11.0, -2.0, 3.0]]
    assert control_points_world_lps(None, "negative points").shape == (0, 3)
