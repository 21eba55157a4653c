"""Bad images, clicks, options and outputs: each a clear error that says what to do, and nothing written.

Table-driven, one case a parameter, built from the list of issue 17 (and beyond it): every file
here is real (SimpleITK NIfTI, NRRD and DICOM files, the shipped default model), volumes are
oblique and anisotropic. A case that used to be read silently wrong must now fail with a message
naming the problem and the remedy, leave an existing output byte for byte as it was and leave no
temporary file behind; a case that used to be refused wrongly must now give the right result.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SAMMed3DLib.cli import main
from SAMMed3DLib.errors import ImageError
from SAMMed3DLib.io import read_image, validate_image

#: Oblique direction of every test volume (a rotation about an oblique axis).
DIRECTION = sitk.VersorTransform((1.0, 0.2, 0.1), 0.3).GetMatrix()
SPACING = (0.9, 0.8, 2.5)
BEFORE = b"an earlier result the user keeps"


def _phantom(scale: float = 1.0, dtype=np.float32, spacing=SPACING, origin=(10.0, -20.0, 30.0)) -> sitk.Image:
    """An oblique anisotropic volume with a bright ellipsoid at voxel (35, 30, 15) (x, y, z)."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:30, :60, :70]
    values = rng.normal(40.0, 5.0, size=(30, 60, 70))
    values[((x - 35) / 12.0) ** 2 + ((y - 30) / 10.0) ** 2 + ((z - 15) / 5.0) ** 2 < 1] += 200.0
    image = sitk.GetImageFromArray((values * scale).astype(dtype))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(DIRECTION)
    return image


def _write(image: sitk.Image, path: Path) -> Path:
    sitk.WriteImage(image, str(path))
    return path


def _run(argv: list) -> int:
    return main([str(a) for a in argv])


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    """Files in ``folder`` other than ``keep`` (a temporary file left behind would be one)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# -- images ----------------------------------------------------------------------------------


def _nan_nifti(tmp: Path) -> Path:
    values = sitk.GetArrayFromImage(_phantom())
    values[3, 4, 5] = np.nan
    values[6, 7, 8] = np.inf
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(_phantom())
    return _write(image, tmp / "nan.nii")  # SimpleITK reads these voxels back as 0


def _inf_nrrd(tmp: Path) -> Path:
    values = sitk.GetArrayFromImage(_phantom())
    values[3, 4, 5] = -np.inf
    image = sitk.GetImageFromArray(values)
    image.CopyInformation(_phantom())
    return _write(image, tmp / "inf.nrrd")


def _bit_flipped_gz(tmp: Path) -> Path:
    data = bytearray(_write(_phantom(), tmp / "good.nii.gz").read_bytes())
    data[len(data) // 2] ^= 0x04  # one bit, in the middle of the deflate stream
    path = tmp / "flipped.nii.gz"
    path.write_bytes(bytes(data))
    return path


def _bad_magic(tmp: Path) -> Path:
    data = bytearray(_write(_phantom(), tmp / "good.nii").read_bytes())
    data[344:348] = b"n+9\x00"  # SimpleITK would read it as Analyze 7.5, dropping the orientation
    path = tmp / "magic.nii"
    path.write_bytes(bytes(data))
    return path


def _truncated_gz(tmp: Path) -> Path:
    data = _write(_phantom(), tmp / "good.nii.gz").read_bytes()
    path = tmp / "cut.nii.gz"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def _five_d(tmp: Path) -> Path:
    values = np.zeros((2, 3, 8, 9, 10), dtype=np.float32)
    return _write(sitk.GetImageFromArray(values, isVector=False), tmp / "five.nii.gz")


def _float64_huge(tmp: Path) -> Path:
    return _write(_phantom(scale=1e300, dtype=np.float64), tmp / "huge.nrrd")


def _origin_far(tmp: Path) -> Path:
    return _write(_phantom(origin=(1e30, 0.0, 0.0)), tmp / "far.nrrd")


def _spacing_tiny(tmp: Path) -> Path:
    return _write(_phantom(spacing=(1e-6, 1e-6, 1e-6)), tmp / "tiny.nrrd")


def _dicom_series(folder: Path, drop: tuple[int, ...] = (), count: int = 30, step: float = 2.5) -> Path:
    """An oblique DICOM series of ``count`` slices ``step`` mm apart, without the slices in ``drop``."""
    folder.mkdir()
    rotation = np.reshape(DIRECTION, (3, 3))
    row, col, normal = rotation[:, 0], rotation[:, 1], rotation[:, 2]
    rng = np.random.default_rng(1)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(count):
        if k in drop:
            continue
        origin = np.array([5.0, -7.0, 11.0]) + k * step * normal
        slice_ = sitk.GetImageFromArray(rng.normal(100, 10, (1, 24, 20)).astype(np.int16))
        slice_.SetSpacing((0.8, 0.7, step))
        slice_.SetOrigin(origin.tolist())
        slice_.SetDirection(rotation.ravel().tolist())
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1.2",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in origin),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*row, *col)),
            "0028|0030": "0.7\\0.8",
        }
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(slice_)
    return folder


def _dicom_gap(tmp: Path) -> Path:
    return _dicom_series(tmp / "gap", drop=(11, 12, 13))


#: (case id, file builder, words the message must hold: what is wrong, what to do).
BAD_IMAGES = [
    ("nan-voxels-nifti", _nan_nifti, ("2 NaN/inf voxel", "replace them")),
    ("inf-voxel-nrrd", _inf_nrrd, ("1 NaN/inf voxel", "replace them")),
    ("bit-flipped-gz", _bit_flipped_gz, ("compressed data is corrupt", "copy or export it again")),
    ("bad-magic-read-as-analyze", _bad_magic, ("magic number", "Analyze", "copy the file again")),
    ("truncated-gz", _truncated_gz, ("truncated", "copy or export it again")),
    ("five-d", _five_d, ("is 5D", "extract one time point")),
    ("float64-1e300", _float64_huge, ("beyond", "32-bit floats", "rescale the intensities")),
    ("origin-1e30", _origin_far, ("1e+30 mm from the origin", "set the origin")),
    ("spacing-1e-6", _spacing_tiny, ("voxel spacing of [1e-06", "Set the spacing in mm")),
    ("dicom-missing-slices", _dicom_gap, ("not evenly spaced", "10 mm between slices", "3 slice(s) missing", "Copy the complete series")),
]


@pytest.mark.parametrize(("builder", "words"), [c[1:] for c in BAD_IMAGES], ids=[c[0] for c in BAD_IMAGES])
def test_bad_image_is_refused_by_the_reader(tmp_path, builder, words) -> None:
    path = builder(tmp_path)
    with pytest.raises(ImageError) as caught:
        read_image(path)
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(("builder", "words"), [c[1:] for c in BAD_IMAGES], ids=[c[0] for c in BAD_IMAGES])
def test_bad_image_costs_the_user_nothing(tmp_path, capsys, builder, words) -> None:
    """``sammed3d segment`` exits 2 with the message, the earlier --out and --preview stay as they were."""
    path = builder(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    out, preview = results / "mask.seg.nrrd", results / "mask.png"
    out.write_bytes(BEFORE)
    preview.write_bytes(BEFORE)
    code = _run(["segment", path, "--ijk", "--point", "5,5,5", "--out", out, "--preview", preview, "--model", "default"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("sammed3d segment: error: ") and "Traceback" not in err
    assert words[0] in err
    assert out.read_bytes() == BEFORE and preview.read_bytes() == BEFORE
    assert _leftovers(results, {"mask.seg.nrrd", "mask.png"}) == []


def test_uncompressed_nifti_named_gz_is_read_as_it_is(tmp_path) -> None:
    """SimpleITK reads it; it used to be called corrupt."""
    image = _phantom()
    plain = _write(image, tmp_path / "plain.nii")
    named = tmp_path / "plain_but_named.nii.gz"
    named.write_bytes(plain.read_bytes())
    assert not named.read_bytes().startswith(b"\x1f\x8b")
    back = read_image(named)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-6)


def test_gzip_damage_anywhere_in_the_data_is_found(tmp_path) -> None:
    """20 single-bit flips at random places of a .nii.gz: every one is refused (zlib's CRC-32 and length)."""
    data = _write(_phantom(), tmp_path / "good.nii.gz").read_bytes()
    rng = np.random.default_rng(3)
    for trial in range(20):
        damaged = bytearray(data)
        damaged[int(rng.integers(20, len(data) - 8))] ^= 1 << int(rng.integers(8))
        path = tmp_path / f"flip{trial}.nii.gz"
        path.write_bytes(bytes(damaged))
        with pytest.raises(ImageError, match="corrupt|header"):
            read_image(path)


def test_complete_oblique_dicom_series_is_read_with_its_spacing(tmp_path) -> None:
    image = read_image(_dicom_series(tmp_path / "full"))
    assert image.GetSize() == (20, 24, 30)
    np.testing.assert_allclose(image.GetSpacing(), (0.8, 0.7, 2.5), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), DIRECTION, atol=1e-5)


def test_trailing_axes_of_size_one_are_dropped(tmp_path) -> None:
    """A 5D file holding one volume (x, y, z, 1, 1) is that volume."""
    values = np.arange(8 * 9 * 10, dtype=np.float32).reshape(1, 1, 8, 9, 10)
    image = validate_image(sitk.GetImageFromArray(values, isVector=False))
    assert image.GetSize() == (10, 9, 8)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), values[0, 0])


# -- intensities the normalisation used to overflow -------------------------------------------


def _whole_phantom() -> sitk.Image:
    """The phantom rounded to whole numbers, so that a scaled copy holds exactly the scaled values."""
    return sitk.Cast(sitk.Cast(_phantom(), sitk.sitkInt16), sitk.sitkFloat32)


def _scaled(tmp: Path, scale: float) -> Path:
    return _write(_whole_phantom() * scale, tmp / f"scaled{scale:g}.nrrd")


def _scl_slope_nifti(tmp: Path, slope: float) -> Path:
    """An int16 NIfTI whose header scales every voxel by ``slope`` (SimpleITK applies it)."""
    data = bytearray(_write(sitk.Cast(_phantom(), sitk.sitkInt16), tmp / "int16.nii").read_bytes())
    struct.pack_into("<2f", data, 112, slope, 0.0)
    path = tmp / f"slope{slope:g}.nii"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda tmp: _scaled(tmp, 1e30), id="intensities-1e30"),
        pytest.param(lambda tmp: _scaled(tmp, 1e-30), id="intensities-1e-30"),
        pytest.param(lambda tmp: _scl_slope_nifti(tmp, 1e30), id="scl_slope-1e30"),
    ],
)
def test_extreme_intensities_give_the_mask_of_ordinary_ones(tmp_path, make) -> None:
    """The z-score is scale-free, so the shipped model must give the same mask at any intensity scale.

    In float32, ``x * x`` overflowed to inf near 1e30 (and underflowed to 0 near 1e-30): the
    window was left unnormalised and the mask came out empty.
    """
    reference = tmp_path / "reference.nii.gz"
    ordinary = _write(_whole_phantom(), tmp_path / "ordinary.nrrd")
    assert _run(["segment", ordinary, "--ijk", "--point", "35,30,15", "--out", reference, "--model", "default"]) == 0
    out = tmp_path / "extreme.nii.gz"
    assert _run(["segment", make(tmp_path), "--ijk", "--point", "35,30,15", "--out", out, "--model", "default"]) == 0
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(reference)))
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    assert expected.sum() > 500  # the model finds the ellipsoid (about 2,500 voxels)
    assert np.count_nonzero(got != expected) <= 0.002 * expected.sum()  # float32 rounding of the scaled values


# -- clicks and options -----------------------------------------------------------------------


def test_negative_before_positive_runs_the_positive_first(tmp_path, caplog) -> None:
    """``--negative A --point B`` on a new object is ``--point B --negative A``, not an error."""
    caplog.set_level(logging.INFO)
    image = _write(_phantom(), tmp_path / "ct.nii.gz")
    masks = []
    for order in (["--negative", "10,10,5", "--point", "35,30,15"], ["--point", "35,30,15", "--negative", "10,10,5"]):
        out = tmp_path / f"m{len(masks)}.nii.gz"
        assert _run(["segment", image, "--ijk", *order, "--out", out, "--model", "default"]) == 0
        masks.append(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))
    np.testing.assert_array_equal(masks[0], masks[1])
    assert masks[0].sum() > 500
    assert "the first --point runs first" in caplog.text


#: (case id, options, words of the message); each is refused before the image or the model is read.
BAD_OPTIONS = [
    ("threads-negative", ["--threads", "-1"], ("--threads", "at least 1")),
    ("threads-zero", ["--threads", "0"], ("--threads", "at least 1")),
    ("threads-word", ["--threads", "many"], ("--threads", "at least 1")),
    ("window-spacing-zero", ["--window-spacing", "0"], ("--window-spacing", "above 0")),
    ("window-spacing-word", ["--window-spacing", "fine"], ("--window-spacing", "above 0")),
    ("only-negative-clicks", ["--negative", "3,3,3"], ("at least one positive click", "--point")),
    ("out-name-too-long", ["--out", "m" * 300 + ".nii.gz"], ("307 bytes long", "choose a shorter name")),
    ("preview-name-too-long", ["--preview", "p" * 260 + ".png"], ("264 bytes long", "choose a shorter name")),
]


@pytest.mark.parametrize(("options", "words"), [c[1:] for c in BAD_OPTIONS], ids=[c[0] for c in BAD_OPTIONS])
def test_bad_option_is_one_line_before_any_work(tmp_path, monkeypatch, capsys, options, words) -> None:
    monkeypatch.chdir(tmp_path)
    image = _write(_phantom(), tmp_path / "ct.nii.gz")
    argv = ["segment", image, "--ijk", "--model", tmp_path / "no-such-model.pth"]  # reading the model would fail: it must not get there
    argv += [] if any(o in options for o in ("--point", "--negative")) else ["--point", "35,30,15"]
    argv += [] if "--out" in options else ["--out", tmp_path / "mask.nii.gz"]
    try:
        code = _run(argv + options)
    except SystemExit as exc:  # argparse: usage line and exit 2
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    for word in words:
        assert word in err
    assert "no-such-model" not in err
    assert _leftovers(tmp_path, {"ct.nii.gz"}) == []


def test_longest_legal_output_name_is_written(tmp_path) -> None:
    """A 245-byte name is legal; its temporary file used to get a name longer than the 255 allowed."""
    image = _write(_phantom(), tmp_path / "ct.nii.gz")
    out = tmp_path / ("m" * 238 + ".nii.gz")
    preview = tmp_path / ("p" * 251 + ".png")
    assert _run(["segment", image, "--ijk", "--point", "35,30,15", "--out", out, "--preview", preview, "--model", "default"]) == 0
    assert sitk.ReadImage(str(out)).GetSize() == (70, 60, 30)
    assert _leftovers(tmp_path, {"ct.nii.gz", out.name, preview.name}) == []


def test_input_name_too_long_is_a_clear_error(tmp_path, capsys) -> None:
    code = _run(["segment", tmp_path / ("x" * 300 + ".nii.gz"), "--point", "1,2,3", "--out", tmp_path / "m.nii.gz"])
    assert code == 2
    assert "File name too long; check the path" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/sys is Linux's")
def test_output_folder_that_refuses_new_files_is_found_first(tmp_path, capsys) -> None:
    """Root passes ``os.access`` on /sys, yet no file can be created there: a probe file finds out."""
    image = _write(_phantom(), tmp_path / "ct.nii.gz")
    code = _run(["segment", image, "--ijk", "--point", "35,30,15", "--out", "/sys/mask.nii.gz", "--model", tmp_path / "absent.pth"])
    err = capsys.readouterr().err
    assert code == 2 and "folder '/sys' is not writable" in err and "absent.pth" not in err


# -- evaluate -----------------------------------------------------------------------------------


def _case(root: Path, name: str, label_values: np.ndarray) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    image = _write(_phantom(), folder / "image.nii.gz")
    label = sitk.GetImageFromArray(label_values)
    label.CopyInformation(sitk.ReadImage(str(image)))
    _write(label, folder / "label.nii.gz")
    (folder / "labels.json").write_text(json.dumps({"labels": {"1": "ellipsoid"}}), encoding="utf-8")
    return folder


def _ellipsoid() -> np.ndarray:
    return (sitk.GetArrayFromImage(_phantom()) > 150).astype(np.uint8)


#: (case id, label values written, extra options, words of the message).
ALL_SKIPPED = [
    ("label-absent", lambda: np.zeros((30, 60, 70), np.uint8), [], ("absent from label.nii.gz",)),
    ("float-label-map", lambda: _ellipsoid().astype(np.float32) * 1.5, [], ("absent from label.nii.gz", "whole numbers")),
    ("min-voxels-too-high", _ellipsoid, ["--min-voxels", "100000"], ("fewer than 100000", "--min-voxels (now 100000)")),
]


@pytest.mark.parametrize(("labels", "options", "words"), [c[1:] for c in ALL_SKIPPED], ids=[c[0] for c in ALL_SKIPPED])
def test_evaluate_with_every_structure_skipped_says_why_and_writes_nothing(tmp_path, capsys, labels, options, words) -> None:
    data = tmp_path / "data"
    _case(data, "case1", labels())
    out = tmp_path / "results" / "res.csv"
    code = _run(["evaluate", data, "--clicks", "1", "--out", out, "--model", "default", *options])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "no structure was evaluated: all 1 were skipped (case1/1 ellipsoid: " in err and "Nothing was written" in err
    for word in words:
        assert word in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("damage", "words"),
    [
        pytest.param(lambda data: data[: len(data) // 2], ("truncated", "copy or export it again"), id="truncated-image"),
        pytest.param(lambda data: data[:100] + bytes([data[100] ^ 8]) + data[101:], ("corrupt",), id="bit-flipped-image"),
    ],
)
def test_evaluate_checks_case_images_as_segment_does(tmp_path, capsys, damage, words) -> None:
    data = tmp_path / "data"
    folder = _case(data, "case1", _ellipsoid())
    (folder / "image.nii.gz").write_bytes(damage((folder / "image.nii.gz").read_bytes()))
    code = _run(["evaluate", data, "--clicks", "1", "--out", tmp_path / "res.csv", "--model", "default"])
    err = capsys.readouterr().err
    assert code == 2 and "case case1" in err
    for word in words:
        assert word in err
    assert not (tmp_path / "res.csv").exists()


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        pytest.param("--out", "folder", ("it is a folder", "give a file name inside it"), id="out-is-a-folder"),
        pytest.param("--plot", "curve.txt", ("--plot", "use .png"), id="plot-not-png"),
        pytest.param("--out", "/sys/res.csv", ("not writable",), id="out-folder-refuses-files", marks=pytest.mark.skipif(
            not sys.platform.startswith("linux"), reason="/sys is Linux's")),
    ],
)
def test_evaluate_outputs_are_refused_before_the_run(tmp_path, capsys, option, value, words) -> None:
    data = tmp_path / "data"
    _case(data, "case1", _ellipsoid())
    (tmp_path / "folder").mkdir()
    argv = ["evaluate", data, "--clicks", "1", "--model", tmp_path / "absent.pth"]  # the run would fail on the model
    argv += ["--out", tmp_path / "res.csv"] if option != "--out" else []
    target = value if os.path.isabs(value) else tmp_path / value
    code = _run(argv + [option, target])
    err = capsys.readouterr().err
    assert code == 2 and "absent.pth" not in err
    for word in words:
        assert word in err
