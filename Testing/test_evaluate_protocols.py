"""The cvpr25 and correction protocols of ``sammed3d evaluate``: bookkeeping, Grow from seeds, the CLI, a small model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SAMMed3DLib.boxes import VoxelBox, cvpr25_box
from SAMMed3DLib.clicks import cvpr25_click
from SAMMed3DLib.cli import main
from SAMMed3DLib.corruption import corrupt
from SAMMed3DLib.errors import ConfigError
from SAMMed3DLib.evaluate import evaluate, structure_rng
from SAMMed3DLib.geometry import ImageGeometry
from SAMMed3DLib.metrics import challenge_nsd, dice

SHAPE_ZYX = (30, 44, 40)
SPACING_XYZ = (1.6, 1.4, 3.0)  # anisotropic
#: label → (name, centre (z, y, x) voxels, radius mm, intensity)
STRUCTURES = {1: ("ball", (14, 20, 18), 12.0, 220.0), 4: ("blob", (9, 32, 28), 8.0, 150.0)}


def _ball(center: tuple[int, int, int], radius_mm: float) -> np.ndarray:
    grid = np.indices(SHAPE_ZYX, dtype=float)
    spacing_zyx = SPACING_XYZ[::-1]
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grid, center, spacing_zyx)) <= radius_mm**2


#: Index axes along -P, +S, -L (permuted and flipped), and an oblique grid.
PERMUTED = (0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
OBLIQUE = sitk.VersorTransform((0.2, 0.1, 1.0), 0.4).GetMatrix()


def _write_case(folder: Path, direction: tuple[float, ...], seed: int = 0) -> None:
    """Bright noisy balls on a dark background, on an anisotropic grid, with labels."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    image = rng.normal(20.0, 4.0, SHAPE_ZYX).astype(np.float32)
    label = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    for value, (_, center, radius, intensity) in STRUCTURES.items():
        ball = _ball(center, radius)
        image[ball] += intensity
        label[ball] = value
    for array, name in ((image, "image.nii.gz"), (label, "label.nii.gz")):
        out = sitk.GetImageFromArray(array)
        out.SetSpacing(SPACING_XYZ)
        out.SetOrigin((-30.0, 25.0, 60.0))
        out.SetDirection(direction)
        sitk.WriteImage(out, str(folder / name))
    (folder / "labels.json").write_text(json.dumps({"labels": {str(v): s[0] for v, s in STRUCTURES.items()}}))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("protocol_data")
    _write_case(root / "permuted", PERMUTED)
    _write_case(root / "oblique", OBLIQUE, seed=1)
    return root


class BoxPainter:
    """A method whose answers are known: a box fills exactly its voxels, a mask is taken as given,
    a click sets or clears its one voxel."""

    def __init__(self, image: sitk.Image) -> None:
        self.geometry = ImageGeometry.from_image(image)
        self._mask = np.zeros(image.GetSize()[::-1], dtype=np.uint8)
        self.calls: list[tuple] = []

    def set_box(self, corner_a_lps, corner_b_lps) -> None:  # noqa: ANN001
        box = VoxelBox.from_corners_lps(self.geometry, corner_a_lps, corner_b_lps)
        self._mask[...] = 0
        self._mask[box.slices] = 1
        self.calls.append(("box", box))

    def set_mask(self, mask) -> None:  # noqa: ANN001
        self._mask[...] = mask
        self.calls.append(("mask", np.asarray(mask).copy()))

    def click_index(self, index_xyz, positive: bool = True) -> None:  # noqa: ANN001
        x, y, z = (int(v) for v in index_xyz)
        self._mask[z, y, x] = positive
        self.calls.append(("click", (z, y, x), positive))

    @property
    def mask_array(self) -> np.ndarray:
        return self._mask

    def reset(self) -> None:
        self._mask[...] = 0


class ClicksOnly(BoxPainter):
    set_box = None  # type: ignore[assignment]
    set_mask = None  # type: ignore[assignment]


def _spacing_zyx() -> tuple[float, float, float]:
    return tuple(float(s) for s in SPACING_XYZ[::-1])  # type: ignore[return-value]


# -- the protocols' bookkeeping, with a method whose answers are known ----------------------------


def test_cvpr25_gives_the_challenge_box_as_lps_corners_then_clicks_in_the_error(data_dir: Path) -> None:
    painters: list[BoxPainter] = []

    def factory(image: sitk.Image) -> BoxPainter:
        painters.append(BoxPainter(image))
        return painters[-1]

    result = evaluate(data_dir, method=factory, protocol="cvpr25", seed=3, cases=["permuted"])
    assert result.protocol == "cvpr25" and result.clicks == (0, 1, 2, 3, 4, 5) and result.tolerance_mm == 2.0
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "permuted" / "label.nii.gz")))
    boxes = [c[1] for c in painters[0].calls if c[0] == "box"]
    for value, box in zip(STRUCTURES, boxes):
        gt = label == value
        # The corners arrived as an LPS box on the permuted grid and give back the challenge's box exactly.
        assert box == cvpr25_box(gt, structure_rng(3, "permuted", value))
        rows = [r for r in result.rows if r.label == value]
        box_mask = box.mask(gt.shape)
        assert rows[0].clicks == 0 and rows[0].dice == pytest.approx(dice(box_mask, gt))
        assert rows[0].nsd == pytest.approx(challenge_nsd(box_mask, gt, _spacing_zyx(), rows[0].dice))
        # The box holds all of a ball seen on its widest slice: every error is a leak, each click
        # a negative one removing one voxel.
        assert box_mask[gt].all()
        for r in rows[1:]:
            assert r.dice == pytest.approx(2 * gt.sum() / (box_mask.sum() - r.clicks + gt.sum()))
    clicks = [c for c in painters[0].calls if c[0] == "click"]
    assert len(clicks) == 10 and not any(positive for _, _, positive in clicks)

    line = result.to_json_dict()
    assert {"dice_auc", "nsd_auc", "final_dice", "final_nsd", "seconds_per_step", "mean_dice", "per_structure"} <= set(line)
    assert len(line["seconds_per_step"]) == 6 and set(line["mean_dice"]) == {"0", "1", "2", "3", "4", "5"}
    per = line["per_structure"][0]
    assert per["clicks"] == [0, 1, 2, 3, 4, 5] and per["box_zyx"] == [list(boxes[0].first_zyx), list(boxes[0].last_zyx)]
    # Dice-AUC: the trapezoid over the 5 click steps (the box left out), 0..4, as the challenge.
    assert per["dice_auc"] == pytest.approx(sum((a + b) / 2 for a, b in zip(per["dice"][1:-1], per["dice"][2:])), abs=1e-5)
    assert line["final_dice"] == pytest.approx(np.mean([s["dice"][-1] for s in line["per_structure"]]), abs=1e-6)


def test_cvpr25_box_on_an_oblique_grid_holds_the_challenge_box(data_dir: Path) -> None:
    painters: list[BoxPainter] = []

    def factory(image: sitk.Image) -> BoxPainter:
        painters.append(BoxPainter(image))
        return painters[-1]

    evaluate(data_dir, method=factory, protocol="cvpr25", clicks=[1], seed=3, cases=["oblique"])
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "oblique" / "label.nii.gz")))
    boxes = [c[1] for c in painters[0].calls if c[0] == "box"]
    for value, box in zip(STRUCTURES, boxes):
        wanted = cvpr25_box(label == value, structure_rng(3, "oblique", value))
        assert all(a <= b for a, b in zip(box.first_zyx, wanted.first_zyx)) and all(a >= b for a, b in zip(box.last_zyx, wanted.last_zyx))


def test_cvpr25_widens_the_box_before_a_positive_click_outside_it(tmp_path: Path) -> None:
    """A mushroom: the median slice cuts the stem, so the cap's rim lies outside the box."""
    folder = tmp_path / "mushroom"
    folder.mkdir()
    label = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    label[2:22, 18:24, 16:22] = 1  # stem: 20 slices of 6 × 6
    label[22, 10:32, 8:30] = 1  # cap: one slice of 22 × 22
    image = np.where(label > 0, 200.0, 20.0).astype(np.float32)
    for array, name in ((image, "image.nii.gz"), (label, "label.nii.gz")):
        out = sitk.GetImageFromArray(array)
        out.SetSpacing(SPACING_XYZ)
        out.SetDirection(PERMUTED)
        sitk.WriteImage(out, str(folder / name))
    (folder / "labels.json").write_text(json.dumps({"labels": {"1": "mushroom"}}))
    painters: list[BoxPainter] = []

    def factory(image: sitk.Image) -> BoxPainter:
        painters.append(BoxPainter(image))
        return painters[-1]

    result = evaluate(folder, method=factory, protocol="cvpr25", clicks=[1])
    calls = painters[0].calls
    first, second = (c[1] for c in calls if c[0] == "box")
    click = next(c for c in calls if c[0] == "click")
    assert [c[0] for c in calls] == ["box", "box", "click"] and click[2]  # widened, then the + click
    assert not first.mask(SHAPE_ZYX)[click[1]] and second.mask(SHAPE_ZYX)[click[1]] and click[1][0] == 22
    assert second.mask(SHAPE_ZYX)[first.slices].all()  # the old box inside the new one
    assert result.details[("mushroom", 1)]["box_widened"] == 1


def test_correction_starts_from_the_seeded_corruption_and_reports_the_changes(data_dir: Path) -> None:
    painters: list[BoxPainter] = []

    def factory(image: sitk.Image) -> BoxPainter:
        painters.append(BoxPainter(image))
        return painters[-1]

    result = evaluate(data_dir, method=factory, protocol="correction", clicks=[4], corruption="dilate", seed=1, cases=["oblique"])
    assert result.clicks == (0, 1, 2, 3, 4) and result.corruption == "dilate"
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(data_dir / "oblique" / "label.nii.gz")))
    masks = [c[1] for c in painters[0].calls if c[0] == "mask"]
    for value, start in zip(STRUCTURES, masks):
        gt = label == value
        expected = corrupt(gt, "dilate", structure_rng(1, "oblique", value), _spacing_zyx())
        assert np.array_equal(start != 0, expected.mask)
        rows = [r for r in result.rows if r.label == value]
        assert rows[0].dice == pytest.approx(expected.dice) and 0.80 <= rows[0].dice <= 0.95
        assert [r.dice for r in rows] == sorted(r.dice for r in rows) and rows[-1].dice > rows[0].dice  # each click fixes a voxel
    line = result.to_json_dict()
    assert line["corruption"] == "dilate" and set(line["mean_change"]) == {"1", "2", "3", "4"}
    assert line["mean_change"]["1"] > 0 and line["worst_first_click_change"] > 0 and line["first_click_losses_over_0.10"] == 0
    assert line["start_dice"] == pytest.approx(np.mean([r.dice for r in result.rows if r.clicks == 0]), abs=1e-6)
    assert line["per_structure"][0]["start"] == "dilate" and line["per_structure"][0]["start_parts"] == ["dilate"]


def test_a_method_without_box_or_mask_input_is_refused_for_those_protocols(data_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"has no set_box\(\): the cvpr25 protocol starts from a box prompt"):
        evaluate(data_dir, method=ClicksOnly, protocol="cvpr25")
    with pytest.raises(ConfigError, match=r"has no set_mask\(\): the correction protocol starts from an existing mask"):
        evaluate(data_dir, method=ClicksOnly, protocol="correction")
    with pytest.raises(ConfigError, match="protocol 'brats' is not known; use one of paper, cvpr25, correction"):
        evaluate(data_dir, method=BoxPainter, protocol="brats")
    with pytest.raises(ConfigError, match="corruption 'blur' is not known"):
        evaluate(data_dir, method=BoxPainter, protocol="correction", corruption="blur")


# -- Grow from seeds ---------------------------------------------------------------------------------


def test_grow_from_seeds_segments_a_ball_from_its_box_alone(data_dir: Path) -> None:
    result = evaluate(data_dir, method="growcut", protocol="cvpr25", seed=0, cases=["oblique"])
    assert result.model == "grow-from-seeds" and result.structures == 2
    for r in result.rows:
        assert r.dice > 0.9, r  # the box alone (step 0) already finds each bright ball
    line = result.to_json_dict()
    assert line["final_dice"] > 0.9 and 3.6 < line["dice_auc"] <= 4.0 and 0.0 <= line["nsd_auc"] <= 4.0


def test_grow_from_seeds_corrects_an_existing_mask(data_dir: Path) -> None:
    result = evaluate(data_dir, method="growcut", protocol="correction", seed=0, cases=["oblique"])
    line = result.to_json_dict()
    assert 0.80 <= line["start_dice"] <= 0.95
    # The mask's seeds (eroded inside, outside the dilation) and one click recover the bright balls.
    assert line["mean_change"]["1"] > 0.03 and line["final_dice"] > 0.9


def test_grow_from_seeds_session_box_and_mask_prompts() -> None:
    from SAMMed3DLib.baselines import GrowCutSession

    ball = _ball((14, 20, 18), 12.0)
    image_zyx = np.where(ball, 200.0, 10.0).astype(np.float32)
    image = sitk.GetImageFromArray(image_zyx)
    image.SetSpacing(SPACING_XYZ)
    image.SetDirection(OBLIQUE)
    geometry = ImageGeometry.from_image(image)
    session = GrowCutSession(image)
    corners = cvpr25_box(ball).bounds_lps(geometry)
    assert np.array_equal(session.set_box(*corners) != 0, ball)

    leak = ball | _ball((14, 20, 27), 5.0)  # a mask leaking into the background
    session.set_mask(leak.astype(np.uint8))
    assert np.array_equal(session.mask_array != 0, leak)  # shown as given until a click
    click = cvpr25_click(leak, ball, _spacing_zyx())
    assert click is not None and not click.positive
    session.click_index(click.index[::-1], positive=False)  # a negative first click is valid on a mask
    assert dice(session.mask_array, ball) > 0.99 > dice(leak, ball) and not session.mask_array[click.index]
    session.reset()
    assert np.array_equal(session.mask_array != 0, leak)  # back to the mask it was given


# -- the command line --------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["cvpr25", "correction"])
def test_cli_json_of_each_protocol_with_grow_from_seeds(data_dir: Path, tmp_path: Path, protocol: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"{protocol}.csv"
    argv = ["evaluate", str(data_dir), "--protocol", protocol, "--method", "growcut", "--cases", "oblique", "--out", str(out), "--json"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    assert len(stdout) == 1
    line = json.loads(stdout[0])
    steps = 6 if protocol == "cvpr25" else 4
    assert line["protocol"] == protocol and line["nsd_tolerance_mm"] == 2.0 and line["structures"] == 2
    assert {"dice_auc", "nsd_auc", "final_dice", "final_nsd", "seconds_per_step", "per_structure"} <= set(line)
    assert len(line["seconds_per_step"]) == steps and all(s >= 0 for s in line["seconds_per_step"])
    assert 0.0 <= line["dice_auc"] <= steps - 2 and all(0.0 <= v <= 1.0 for v in line["mean_dice"].values())
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * steps and [r["clicks"] for r in rows[:steps]] == [str(k) for k in range(steps)]


def test_cli_human_summary_of_the_correction_protocol(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["evaluate", str(data_dir), "--protocol", "correction", "--corruption", "erode", "--clicks", "2", "--method", "growcut", "--cases", "permuted"]
    assert main([*argv, "--out", str(tmp_path / "c.csv")]) == 0
    text = capsys.readouterr().out
    assert "correction protocol from erode masks" in text and "clicks (0: start)" in text and "worst first click" in text


# -- the model ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["paper", "cvpr25", "correction"])
def test_cli_each_protocol_with_a_small_model(data_dir: Path, small_model_path: Path, tmp_path: Path, protocol: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.csv"
    argv = ["evaluate", str(data_dir), "--protocol", protocol, "--model", str(small_model_path), "--device", "cpu", "--cases", "oblique"]
    argv += ["--out", str(out), "--json"]
    assert main([*argv, "--clicks", "2"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["protocol"] == protocol and line["model"] == "small" and line["structures"] == 2
    assert 0.0 <= line["final_dice"] <= 1.0 and 0.0 <= line["final_nsd"] <= 1.0
    assert len(line["seconds_per_step"]) == (1 if protocol == "paper" else 3) and all(s > 0 for s in line["seconds_per_step"][1:])
    if protocol != "paper":
        assert 0.0 <= line["dice_auc"] <= 1.0 and 0.0 <= line["nsd_auc"] <= 1.0
    if protocol == "correction":
        assert 0.80 <= line["start_dice"] <= 0.95 and -1.0 <= line["worst_first_click_change"] <= 1.0
