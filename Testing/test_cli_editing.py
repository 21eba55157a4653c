"""`sammed3d segment --init / --box`: correcting an existing mask and box prompts from the command line."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SAMMed3DLib.cli import main


def _run(argv: list) -> int:
    return main([str(a) for a in argv])


@pytest.fixture
def init_file(tmp_path, ct_file):
    """A label file on a coarser grid than the CT: the bright block is label 2, a far corner label 1."""
    image = sitk.ReadImage(str(ct_file))
    labels = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    labels[10:20, 20:40, 25:45] = 2
    labels[2:6, 2:8, 60:66] = 1
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    path = tmp_path / "init.nrrd"
    sitk.WriteImage(label_image, str(path))
    return path, labels


def test_a_click_far_from_the_existing_mask_leaves_it_as_it_was(tmp_path, ct_file, init_file, small_model_path) -> None:
    path, labels = init_file
    out = tmp_path / "corrected.nii.gz"
    code = _run(["segment", ct_file, "--ijk", "--init", path, "--init-label", "2", "--negative", "5,50,25",
                 "--model", small_model_path, "--out", out, "--threads", "1"])
    assert code == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), (labels == 2).astype(np.uint8))


def test_an_init_mask_alone_is_written_back_on_the_image_grid(tmp_path, ct_file, init_file, small_model_path) -> None:
    path, labels = init_file
    out = tmp_path / "same.seg.nrrd"
    assert _run(["segment", ct_file, "--init", path, "--model", small_model_path, "--out", out]) == 0
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0, labels > 0)


def test_a_box_alone_gives_a_mask_inside_the_box(tmp_path, ct_file, small_model_path) -> None:
    out = tmp_path / "box.nii.gz"
    preview = tmp_path / "box.png"
    code = _run(["segment", ct_file, "--ijk", "--box", "22,17,8,48,43,22", "--model", small_model_path,
                 "--out", out, "--preview", preview, "--threads", "1"])
    assert code == 0 and preview.stat().st_size > 1000
    written = sitk.ReadImage(str(out))
    mask = sitk.GetArrayFromImage(written).astype(bool)
    # On this oblique image the box is the LPS box around the index box's eight corners.
    corners = np.array([written.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in c))
                        for c in np.array(np.meshgrid([22, 48], [17, 43], [8, 22])).reshape(3, -1).T])
    voxels = np.array([written.TransformIndexToPhysicalPoint(tuple(int(v) for v in idx[::-1])) for idx in np.argwhere(mask)])
    assert len(voxels) > 0 and np.all(voxels >= corners.min(0) - 1e-6) and np.all(voxels <= corners.max(0) + 1e-6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--box", "1,2,3,4,5"], "six comma-separated numbers"),
        (["--box", "10,10,10,10,20,20", "--lps"], "flat"),
        (["--init-label", "7"], "does not occur"),
        (["--point", "35,30,15", "--init-label", "2", "--no-init"], None),
    ],
)
def test_bad_editing_input_is_one_clear_line(tmp_path, ct_file, init_file, small_model_path, capsys, extra, message) -> None:
    path, _ = init_file
    out = tmp_path / "m.nii.gz"
    argv = ["segment", ct_file, "--ijk", "--model", small_model_path, "--out", out]
    if "--lps" in extra:
        argv.remove("--ijk")
        extra = [e for e in extra if e != "--lps"]
    if "--no-init" in extra:
        extra = [e for e in extra if e != "--no-init"]
        message = "--init-label needs --init"
    elif "--init-label" in extra:
        argv += ["--init", path]
    assert _run(argv + extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_the_init_mask_is_never_overwritten(tmp_path, ct_file, init_file, small_model_path, capsys) -> None:
    path, _ = init_file
    before = path.read_bytes()
    code = _run(["segment", ct_file, "--init", path, "--model", small_model_path, "--out", path])
    assert code == 2 and "--init" in capsys.readouterr().err
    assert path.read_bytes() == before
