"""Image reading/validation, segmentation writing (incl. Slicer .seg.nrrd), previews; real files in tmp_path."""

from __future__ import annotations

import errno
import gzip
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SAMMed3DLib import io as sio
from SAMMed3DLib.errors import ImageError, OutputError, PromptError, SAMMed3DError
from SAMMed3DLib.io import image_from_array, read_image, validate_image, write_preview_png, write_segmentation


def rotation(axis: int, degrees: float) -> np.ndarray:
    a = np.deg2rad(degrees)
    m = np.eye(3)
    i, j = [k for k in range(3) if k != axis]
    m[i, i], m[i, j], m[j, i], m[j, j] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    return m


OBLIQUE = rotation(0, 25.0) @ rotation(1, -20.0)
SPACING = (0.7, 0.9, 3.0)
ORIGIN = (10.0, -20.0, 30.0)


def oblique_image(dtype=np.float32, shape_zyx=(6, 10, 12)) -> sitk.Image:
    values = (np.arange(np.prod(shape_zyx)).reshape(shape_zyx) % 251 - 40).astype(dtype)
    return image_from_array(values, SPACING, ORIGIN, OBLIQUE)


def assert_same_geometry(a: sitk.Image, b: sitk.Image, atol: float = 1e-5) -> None:
    assert a.GetSize() == b.GetSize()
    assert np.allclose(a.GetSpacing(), b.GetSpacing(), atol=atol)
    assert np.allclose(a.GetOrigin(), b.GetOrigin(), atol=atol)
    assert np.allclose(a.GetDirection(), b.GetDirection(), atol=atol)


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize("name", ["vol.nii", "vol.nii.gz", "vol.nrrd", "vol.mha", "vol.mhd"])
@pytest.mark.parametrize("dtype", [np.float32, np.int16])
def test_read_round_trip_keeps_values_and_oblique_geometry(tmp_path, name, dtype):
    original = oblique_image(dtype)
    sitk.WriteImage(original, str(tmp_path / name))
    image = read_image(tmp_path / name)
    assert image.GetPixelID() == sitk.sitkFloat32 and image.GetDimension() == 3
    assert_same_geometry(image, original)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(original).astype(np.float32))


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str) -> None:
    """One file per slice with the position/orientation tags a scanner would write.

    (SimpleITK's ImageSeriesWriter refuses DICOM, so slices are written one by one.)
    """
    folder.mkdir(exist_ok=True)
    direction = np.reshape(image.GetDirection(), (3, 3))
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[:, 0], *direction[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(image.GetSize()[2]):
        slice_ = image[:, :, k]
        position = "\\".join(f"{v:.10f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k)))
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.7",
            "0020|000e": series_uid,
            "0008|0018": f"{series_uid}.{k + 1}",
            "0020|0013": str(k + 1),
            "0020|0032": position,
            "0020|0037": orientation,
            "0018|0050": f"{image.GetSpacing()[2]:.6f}",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{series_uid[-4:]}_{k:03d}.dcm"))
        writer.Execute(slice_)


def test_read_dicom_folder_keeps_geometry(tmp_path):
    original = oblique_image(np.int16)
    write_dicom_series(original, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.1001")
    image = read_image(tmp_path / "dicom")
    assert_same_geometry(image, original, atol=1e-4)
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(original).astype(np.float32))


def test_read_dicom_folder_takes_the_largest_series(tmp_path, caplog):
    big = oblique_image(np.int16, shape_zyx=(7, 10, 12))
    small = image_from_array(np.ones((3, 8, 8), np.int16), (1.0, 1.0, 2.0), (0, 0, 0))
    write_dicom_series(small, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.2002")
    write_dicom_series(big, tmp_path / "dicom", "1.2.826.0.1.3680043.2.1125.3003")
    with caplog.at_level(logging.INFO, logger="SAMMed3DLib.io"):
        image = read_image(tmp_path / "dicom")
    assert image.GetSize() == (12, 10, 7)
    assert "2 DICOM series" in caplog.text and "1.2.826.0.1.3680043.2.1125.3003" in caplog.text


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda d: d / "missing.nii.gz", "does not exist"),
        (lambda d: write_bytes(d / "garbage.nii.gz", b"this is not an image" * 50), "cannot read image"),
        (lambda d: write_bytes(d / "garbage.nrrd", b"NRRD0004\nnonsense\n\n\x00\x01"), "cannot read image"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no DICOM series"),
    ],
    ids=["missing", "garbage_nifti", "garbage_nrrd", "empty_folder"],
)
def test_read_rejects_unreadable_inputs(tmp_path, make, match):
    with pytest.raises(ImageError, match=match) as info:
        read_image(make(tmp_path))
    assert str(tmp_path) in str(info.value)  # the message names the path


@pytest.mark.parametrize("name", ["cut.nii", "cut.nii.gz", "cut.mha", "cut.nrrd"])
@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_read_rejects_truncated_files(tmp_path, name, keep):
    # SimpleITK itself reads truncated NIfTI silently (zeros); read_image must not
    path = tmp_path / name
    rng = np.random.default_rng(0)
    noise = image_from_array(rng.normal(size=(20, 30, 30)).astype(np.float32), SPACING, ORIGIN, OBLIQUE)
    sitk.WriteImage(noise, str(path), useCompression=True)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageError, match="cannot read image.*truncated or corrupt"):
        read_image(path)


def test_read_accepts_multi_member_gzip_nifti(tmp_path):
    # e.g. written by bgzip: the gzip trailer only sizes the last member, so the reader must count
    original = oblique_image(np.float32, shape_zyx=(20, 30, 30))
    sitk.WriteImage(original, str(tmp_path / "plain.nii"))
    raw = (tmp_path / "plain.nii").read_bytes()
    half = len(raw) // 2
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    image = read_image(tmp_path / "multi.nii.gz")
    assert np.array_equal(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(original))


def vector_image() -> sitk.Image:
    comp = oblique_image()
    return sitk.Compose(comp, comp, comp)


def four_d_image(frames: int) -> sitk.Image:
    return sitk.JoinSeries([oblique_image() for _ in range(frames)])


def nan_image(value: float) -> sitk.Image:
    arr = np.zeros((4, 5, 6), np.float32)
    arr[1, 2, 3] = value
    return image_from_array(arr)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: sitk.Image([16, 16], sitk.sitkFloat32), "is 2D"),
        (lambda: image_from_array(np.zeros((1, 16, 16), np.float32)), "is 2D"),
        (lambda: four_d_image(3), "is 4D"),
        (vector_image, "3 component"),
        (lambda: nan_image(np.nan), "1 NaN/inf voxel"),
        (lambda: nan_image(np.inf), "1 NaN/inf voxel"),
        (lambda: np.zeros((4, 4, 4)), "must be a SimpleITK image"),
    ],
    ids=["2d", "single_slice", "4d", "vector", "nan", "inf"] + ["numpy"],
)
def test_validate_rejects_unusable_images(make, match):
    with pytest.raises(ImageError, match=match):
        validate_image(make())


@pytest.mark.parametrize(
    ("name", "make", "match"),
    [
        ("flat.nrrd", lambda: sitk.Image([16, 16], sitk.sitkInt16), "is 2D"),
        ("movie.nii.gz", lambda: four_d_image(2), "is 4D"),
        ("rgb.mha", vector_image, "3 component"),
        ("nan.nrrd", lambda: nan_image(np.nan), "NaN/inf"),
        ("inf.mha", lambda: nan_image(-np.inf), "NaN/inf"),
    ],
)
def test_read_rejects_unusable_files(tmp_path, name, make, match):
    sitk.WriteImage(make(), str(tmp_path / name))
    with pytest.raises(ImageError, match=match):
        read_image(tmp_path / name)


def test_validate_accepts_4d_with_one_frame_and_casts_to_float32():
    image = validate_image(four_d_image(1))
    assert image.GetDimension() == 3 and image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSize() == (12, 10, 6)
    same = oblique_image(np.float32)
    assert validate_image(same) is same  # already fine: no copy


def test_image_from_array_sets_geometry_and_rejects_bad_input():
    image = image_from_array(np.zeros((2, 3, 4), np.int16), SPACING, ORIGIN, OBLIQUE)
    assert image.GetSize() == (4, 3, 2) and image.GetPixelID() == sitk.sitkInt16
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), OBLIQUE) and image.GetOrigin() == ORIGIN
    assert image_from_array(np.ones((2, 2, 2), bool)).GetPixelID() == sitk.sitkUInt8
    with pytest.raises(ImageError, match="3D"):
        image_from_array(np.zeros((3, 4)))
    with pytest.raises(ImageError, match="spacing"):
        image_from_array(np.zeros((2, 2, 2)), (1.0, 0.0, 1.0))
    with pytest.raises(ImageError, match="orthonormal"):
        image_from_array(np.zeros((2, 2, 2)), direction=np.ones((3, 3)))


# ---------------------------------------------------------------- writing segmentations


def label_mask() -> sitk.Image:
    arr = np.zeros((6, 10, 12), np.uint8)
    arr[1:4, 2:7, 3:9] = 1
    return image_from_array(arr, SPACING, ORIGIN, OBLIQUE)


@pytest.mark.parametrize("name", ["seg.nii", "seg.nii.gz", "seg.nrrd", "seg.mha", "seg.seg.nrrd"])
def test_write_segmentation_round_trip(tmp_path, name):
    mask = label_mask()
    path = write_segmentation(mask, tmp_path / name)
    assert path == tmp_path / name
    back = sitk.ReadImage(str(path))
    assert back.GetPixelID() == sitk.sitkUInt8
    assert_same_geometry(back, mask)
    assert np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(mask))
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left


def test_seg_nrrd_carries_slicer_segment_fields(tmp_path):
    path = write_segmentation(label_mask(), tmp_path / "tumour.seg.nrrd", segment_name="Liver tumour", color_rgb=(0.1, 0.2, 0.3))
    back = sitk.ReadImage(str(path))
    expected = {
        "Segment0_ID": "Liver_tumour",
        "Segment0_Name": "Liver tumour",
        "Segment0_Color": "0.1 0.2 0.3",
        "Segment0_LabelValue": "1",
        "Segment0_Layer": "0",
        "Segment0_Extent": "3 8 2 6 1 3",  # i0 i1 j0 j1 k0 k1 of the non-zero voxels
        "Segmentation_MasterRepresentation": "Binary labelmap",
    }
    assert {key: back.GetMetaData(key) for key in expected} == expected
    header = path.read_bytes()[:400].decode("latin-1")
    assert "space: left-posterior-superior" in header


def test_seg_nrrd_opens_in_slicer_segmentation_storage_node(tmp_path):
    slicer = pytest.importorskip("slicer")
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    path = write_segmentation(label_mask(), tmp_path / "organ.seg.nrrd", segment_name="Kidney", color_rgb=(0.9, 0.4, 0.2))
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node) == 1
    segmentation = node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 1
    segment = segmentation.GetNthSegment(0)
    assert segment.GetName() == "Kidney" and np.allclose(segment.GetColor(), (0.9, 0.4, 0.2))
    labelmap = segment.GetRepresentation("Binary labelmap")
    assert int(vtk_to_numpy(labelmap.GetPointData().GetScalars()).sum()) == 3 * 5 * 6
    # geometry in RAS: Slicer's IJK→RAS is our LPS geometry with x and y negated
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    extent = labelmap.GetExtent()
    expected_origin_lps = np.array(label_mask().TransformIndexToPhysicalPoint((extent[0], extent[2], extent[4])))
    ras_of_first = ijk_to_ras @ np.array([extent[0], extent[2], extent[4], 1.0])
    assert np.allclose(ras_of_first[:3], expected_origin_lps * [-1, -1, 1], atol=1e-4)


def test_seg_nrrd_binarises_labels_and_records_empty_extent(tmp_path):
    arr = np.zeros((4, 5, 6), np.uint8)
    arr[1, 2, 3], arr[2, 2, 3] = 3, 7
    path = write_segmentation(image_from_array(arr), tmp_path / "a.seg.nrrd")
    assert np.array_equal(sitk.GetArrayViewFromImage(sitk.ReadImage(str(path))), (arr > 0).astype(np.uint8))
    empty = write_segmentation(image_from_array(np.zeros((4, 5, 6), np.uint8)), tmp_path / "b.seg.nrrd")
    assert sitk.ReadImage(str(empty)).GetMetaData("Segment0_Extent") == "0 -1 0 -1 0 -1"


@pytest.mark.parametrize(
    ("mask", "name", "error", "match"),
    [
        (label_mask, "seg.png", OutputError, "unsupported extension"),
        (label_mask, "no_such_folder/seg.nii.gz", OutputError, "does not exist"),
        (lambda: image_from_array(np.zeros((2, 2, 2), np.float32)), "seg.nii.gz", ImageError, "integer pixel type"),
        (lambda: image_from_array(np.full((2, 2, 2), 300, np.int16)), "seg.nii.gz", ImageError, "0..255"),
        (lambda: sitk.Image([4, 4], sitk.sitkUInt8), "seg.nii.gz", ImageError, "3D scalar"),
    ],
)
def test_write_segmentation_rejects_bad_requests(tmp_path, mask, name, error, match):
    with pytest.raises(error, match=match):
        write_segmentation(mask(), tmp_path / name)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_failed_final_move_leaves_no_partial_file(tmp_path):
    target = tmp_path / "seg.nii.gz"
    target.mkdir()  # a folder is in the way: the temporary file is written, the move fails
    with pytest.raises(OutputError, match="cannot write") as info:
        write_segmentation(label_mask(), target)
    assert isinstance(info.value, SAMMed3DError) and isinstance(info.value, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"] and target.is_dir()
    assert not any(target.iterdir())


def test_disk_full_mid_write_keeps_the_existing_file(tmp_path, monkeypatch):
    target = tmp_path / "seg.nrrd"
    write_segmentation(label_mask(), target)
    before = target.read_bytes()
    real_write = sitk.WriteImage

    def half_then_enospc(image, filename, *args, **kwargs):
        real_write(image, filename, *args, **kwargs)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])  # the disk filled up half way
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)

    monkeypatch.setattr(sio.sitk, "WriteImage", half_then_enospc)
    empty = image_from_array(np.zeros((6, 10, 12), np.uint8), SPACING, ORIGIN, OBLIQUE)
    with pytest.raises(OutputError, match="No space left on device"):
        write_segmentation(empty, target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nrrd"]


# ---------------------------------------------------------------- preview


def test_preview_png_shows_three_views_in_radiological_convention(tmp_path):
    # identity LPS image 60 x 60 x 40 mm; the mask is a block on the patient's RIGHT (low LPS x),
    # ANTERIOR (low LPS y) and SUPERIOR (high LPS z) side of the click at the image centre
    arr = np.random.default_rng(0).normal(100.0, 10.0, size=(40, 60, 60)).astype(np.float32)
    image = image_from_array(arr, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    labels = np.zeros(arr.shape, np.uint8)
    labels[25:35, 5:20, 5:20] = 1  # z high, y low, x low
    mask = image_from_array(labels, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    point = np.array([12.0, 12.0, 30.0])  # inside the block so all three planes cut it
    path = write_preview_png(image, mask, point, tmp_path / "preview.png")
    picture = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert picture.dtype == np.uint8 and picture.ndim == 3 and picture.shape[2] == 3
    orange = (picture[..., 0] > 150) & (picture[..., 2] < 110) & (picture[..., 0] - picture[..., 2] > 80)
    green = (picture[..., 1] == 255) & (picture[..., 0] == 0)
    assert green.any()
    # panels: axial 60 x 60, coronal 60 x 40, sagittal 60 x 40 (width x height), 4 px gaps
    axial, coronal, sagittal = orange[:, 0:60], orange[:, 64:124], orange[:, 128:188]
    assert picture.shape[1] == 188
    for panel in (axial, coronal, sagittal):
        assert panel.any()
    cols = lambda panel: np.flatnonzero(panel.any(axis=0))  # noqa: E731
    rows = lambda panel: np.flatnonzero(panel.any(axis=1))  # noqa: E731
    assert cols(axial).max() < 30  # patient right on the left
    assert rows(axial).max() < 30  # anterior on top
    assert cols(coronal).max() < 30  # patient right on the left
    top = (picture.shape[0] - 40) // 2
    assert rows(coronal).max() - top < 20  # superior on top
    assert cols(sagittal).max() < 30  # anterior on the left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preview.png"]


def test_preview_of_an_oblique_image_at_its_corner(tmp_path):
    image = oblique_image(np.float32, shape_zyx=(12, 40, 50))
    corner = image.TransformIndexToPhysicalPoint((0, 0, 0))
    path = write_preview_png(image, None, corner, tmp_path / "corner.png")
    picture = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    green = (picture[..., 1] == 255) & (picture[..., 0] == 0)
    assert 0 < np.count_nonzero(green) <= 3 * 20  # at most 20 marker pixels per panel, none stray


@pytest.mark.parametrize(
    ("name", "point", "error", "match"),
    [("x.jpg", (0.0, 0.0, 0.0), OutputError, ".png"), ("x.png", (0.0, np.nan, 0.0), PromptError, "finite"), ("x.png", (1.0, 2.0), PromptError, "finite")],
)
def test_preview_rejects_bad_requests(tmp_path, name, point, error, match):
    with pytest.raises(error, match=match):
        write_preview_png(oblique_image(), None, point, tmp_path / name)
    assert not any(tmp_path.iterdir())
