"""The `sammed3d segment` and `sammed3d demo` commands, end to end on real files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from SAMMed3DLib.cli import main
from SAMMed3DLib.geometry import lps_to_ras


def _run(argv: list[str]) -> int:
    return main([str(a) for a in argv])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".seg.nrrd", ".mha"])
def test_segment_writes_a_mask_on_the_input_grid(tmp_path, ct_file, small_model_path, suffix) -> None:
    out = tmp_path / f"mask{suffix}"
    preview = tmp_path / "preview.png"
    code = _run(["segment", ct_file, "--ijk", "--point", "35,30,15", "--negative", "30,25,14",
                 "--model", small_model_path, "--out", out, "--preview", preview, "--threads", "1"])
    assert code == 0
    mask = sitk.ReadImage(str(out))
    image = sitk.ReadImage(str(ct_file))
    assert mask.GetSize() == image.GetSize()
    np.testing.assert_allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(mask.GetDirection(), image.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayFromImage(mask))) <= {0, 1}
    assert preview.stat().st_size > 1000


def test_segment_point_frames_agree(tmp_path, ct_file, small_model_path) -> None:
    image = sitk.ReadImage(str(ct_file))
    index = (35.0, 30.0, 15.0)
    lps = np.array(image.TransformContinuousIndexToPhysicalPoint(index))
    ras = lps_to_ras(lps)
    masks = []
    for frame, point in (("--ijk", index), (None, lps), ("--ras", ras)):
        out = tmp_path / f"m{len(masks)}.nii.gz"
        argv = ["segment", ct_file, "--point", ",".join(f"{v:.6f}" for v in point), "--model", small_model_path, "--out", out]
        argv += [frame] if frame else []
        assert _run(argv) == 0
        masks.append(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))
    assert np.array_equal(masks[0], masks[1]) and np.array_equal(masks[0], masks[2])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--negative", "30,25,14"], "at least one positive click"),
        (["--point", "500,30,15"], "outside the image"),
        ([], "at least one positive click"),
    ],
)
def test_segment_bad_input_is_one_clear_line(tmp_path, ct_file, small_model_path, capsys, args, message) -> None:
    out = tmp_path / "mask.nii.gz"
    code = _run(["segment", ct_file, "--ijk", *args, "--model", small_model_path, "--out", out])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_segment_unreadable_image(tmp_path, small_model_path, capsys) -> None:
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not an image")
    code = _run(["segment", bad, "--point", "1,2,3", "--model", small_model_path, "--out", tmp_path / "m.nii.gz"])
    assert code == 2
    assert "broken.nii.gz" in capsys.readouterr().err


def test_demo_runs_offline_and_writes_its_outputs(tmp_path, small_model_path, capsys) -> None:
    out = tmp_path / "demo"
    assert _run(["demo", "--model", small_model_path, "--out", out, "--clicks", "2", "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["clicks"]) in (1, 2)
    assert all(0.0 <= c["dice"] <= 1.0 for c in summary["clicks"])
    seg = sitk.ReadImage(str(out / f"{summary['structure']}.seg.nrrd"))
    assert seg.GetDimension() == 3
    assert (out / "preview.png").stat().st_size > 1000
    assert "Dice" in capsys.readouterr().out


def test_segment_with_a_finer_window_segments_in_windows_of_that_spacing(tmp_path, ct_file, small_model_path, monkeypatch) -> None:
    from SAMMed3DLib import session as session_module

    spacings = []
    real = session_module.Session.predict

    def recording(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        result = real(self, *args, **kwargs)
        spacings.extend(w.spacing_mm for w in result.windows)
        return result

    monkeypatch.setattr(session_module.Session, "predict", recording)
    out = tmp_path / "mask.nii.gz"
    assert _run(["segment", ct_file, "--ijk", "--point", "35,30,15", "--model", small_model_path, "--out", out,
                 "--window-spacing", "0.75", "--threads", "1"]) == 0
    assert spacings and all(s == 0.75 for s in spacings)
