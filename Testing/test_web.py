"""``sammed3d web`` without a browser: imports, the extra, binding, the scene, saving and the editor.

The scene, saving and editor tests run on real MRML scenes from slicer-core (no trame needed)
with the project's stand-in models (``InteractiveSegmentationLogic.testing``); the browser loop
itself is in ``test_web_e2e.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SAMMed3D"))

from SAMMed3DLib import web as web_package  # noqa: E402
from SAMMed3DLib.errors import ConfigError, ImageError, OutputConflictError, OutputError  # noqa: E402
from SAMMed3DLib.web import server  # noqa: E402

WEB_MODULES = ["SAMMed3DLib.web", *(f"SAMMed3DLib.web.{m}" for m in ("app", "editing", "saving", "scene", "server", "ui")), "SAMMed3DLib.cli.web"]


def _cli(*args: str, env: dict | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess:
    code = "import sys; from SAMMed3DLib.cli import main; sys.argv[0] = 'sammed3d'; sys.exit(main())"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "SAMMed3D")]), **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout, env=environment)


# -- no extra, no trame at import, binding ----------------------------------------------------------


def test_the_web_modules_import_without_trame_slicer_or_vtk() -> None:
    code = (
        f"import sys; sys.path[:0] = [{str(ROOT)!r}]\n"
        f"for name in {WEB_MODULES!r}: __import__(name)\n"
        "print(sorted(m for m in ('trame', 'trame_slicer', 'slicer', 'vtk', 'vtkmodules', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_without_the_web_extra_the_command_says_which_pip_command_installs_it(monkeypatch, capsys, tmp_path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("trame_slicer", "trame") else real(name, *a))
    message = web_package.missing_web_extra()
    assert message and 'pip install -e ".[web]"' in message and "trame-slicer[standalone]" in message
    from SAMMed3DLib.cli import main

    image = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkFloat32), str(image))
    assert main(["web", str(image)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sammed3d web: error:") and 'pip install -e ".[web]"' in err and "Traceback" not in err


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_hosts_serve_without_a_warning(host: str) -> None:
    assert server.is_loopback(host) and server.check_host(host, allow_remote=False) is None


def test_serving_beyond_loopback_needs_allow_remote_and_prints_a_warning() -> None:
    for host in ("0.0.0.0", "192.0.2.10", "my-workstation"):
        with pytest.raises(ConfigError, match="--allow-remote") as info:
            server.check_host(host, allow_remote=False)
        assert "ssh -L" in str(info.value) and "authentication" in str(info.value)
        warning = server.check_host(host, allow_remote=True)
        assert warning and warning.startswith("WARNING") and "without authentication" in warning
    out = _cli("web", "--host", "0.0.0.0", timeout=60)
    assert out.returncode == 2 and "--allow-remote" in out.stderr and "Traceback" not in out.stderr


def test_the_command_refuses_a_bad_port_and_image_with_sample() -> None:
    out = _cli("web", "--port", "70000", timeout=60)
    assert out.returncode == 2 and "--port" in out.stderr
    out = _cli("web", "x.nii.gz", "--sample", timeout=60)
    assert out.returncode == 2 and "not both" in out.stderr


def test_the_logic_is_found_in_a_source_checkout_and_a_wheel_says_what_to_do(monkeypatch, tmp_path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "InteractiveSegmentationLogic" else real(name, *a))
    saved = list(sys.path)
    try:
        assert web_package.add_logic_to_path() == ROOT / "SAMMed3D"
        assert sys.path[0] == str(ROOT / "SAMMed3D")
        monkeypatch.setattr(web_package, "logic_folder_candidates", lambda: [tmp_path / "site-packages"])
        with pytest.raises(ConfigError, match="source checkout"):
            web_package.add_logic_to_path()
    finally:
        sys.path[:] = saved


def test_egl_is_chosen_unless_the_user_chose_a_window(monkeypatch) -> None:
    monkeypatch.delenv("VTK_DEFAULT_OPENGL_WINDOW", raising=False)
    web_package.use_egl_rendering()
    assert os.environ["VTK_DEFAULT_OPENGL_WINDOW"] == "vtkEGLRenderWindow"
    monkeypatch.setenv("VTK_DEFAULT_OPENGL_WINDOW", "vtkXOpenGLRenderWindow")
    web_package.use_egl_rendering()
    assert os.environ["VTK_DEFAULT_OPENGL_WINDOW"] == "vtkXOpenGLRenderWindow"


# -- scene, saving and editor on real MRML ----------------------------------------------------------

slicer_needed = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("slicer") is None, reason="slicer-core provides MRML outside Slicer (pip install slicer-core)"
)



def _oblique_image() -> sitk.Image:
    """An oblique anisotropic CT-like volume: a bright sphere (r 10 mm) at voxel (30, 28, 10) and a bar."""
    rng = np.random.default_rng(1)
    z, y, x = np.mgrid[0:24, 0:64, 0:72]
    spacing = (0.9, 0.8, 2.5)
    sphere = ((x - 30) * spacing[0]) ** 2 + ((y - 28) * spacing[1]) ** 2 + ((z - 10) * spacing[2]) ** 2 < 10.0**2
    array = rng.normal(100.0, 15.0, (24, 64, 72)).astype(np.float32)
    array[sphere] += 900.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetDirection(sitk.VersorTransform((1.0, 0.2, 0.1), 0.3).GetMatrix())
    return image


def test_a_volume_from_a_file_keeps_its_geometry_and_voxels_in_mrml(scene) -> None:
    from InteractiveSegmentationLogic.mrml_geometry import volume_to_image

    from SAMMed3DLib.geometry import ImageGeometry
    from SAMMed3DLib.web import scene as web_scene

    image = _oblique_image()
    node = web_scene.add_volume(scene, image, "ct")
    back, geometry = volume_to_image(node)
    expected = ImageGeometry.from_image(image)
    assert geometry.size_xyz == expected.size_xyz
    np.testing.assert_allclose(geometry.ijk_to_lps, expected.ijk_to_lps, atol=1e-9)
    assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    assert web_scene.volume_name("/data/case 1.nii.gz") == "case 1" and web_scene.volume_name("dicom") == "dicom"


def test_a_label_image_and_a_seg_nrrd_load_as_starting_segments(scene, tmp_path) -> None:
    from SAMMed3DLib.io import write_segmentation
    from SAMMed3DLib.web import scene as web_scene

    image = _oblique_image()
    volume = web_scene.add_volume(scene, image, "ct")
    labels = np.zeros(sitk.GetArrayFromImage(image).shape, dtype=np.uint8)
    labels[5:12, 20:30, 25:35] = 1
    labels[15:20, 40:50, 50:60] = 2
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(image)
    path = tmp_path / "labels.nii.gz"
    sitk.WriteImage(label_image, str(path))
    node, ids = web_scene.load_segmentation(scene, path, volume)
    assert len(ids) == 2
    assert sorted(web_scene.segment_voxels(node, i, volume) for i in ids) == sorted([int((labels == 1).sum()), int((labels == 2).sum())])
    seg_path = tmp_path / "liver.seg.nrrd"
    write_segmentation(sitk.Cast(label_image == 1, sitk.sitkUInt8), seg_path, segment_name="liver")
    node, ids = web_scene.load_segmentation(scene, seg_path, volume)
    assert [web_scene.segment_name(node, i) for i in ids] == ["liver"]
    assert web_scene.segment_voxels(node, ids[0], volume) == int((labels == 1).sum())
    empty = tmp_path / "empty.nii.gz"
    sitk.WriteImage(sitk.Cast(label_image * 0, sitk.sitkUInt8), str(empty))
    with pytest.raises(ImageError, match="no segment"):
        web_scene.load_segmentation(scene, empty, volume)
    with pytest.raises(ImageError, match="does not exist"):
        web_scene.load_segmentation(scene, tmp_path / "missing.seg.nrrd", volume)


def test_window_presets_set_ct_values_and_mr_percentiles(scene) -> None:
    from SAMMed3DLib.web import scene as web_scene

    volume = web_scene.add_volume(scene, _oblique_image(), "ct")
    assert web_scene.apply_window_preset(volume, "CT bone") == (1000.0, 400.0)
    display = volume.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel()) == (1000.0, 400.0) and not display.GetAutoWindowLevel()
    window, level = web_scene.apply_window_preset(volume, "MR (1-99 %)")
    values = sitk.GetArrayFromImage(_oblique_image())
    low, high = np.percentile(values[values > values.min()], (1, 99))
    assert window == pytest.approx(high - low) and level == pytest.approx((low + high) / 2)
    assert web_scene.apply_window_preset(volume, "Auto") is None and display.GetAutoWindowLevel()
    with pytest.raises(ImageError, match="unknown window"):
        web_scene.apply_window_preset(volume, "CT liver+")


def _editor(scene, model):
    from InteractiveSegmentationLogic import InteractiveSegmentationLogic

    from SAMMed3DLib.web import scene as web_scene
    from SAMMed3DLib.web.editing import Editor

    volume = web_scene.add_volume(scene, _oblique_image(), "ct")
    placed = []
    editor = Editor(scene, lambda node, persistent: placed.append(node), InteractiveSegmentationLogic(model=model, device="cpu", autoExtend=False))
    editor.set_volume(volume)
    return editor, volume, placed


def _sphere_centre_ras(volume) -> list[float]:
    from InteractiveSegmentationLogic.mrml_geometry import volume_ijk_to_world_ras

    return list((volume_ijk_to_world_ras(volume) @ np.array([30.0, 28.0, 10.0, 1.0]))[:3])


def test_clicks_made_while_an_update_runs_cost_one_more_update_with_all_the_points(scene) -> None:
    from InteractiveSegmentationLogic.testing import bright_spot_model, segment_on_volume

    editor, volume, placed = _editor(scene, bright_spot_model())
    positive, negative = editor.points_nodes()
    assert placed[-1] is positive, "+ points are placed first"
    runs = []
    compute = editor.logic.compute

    def slow_compute(request, *args, **kwargs):
        runs.append(len(request.positiveLps))
        time.sleep(0.3)  # a model that takes its time: the clicks below arrive meanwhile
        return compute(request, *args, **kwargs)

    editor.logic.compute = slow_compute
    centre = _sphere_centre_ras(volume)

    async def click_three_times() -> None:
        positive.AddControlPoint(*centre)  # the point-defined event starts an update
        assert editor.busy
        await asyncio.sleep(0.05)
        positive.AddControlPoint(centre[0] + 2.0, centre[1], centre[2])
        positive.AddControlPoint(centre[0], centre[1] + 2.0, centre[2])
        await editor.wait_idle()

    asyncio.run(click_three_times())
    assert runs == [1, 3], "the first update ran with one point, then one more with all three"
    assert editor.info.steps == 2 and not editor.info.busy
    assert editor.info.voxels == int(segment_on_volume(editor.segmentation, editor.segment_id, volume).sum()) > 0
    assert "voxels=" in editor.info.text() and "points +3 −0" in editor.info.text()
    editor.close()


def test_a_failed_update_is_reported_and_the_next_click_works(scene) -> None:
    from InteractiveSegmentationLogic.testing import bright_spot_model

    editor, volume, _ = _editor(scene, bright_spot_model())
    positive, _ = editor.points_nodes()

    async def clicks() -> None:
        positive.AddControlPoint(500.0, 500.0, 500.0)  # outside the image
        await editor.wait_idle()
        assert editor.info.message.startswith("error:") and editor.info.voxels == 0
        positive.RemoveAllControlPoints()
        positive.AddControlPoint(*_sphere_centre_ras(volume))
        await editor.wait_idle()

    asyncio.run(clicks())
    assert editor.info.voxels > 0 and editor.info.steps == 1 and not editor.info.message.startswith("error")
    editor.close()


def test_undo_waits_for_no_update_and_refuses_while_one_runs(scene) -> None:
    from InteractiveSegmentationLogic.testing import click_following_model

    editor, volume, placed = _editor(scene, click_following_model())
    positive, negative = editor.points_nodes()

    async def session() -> None:
        positive.AddControlPoint(*_sphere_centre_ras(volume))
        assert editor.busy and not editor.undo() and "running" in editor.info.message
        await editor.wait_idle()
        first = editor.info.voxels
        editor.toggle_sign()
        assert placed[-1] is negative
        centre = _sphere_centre_ras(volume)
        negative.AddControlPoint(centre[0] + 6.0, centre[1], centre[2])
        await editor.wait_idle()
        assert 0 < editor.info.voxels < first
        assert editor.undo() and editor.info.voxels == first and negative.GetNumberOfControlPoints() == 0
        assert editor.redo() and editor.info.voxels < first and negative.GetNumberOfControlPoints() == 1
        assert editor.reset() and editor.info.voxels == 0 and positive.GetNumberOfControlPoints() == 0

    asyncio.run(session())
    editor.close()


def test_segments_each_keep_their_own_clicks(scene) -> None:
    from InteractiveSegmentationLogic.testing import bright_spot_model

    editor, volume, placed = _editor(scene, bright_spot_model())
    first = editor.segment_id
    assert editor.segments() == [{"id": first, "name": "Segment_1", "color": "#e66633"}]
    first_positive, _ = editor.points_nodes()

    async def session() -> None:
        first_positive.AddControlPoint(*_sphere_centre_ras(volume))
        await editor.wait_idle()
        second = editor.add_segment("kidney")
        assert editor.segment_id == second and [s["name"] for s in editor.segments()][1] == "kidney"
        second_positive, _ = editor.points_nodes()
        assert placed[-1] is second_positive and second_positive is not first_positive
        assert editor.info.voxels == 0 and editor.voxels(first) > 0
        first_positive.AddControlPoint(0.0, 0.0, 0.0)  # a click on another segment's node runs nothing
        assert not editor.busy

    asyncio.run(session())
    editor.close()


def _saved_case(scene):
    from InteractiveSegmentationLogic.testing import bright_spot_model

    editor, volume, _ = _editor(scene, bright_spot_model())
    positive, _ = editor.points_nodes()
    centre = _sphere_centre_ras(volume)

    async def session() -> None:
        positive.AddControlPoint(*centre)
        await editor.wait_idle()
        editor.add_segment("empty one")

    asyncio.run(session())
    nodes = {i: editor.points_nodes(i) for i in (s["id"] for s in editor.segments())}
    return editor, volume, nodes


def test_save_writes_every_segment_and_click_that_load_back(scene, tmp_path) -> None:
    slicer = pytest.importorskip("slicer")
    from InteractiveSegmentationLogic.testing import segment_on_volume

    from SAMMed3DLib.web import saving

    editor, volume, nodes = _saved_case(scene)
    first, second = (s["id"] for s in editor.segments())
    written = saving.save(tmp_path / "out", "case", volume, editor.segmentation, nodes)
    names = sorted(p.name for p in written)
    assert names == sorted(["case.seg.nrrd", "case.nii.gz", "case.labels.json", "case.Segment_1.positive.mrk.json"])
    expected = segment_on_volume(editor.segmentation, first, volume)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "case.nii.gz")))
    assert np.array_equal(labels == 1, expected) and not (labels == 2).any()
    table = json.loads((tmp_path / "out" / "case.labels.json").read_text(encoding="utf-8"))["labels"]
    assert [(e["label"], e["id"], e["name"]) for e in table] == [(1, first, "Segment_1"), (2, second, "empty one")]
    other = slicer.vtkMRMLScene()
    node = other.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(tmp_path / "out" / "case.seg.nrrd"))
    assert storage.ReadData(node) and node.GetSegmentation().GetNumberOfSegments() == 2
    assert np.array_equal(segment_on_volume(node, first, volume), expected)
    assert node.GetSegmentation().GetSegment(second).GetName() == "empty one"


def test_save_is_all_or_nothing_and_never_overwrites_an_input(scene, tmp_path, monkeypatch) -> None:
    from SAMMed3DLib.web import saving

    editor, volume, nodes = _saved_case(scene)
    out = tmp_path / "out"
    saving.save(out, "case", volume, editor.segmentation, nodes)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    positive, _ = nodes[editor.segments()[0]["id"]]
    positive.AddControlPoint(1.0, 2.0, 3.0)
    monkeypatch.setattr(saving, "_points_difference", lambda path, node: "the points read back differ")
    with pytest.raises(OutputError, match="read back differ"):
        saving.save(out, "case", volume, editor.segmentation, nodes)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before, "nothing was replaced, no temporary file is left"
    with pytest.raises(OutputConflictError):
        saving.save(out, "case", volume, editor.segmentation, nodes, inputs=[("the input segmentation", out / "case.seg.nrrd")])
    with pytest.raises(OutputError, match="plain name"):
        saving.save(out, "../case", volume, editor.segmentation, nodes)
    assert saving.safe_name("../../etc/passwd") == "etc_passwd" and saving.safe_name("  ") == "segment"


def test_lock_other_segments_keeps_the_next_segment_off_the_first(scene) -> None:
    from InteractiveSegmentationLogic.testing import bright_spot_model, segment_on_volume

    editor, volume, _ = _editor(scene, bright_spot_model())
    first = editor.segment_id
    centre = _sphere_centre_ras(volume)

    async def session() -> None:
        editor.points_nodes()[0].AddControlPoint(*centre)
        await editor.wait_idle()
        editor.add_segment("second")
        editor.points_nodes()[0].AddControlPoint(*centre)
        await editor.wait_idle()
        sphere = segment_on_volume(editor.segmentation, first, volume)
        second = segment_on_volume(editor.segmentation, editor.segment_id, volume)
        assert sphere.sum() > 0 and (second & sphere).sum() == sphere.sum(), "unlocked, the second segment overlaps the first"
        assert editor.undo()
        editor.set_lock_others(True)
        editor.points_nodes()[0].AddControlPoint(*centre)
        await editor.wait_idle()
        second = segment_on_volume(editor.segmentation, editor.segment_id, volume)
        assert not (second & sphere).any(), "locked, the first segment's voxels stay out of the second"
        assert np.array_equal(segment_on_volume(editor.segmentation, first, volume), sphere)

    asyncio.run(session())
    editor.close()


def test_a_box_alone_segments_and_is_saved_with_the_clicks(scene, tmp_path) -> None:
    slicer = pytest.importorskip("slicer")
    from InteractiveSegmentationLogic.testing import bright_spot_model

    from SAMMed3DLib.web import saving

    editor, volume, placed = _editor(scene, bright_spot_model())
    editor.set_mode("box")
    box = editor.box_node()
    assert placed[-1] is box and not editor.has_box()
    centre = _sphere_centre_ras(volume)

    async def session() -> None:
        box.SetSize(30.0, 30.0, 30.0)
        box.SetCenter(*centre)  # the box is defined: an update runs, and + points follow
        await asyncio.sleep(0.01)
        await editor.wait_idle()

    asyncio.run(session())
    assert editor.has_box() and "· box" in editor.info.text() and editor.mode == "positive" and placed[-1] is editor.points_nodes()[0]
    assert editor.info.voxels > 0 and editor.info.steps == 1, editor.info.message
    written = saving.save(tmp_path, "boxed", volume, editor.segmentation, {editor.segment_id: editor.points_nodes()}, boxes={editor.segment_id: box})
    (box_file,) = [p for p in written if p.name.endswith(".box.mrk.json")]
    back = slicer.vtkMRMLScene().AddNewNodeByClass("vtkMRMLMarkupsROINode")
    reader = slicer.vtkMRMLMarkupsROIJsonStorageNode()  # Slicer's storage node for ROIs
    reader.SetFileName(str(box_file))
    assert reader.ReadData(back) and np.allclose(back.GetCenter(), centre, atol=1e-3) and np.allclose(back.GetSize(), 30.0)
    editor.clear_box()
    assert not editor.has_box() and editor.mode == "positive"
    editor.close()
