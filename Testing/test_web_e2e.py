"""``sammed3d web`` end to end: headless Chromium clicks in the page, the server's MRML scene is checked.

The app serves on 127.0.0.1 (a free port) from a thread of this process, so the tests read the
server's scene directly (on the server's event loop, :meth:`RunningApp.call`) with Slicer's own
export, independently of the code under test. The volume is generated: a bright sphere and a
bright bar beside it in noise, anisotropic (0.8 × 0.9 × 2.5 mm) and oblique; the model is the
bundled default one. A click's expected RAS comes from the view's own slice geometry (the slice
node's XY → RAS matrix and the size of the image the page shows).

Skips, each with its reason, only when the browser or EGL truly cannot start here (``.ci/run``
installs Debian's ``chromium`` and the EGL/Mesa libraries) or the web/test extras are missing.
Set ``SAMMED3D_UPDATE_SCREENSHOT=1`` to rewrite ``Resources/Screenshots/web.png`` (README) from
the page after a few clicks; otherwise the screenshot goes to the test's temporary folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "SAMMed3D"))

pytest.importorskip("trame_slicer", reason="the web extra is missing: pip install -e '.[test]' (or '.[web]')")
playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is part of the test extras: pip install -e '.[test]'")
slicer = pytest.importorskip("slicer", reason="slicer-core provides MRML outside Slicer")

from SAMMed3DLib.web.app import WebOptions  # noqa: E402
from SAMMed3DLib.web.server import start_in_thread  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "Resources" / "Screenshots" / "web.png"
SPACING = (0.8, 0.9, 2.5)
SHAPE_ZYX = (40, 96, 110)
#: The page's viewport: each view gets about 490 × 380 CSS pixels.
VIEWPORT = {"width": 1280, "height": 860}
UPDATE_TIMEOUT_MS = 45_000


def _egl_problem() -> str | None:
    """Why VTK cannot render offscreen through EGL here (None when it can), checked in a child process."""
    code = textwrap.dedent(
        """
        import os
        os.environ["VTK_DEFAULT_OPENGL_WINDOW"] = "vtkEGLRenderWindow"
        import vtk
        w = vtk.vtkRenderWindow(); w.SetOffScreenRendering(1); w.SetSize(8, 8)
        r = vtk.vtkRenderer(); w.AddRenderer(r); w.Render()
        print(w.GetClassName())
        """
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "an EGL render window did not render within 60 s"
    if out.returncode != 0 or "vtkEGLRenderWindow" not in out.stdout:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return f"VTK cannot render through EGL here ({tail}); install libegl1 libegl-mesa0 libgl1-mesa-dri (.ci/run does)"
    return None


def _phantom() -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """(image, sphere mask, bar mask): sphere r = 12 mm at the centre, a bar 16 mm in +j beside it."""
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0 : SHAPE_ZYX[0], 0 : SHAPE_ZYX[1], 0 : SHAPE_ZYX[2]]
    dx, dy, dz = (x - 55) * SPACING[0], (y - 48) * SPACING[1], (z - 20) * SPACING[2]
    sphere = dx**2 + dy**2 + dz**2 < 12.0**2
    bar = (np.abs(dy - 16) < 6) & (np.abs(dx) < 20) & (np.abs(dz) < 8)
    array = rng.normal(100.0, 20.0, SHAPE_ZYX).astype(np.float32)
    array[sphere | bar] += 600.0
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin((12.0, -30.0, 40.0))
    image.SetDirection(sitk.VersorTransform((0.2, 0.1, 1.0), 0.35).GetMatrix())
    return image, sphere, bar


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web")
    image, sphere, bar = _phantom()
    path = folder / "phantom.nii.gz"
    sitk.WriteImage(image, str(path))
    return {"folder": folder, "path": path, "image": image, "sphere": sphere, "bar": bar}


@pytest.fixture(scope="module")
def web(case):
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing: the e2e tests drive Debian's chromium (apt-get install chromium; .ci/run does)")
    problem = _egl_problem()
    if problem:
        pytest.skip(problem)
    running = start_in_thread(WebOptions(images=[str(case["path"])], model="default", device="cpu", out_dir=case["folder"] / "out"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser(web):
    with playwright_sync.sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        except Exception as exc:  # only a browser that cannot start skips; everything after it must work
            pytest.skip(f"headless chromium does not start here: {str(exc).splitlines()[0]}")
        yield chromium
        chromium.close()


@pytest.fixture
def page(web, browser, case):
    """A fresh page on the volume loaded anew (an empty segment, no clicks, no history), bundled model."""

    def fresh():
        if web.app.logic.modelSpec != "default":
            web.app.editor.set_model("default", "cpu")
        web.app.load_paths([str(case["path"])])

    web.call(fresh)
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(web.url)
    page.wait_for_selector("#sam-view-axial img", timeout=60_000)
    _wait_status(page, "voxels=0", "points +0 −0", "steps=0")
    yield page
    page.close()


# -- helpers ------------------------------------------------------------------------------------


def _until(condition, timeout: float = 15.0) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def _status(page) -> str:
    return page.inner_text("#sam-status")


def _wait_status(page, *fragments: str) -> str:
    condition = " && ".join(f"t.includes({f!r})" for f in fragments)
    script = f"(() => {{ const e = document.querySelector('#sam-status'); const t = e ? e.innerText : ''; return {condition}; }})()"
    try:
        page.wait_for_function(script, timeout=UPDATE_TIMEOUT_MS)
    except playwright_sync.TimeoutError:
        raise AssertionError(f"the status never showed {fragments}; it shows {_status(page)!r}") from None
    return _status(page)


def _voxels_in_status(text: str) -> int:
    return int(text.split("voxels=", 1)[1].split()[0])


def _steps(page) -> int:
    return int(_status(page).split("steps=", 1)[1].split()[0])


def _view_geometry(web, key: str = "axial") -> dict:
    """The slice node's XY → RAS matrix and the size of its render window (pixels)."""

    def read():
        node = web.app.views[key].get_view_node()
        matrix = node.GetXYToRAS()
        return {
            "xy_to_ras": np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)]),
            "dims": tuple(node.GetDimensions()[:2]),
            "fov": tuple(node.GetFieldOfView()[:2]),
            "offset": web.app.views[key].get_slice_value(),
        }

    return web.call(read)


def _image_box(page, key: str = "axial") -> dict:
    image = page.locator(f"#sam-view-{key} img").first
    image.wait_for(state="visible", timeout=60_000)  # a loaded machine draws the first frame late
    return image.bounding_box()


def _click_ras(page, web, ras, key: str = "axial") -> tuple[float, float]:
    """Click where the view shows RAS point ``ras`` (projected onto its slice); returns the CSS pixel clicked."""
    geometry = _view_geometry(web, key)
    xy = np.linalg.inv(geometry["xy_to_ras"]) @ np.array([*ras, 1.0])
    box = _image_box(page, key)
    width, height = geometry["dims"]
    px = xy[0] * box["width"] / width
    py = (height - 1 - xy[1]) * box["height"] / height
    page.mouse.move(box["x"] + px, box["y"] + py)
    page.mouse.click(box["x"] + px, box["y"] + py)
    return px, py


def _expected_ras(web, px: float, py: float, box: dict, key: str = "axial") -> tuple[np.ndarray, float]:
    """The RAS point a click at CSS pixel (px, py) of the view's image is shown at, and one pixel in mm."""
    geometry = _view_geometry(web, key)
    width, height = geometry["dims"]
    x = px * width / box["width"]
    y = height - 1 - py * height / box["height"]
    ras = (geometry["xy_to_ras"] @ np.array([x, y, 0.0, 1.0]))[:3]
    return ras, geometry["fov"][0] / width


def _points(web, positive: bool) -> np.ndarray:
    def read():
        editor = web.app.editor
        node = editor.points_nodes()[0 if positive else 1]
        defined = [n for n in range(node.GetNumberOfControlPoints()) if node.GetNthControlPointPositionStatus(n) == node.PositionDefined]
        return np.array([node.GetNthControlPointPositionWorld(n) for n in defined]).reshape(-1, 3)

    return web.call(read)


def _scene_voxels(web) -> int:
    """The current segment's voxels on the volume's grid, exported by Slicer itself."""
    from InteractiveSegmentationLogic.testing import segment_on_volume

    def count():
        editor = web.app.editor
        return int(segment_on_volume(editor.segmentation, editor.segment_id, editor.volume).sum())

    return web.call(count)


def _scene_mask(web) -> np.ndarray:
    from InteractiveSegmentationLogic.testing import segment_on_volume

    return web.call(lambda: segment_on_volume(web.app.editor.segmentation, web.app.editor.segment_id, web.app.editor.volume))


def _wait_mode(web, mode: str, timeout_s: float = 10.0) -> None:
    """Wait until the server's editor is in ``mode`` (a button's state reaches the server asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while web.call(lambda: web.app.editor.mode) != mode:
        if time.monotonic() > deadline:
            raise AssertionError(f"the editor never switched to {mode!r} mode")
        time.sleep(0.05)


def _positive_click_at_centre(page, web) -> tuple[np.ndarray, int]:
    box = _image_box(page)
    px, py = box["width"] / 2, box["height"] / 2
    before = _steps(page)
    page.mouse.move(box["x"] + px, box["y"] + py)
    page.mouse.click(box["x"] + px, box["y"] + py)
    text = _wait_status(page, f"steps={before + 1}", "points +1")
    expected, _ = _expected_ras(web, px, py, box)
    return expected, _voxels_in_status(text)


# -- tests --------------------------------------------------------------------------------------


def test_the_page_shows_the_four_views_and_the_centre_slice_of_the_volume(page, web, case) -> None:
    for key in ("axial", "coronal", "sagittal", "3d"):
        box = _image_box(page, key)
        assert box["width"] > 100 and box["height"] > 100, (key, box)
    assert "voxels=0" in _status(page)

    def centre_offset():
        from InteractiveSegmentationLogic.mrml_geometry import volume_ijk_to_world_ras

        volume = web.app.editor.volume
        size = np.array(volume.GetImageData().GetDimensions(), dtype=float)
        centre = volume_ijk_to_world_ras(volume) @ np.array([*(size - 1) / 2, 1.0])
        node = web.app.views["axial"].get_view_node()
        m = node.GetSliceToRAS()
        normal = np.array([m.GetElement(r, 2) for r in range(3)])
        origin = np.array([m.GetElement(r, 3) for r in range(3)])
        return float(abs((centre[:3] - origin) @ normal))

    # the axial view shows the centre slice: within one slice (2.5 mm) of the volume's centre
    assert centre_offset() <= SPACING[2] / 2 + 1e-6
    # the mouse wheel moves through the slices, one slice a notch, and places no point
    box = _image_box(page)
    before = _view_geometry(web)["offset"]
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, 100)
    assert _until(lambda: abs(_view_geometry(web)["offset"] - before) > 1e-6), "the wheel did not move the slice"
    assert abs(abs(_view_geometry(web)["offset"] - before) - SPACING[2]) < 1e-3
    assert _points(web, positive=True).shape == (0, 3)


def test_a_click_in_the_axial_view_places_a_positive_point_where_the_view_shows_it_and_fills_the_segment(page, web, case) -> None:
    expected, voxels = _positive_click_at_centre(page, web)
    points = _points(web, positive=True)
    _, pixel_mm = _expected_ras(web, 0, 0, _image_box(page))
    assert points.shape == (1, 3)
    assert np.linalg.norm(points[0] - expected) <= 2.0 * pixel_mm + 1e-3, (points[0], expected, pixel_mm)
    assert _points(web, positive=False).shape == (0, 3)
    # the status reports the segment the server's scene holds (read back with Slicer's export)
    assert voxels == _scene_voxels(web) > 0
    mask = _scene_mask(web)
    sphere = case["sphere"]
    assert np.count_nonzero(mask & sphere) >= 0.9 * sphere.sum(), "the sphere under the click is segmented"


def test_a_negative_click_shrinks_the_segment_undo_restores_it_and_redo_again(page, web, case) -> None:
    """With ``click_following_model``: the bundled model's answer to one − click on this small
    phantom is not monotone (measured: the segment sometimes grows elsewhere), and this test is
    about the page: that a − click reaches the model as a − click where the view showed it, and
    that the update, its undo and its redo are what the scene holds."""
    from InteractiveSegmentationLogic.testing import click_following_model

    web.call(lambda: web.app.editor.set_model(click_following_model(), "cpu"))
    _, after_positive = _positive_click_at_centre(page, web)
    bar = case["bar"]
    assert np.count_nonzero(_scene_mask(web) & bar) > 0.9 * bar.sum(), "the bright bar beside the sphere is in the segment"
    page.keyboard.press("n")  # the shortcut for − points
    page.wait_for_function("document.querySelector('#sam-negative').classList.contains('v-btn--active')", timeout=10_000)
    _wait_mode(web, "negative")
    steps = _steps(page)
    bar_centre_ras = web.call(lambda: _ijk_to_ras(web.app.editor.volume, np.argwhere(bar).mean(axis=0)[::-1]))
    px, py = _click_ras(page, web, bar_centre_ras)
    text = _wait_status(page, f"steps={steps + 1}", "points +1 −1")
    after_negative = _voxels_in_status(text)
    assert after_negative == _scene_voxels(web)
    assert after_negative < after_positive, (after_negative, after_positive)
    assert np.count_nonzero(_scene_mask(web) & bar) < 0.1 * bar.sum(), "the − click took the bar out"
    negative = _points(web, positive=False)
    expected, pixel_mm = _expected_ras(web, px, py, _image_box(page))
    assert negative.shape == (1, 3) and np.linalg.norm(negative[0] - expected) <= 2.0 * pixel_mm + 1e-3

    page.click("#sam-undo")
    text = _wait_status(page, f"steps={steps + 2}", "points +1 −0")
    assert _voxels_in_status(text) == after_positive == _scene_voxels(web)
    assert _points(web, positive=False).shape == (0, 3)

    page.keyboard.press("y")  # the shortcut for redo
    text = _wait_status(page, f"steps={steps + 3}", "points +1 −1")
    assert _voxels_in_status(text) == after_negative == _scene_voxels(web)


def test_a_box_drawn_with_two_clicks_segments_the_object_and_clicks_then_refine_it(page, web, case) -> None:
    page.keyboard.press("b")  # the shortcut for the box
    page.wait_for_function("document.querySelector('#sam-box').classList.contains('v-btn--active')", timeout=10_000)
    _wait_mode(web, "box")
    geometry = _view_geometry(web)
    box = _image_box(page)
    _, pixel_mm = _expected_ras(web, 0, 0, box)
    half = 14.0 / pixel_mm * box["width"] / geometry["dims"][0]  # 14 mm in CSS pixels: the sphere's radius is 12 mm
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    corners = [(cx - half, cy - half), (cx + half, cy + half)]
    corners_ras = [_expected_ras(web, x - box["x"], y - box["y"], box)[0] for x, y in corners]
    page.mouse.move(*corners[0])
    page.mouse.click(*corners[0])
    page.mouse.move(*corners[1], steps=8)
    page.mouse.click(*corners[1])
    text = _wait_status(page, "steps=1", "· box")
    assert _voxels_in_status(text) == _scene_voxels(web) > 0

    def drawn():
        roi = web.app.editor.box_node()
        bounds = [0.0] * 6
        roi.GetRASBounds(bounds)
        return list(roi.GetSize()), np.array(bounds).reshape(3, 2)

    size, bounds = web.call(drawn)
    for corner in corners_ras:  # the two clicks are corners of the box
        assert np.all(corner >= bounds[:, 0] - 3 * pixel_mm) and np.all(corner <= bounds[:, 1] + 3 * pixel_mm), (corner, bounds)
    size = sorted(size)
    assert size[0] >= 0.5 * size[1], f"a box, not a slab: {size}"
    # the model's answer is confined to the box (the session's rule for a box prompt)
    kji = np.argwhere(_scene_mask(web))
    ras = web.call(lambda: np.array([_ijk_to_ras(web.app.editor.volume, p[::-1]) for p in kji]))
    slack = max(SPACING)
    assert np.all(ras >= bounds[:, 0] - slack) and np.all(ras <= bounds[:, 1] + slack)
    # once the box is drawn, a click is a + point again: it refines the boxed object
    page.wait_for_function("document.querySelector('#sam-positive').classList.contains('v-btn--active')", timeout=10_000)
    page.mouse.move(cx, cy)
    page.mouse.click(cx, cy)
    text = _wait_status(page, "steps=2", "points +1 −0 · box")
    assert _voxels_in_status(text) == _scene_voxels(web)


def test_save_writes_a_segmentation_nifti_and_markups_that_load_back(page, web, case) -> None:
    _positive_click_at_centre(page, web)
    page.click("#sam-negative")
    _wait_mode(web, "negative")  # the button lights up in the page first: the next view click must reach a server in − mode
    steps = _steps(page)
    bar_centre_ras = web.call(lambda: _ijk_to_ras(web.app.editor.volume, np.argwhere(case["bar"]).mean(axis=0)[::-1]))
    _click_ras(page, web, bar_centre_ras)
    voxels = _voxels_in_status(_wait_status(page, f"steps={steps + 1}", "points +1 −1"))
    _write_screenshot(page, case)
    page.fill("#sam-save-name", "phantom-seg")
    page.click("#sam-save")
    page.wait_for_function("document.querySelector('#sam-saved').innerText.includes('saved phantom-seg')", timeout=UPDATE_TIMEOUT_MS)
    out = case["folder"] / "out"
    seg, nifti = out / "phantom-seg.seg.nrrd", out / "phantom-seg.nii.gz"
    positive = sorted(out.glob("phantom-seg.*.positive.mrk.json"))
    negative = sorted(out.glob("phantom-seg.*.negative.mrk.json"))
    assert seg.is_file() and nifti.is_file() and len(positive) == 1 and len(negative) == 1
    assert voxels == _scene_voxels(web) > 0
    # NIfTI: label 1 on the input image's grid
    labels = sitk.ReadImage(str(nifti))
    assert labels.GetSize() == case["image"].GetSize()
    assert np.allclose(labels.GetDirection(), case["image"].GetDirection(), atol=1e-5)
    assert np.allclose(labels.GetOrigin(), case["image"].GetOrigin(), atol=1e-4)
    assert int(np.count_nonzero(sitk.GetArrayFromImage(labels) == 1)) == voxels
    # .seg.nrrd and .mrk.json through Slicer's own readers, in a scene of their own
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    storage = slicer.vtkMRMLSegmentationStorageNode()
    storage.SetFileName(str(seg))
    assert storage.ReadData(node)
    (segment_id,) = [node.GetSegmentation().GetNthSegmentID(i) for i in range(node.GetSegmentation().GetNumberOfSegments())]
    from InteractiveSegmentationLogic.testing import segment_on_volume

    volume = web.call(lambda: web.app.editor.volume)
    assert int(web.call(lambda: segment_on_volume(node, segment_id, volume)).sum()) == voxels
    for path, sign in ((positive[0], True), (negative[0], False)):
        markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        reader = slicer.vtkMRMLMarkupsJsonStorageNode()
        reader.SetFileName(str(path))
        assert reader.ReadData(markups)
        assert markups.GetNumberOfControlPoints() == 1
        assert np.allclose(markups.GetNthControlPointPosition(0), _points(web, positive=sign)[0], atol=1e-3)
    # Download: the same files, zipped, to the browser's machine
    import zipfile

    with page.expect_download(timeout=UPDATE_TIMEOUT_MS) as download:
        page.click("#sam-download")
    assert download.value.suggested_filename == "phantom-seg.zip"
    archive = zipfile.ZipFile(download.value.path())
    assert sorted(archive.namelist()) == sorted(p.name for p in [seg, nifti, out / "phantom-seg.labels.json", positive[0], negative[0]])
    assert archive.read(nifti.name) and archive.getinfo(seg.name).file_size > 0


def test_an_uploaded_volume_replaces_the_shown_one(page, web, case, tmp_path) -> None:
    upload = tmp_path / "uploaded-ct.nrrd"
    small = sitk.RegionOfInterest(case["image"], [80, 70, 30], [10, 10, 5])
    sitk.WriteImage(small, str(upload))
    page.locator("input[type=file]").first.set_input_files(str(upload))
    page.wait_for_function("document.querySelector('#sam-save-name').value === 'uploaded-ct'", timeout=UPDATE_TIMEOUT_MS)
    _wait_status(page, "voxels=0", "steps=0")

    def shown():
        volume = web.app.editor.volume
        return volume.GetName(), tuple(volume.GetImageData().GetDimensions())

    assert shown() == ("uploaded-ct", (80, 70, 30))


def _ijk_to_ras(volume, ijk) -> np.ndarray:
    from InteractiveSegmentationLogic.mrml_geometry import volume_ijk_to_world_ras

    return (volume_ijk_to_world_ras(volume) @ np.array([*ijk, 1.0]))[:3]


def _write_screenshot(page, case) -> None:
    """The page after a + and a − click: into Resources/ when asked (README), else the temporary folder."""
    import io

    from PIL import Image

    page.wait_for_timeout(1500)  # let the views stream their last frame
    png = page.screenshot()
    picture = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128)
    target = SCREENSHOT if os.environ.get("SAMMED3D_UPDATE_SCREENSHOT") else case["folder"] / "web.png"
    picture.save(target, optimize=True)
    assert target.stat().st_size < 300_000, f"{target} is {target.stat().st_size} bytes; keep it under 300 kB"


def test_the_command_serves_on_loopback_from_a_given_segmentation_and_stops_on_ctrl_c(browser, case, tmp_path) -> None:
    """``sammed3d web IMAGE --segmentation SEG`` as a user runs it: the loaded segment is the
    starting mask (the status counts it before any click), a click refines it, Ctrl+C stops."""
    import signal
    import socket
    import time

    label = sitk.GetImageFromArray(case["sphere"].astype(np.uint8))
    label.CopyInformation(case["image"])
    seg = tmp_path / "start.nii.gz"
    sitk.WriteImage(label, str(seg))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = "import sys; from SAMMed3DLib.cli import main; sys.argv[0] = 'sammed3d'; sys.exit(main())"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "SAMMed3D")])}
    args = ["web", str(case["path"]), "--segmentation", str(seg), "--port", str(port), "--out", str(tmp_path / "out"), "--device", "cpu"]
    process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "open http://" in line:
                break
        assert f"open http://127.0.0.1:{port}/" in "".join(lines), ("".join(lines), process.poll())
        assert f"ssh -L {port}:127.0.0.1:{port}" in "".join(lines) + process.stdout.readline()
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("#sam-view-axial img", timeout=60_000)
        assert _voxels_in_status(_wait_status(page, "steps=0")) == int(case["sphere"].sum())
        box = _image_box(page)
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        text = _wait_status(page, "steps=1", "points +1")
        assert _voxels_in_status(text) > 0
        page.close()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
    assert process.returncode in (0, 130) and "Traceback" not in err, (process.returncode, err[-2000:])
