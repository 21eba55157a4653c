"""Evaluation harness: the click protocol on real files, with a small model and the GrowCut baseline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SAMMed3DLib import build_sam3d
from SAMMed3DLib.card import ModelCard
from SAMMed3DLib.cli import main
from SAMMed3DLib.errors import ConfigError, DataError, PromptError
from SAMMed3DLib.evaluate import (
    CSV_COLUMNS,
    evaluate,
    find_cases,
    plot_mean_dice,
    run_structure,
    structure_rng,
)

# A small SAM-Med3D (random weights): the real network path, cheap on 2 CPU cores.
SMALL = {
    "image_encoder": {
        "img_size": 128, "patch_size": 16, "embed_dim": 48, "depth": 2, "num_heads": 4, "out_chans": 48,
        "use_rel_pos": True, "window_size": 14, "global_attn_indexes": [1],
    },
    "prompt_encoder": {"embed_dim": 48, "image_embedding_size": 8, "input_image_size": 128, "mask_in_chans": 16},
    "mask_decoder": {"transformer_dim": 48},
}  # fmt: skip

# Per case: label value → (name, centre (z, y, x) in voxels, radius in voxels, intensity).
CASES = {
    "case_a": {1: ("liver", (20, 18, 16), 7, 220.0), 3: ("kidney_left", (14, 30, 32), 5, 140.0)},
    "case_b": {2: ("spleen", (16, 20, 30), 6, 180.0), 5: ("tumor", (30, 30, 14), 5, 260.0)},
}
SHAPE_ZYX = (44, 46, 48)
SPACING_XYZ = (6.0, 6.0, 5.0)  # 6 mm voxels: the image (~270 mm) is wider than GrowCut's 192 mm box


def _sphere(center: tuple[int, int, int], radius: float) -> np.ndarray:
    zz, yy, xx = np.indices(SHAPE_ZYX)
    return (zz - center[0]) ** 2 + (yy - center[1]) ** 2 + (xx - center[2]) ** 2 <= radius**2


def write_case(folder: Path, structures: dict[int, tuple[str, tuple[int, int, int], float, float]], seed: int) -> None:
    """Bright noisy spheres on a dark background, with their label map and labels.json."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    image = rng.normal(20.0, 4.0, SHAPE_ZYX).astype(np.float32)
    label = np.zeros(SHAPE_ZYX, dtype=np.uint8)
    for value, (_, center, radius, intensity) in structures.items():
        ball = _sphere(center, radius)
        image[ball] += intensity
        label[ball] = value
    for array, name in ((image, "image.nii.gz"), (label, "label.nii.gz")):
        out = sitk.GetImageFromArray(array)
        out.SetSpacing(SPACING_XYZ)
        out.SetOrigin((-120.0, 40.0, 7.5))
        out.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # flipped axes, as TotalSegmentator's CTs
        sitk.WriteImage(out, str(folder / name))
    names = {str(v): s[0] for v, s in structures.items()}
    (folder / "labels.json").write_text(json.dumps({"labels": names, "modality": "CT"}))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    for i, (name, structures) in enumerate(CASES.items()):
        write_case(root / name, structures, seed=i)
    return root


@pytest.fixture(scope="module")
def model():
    import torch

    torch.manual_seed(0)
    net = build_sam3d(SMALL)
    net.card = ModelCard(name="test", config=net.config)
    return net


def _rows_without_seconds(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


# -- the model through the session ------------------------------------------------------------------


@pytest.mark.slow
def test_evaluate_with_a_small_model_writes_rows_for_every_structure_and_click(data_dir: Path, model, tmp_path: Path) -> None:
    result = evaluate(data_dir, model=model, clicks=[2, 1], seed=0)
    assert result.clicks == (1, 2)
    assert result.model == "test" and result.method == "model" and result.click_mode == "random"
    assert result.structures == 4 and not result.skipped
    assert [(r.case, r.label, r.clicks) for r in result.rows] == [
        (case, value, k) for case, s in CASES.items() for value in s for k in (1, 2)
    ]
    for r in result.rows:
        assert 0.0 <= r.dice <= 1.0 and 0.0 <= r.nsd <= 1.0
        assert r.voxels == int(_sphere(CASES[r.case][r.label][1], CASES[r.case][r.label][2]).sum())
    by_structure = {(r.case, r.label, r.clicks): r.seconds for r in result.rows}
    assert all(by_structure[(c, v, 2)] >= by_structure[(c, v, 1)] > 0 for c, s in CASES.items() for v in s)

    out = result.write_csv(tmp_path / "results.csv")
    with out.open(newline="", encoding="utf-8") as f:
        assert tuple(next(csv.reader(f))) == CSV_COLUMNS

    # Seeded: the same seed gives the same CSV (timings aside).
    again = evaluate(data_dir, model=model, clicks=[1, 2], seed=0).write_csv(tmp_path / "again.csv")
    assert _rows_without_seconds(out) == _rows_without_seconds(again)


@pytest.mark.slow
def test_a_structure_gets_the_same_clicks_whatever_else_is_evaluated(data_dir: Path, model) -> None:
    alone = evaluate(data_dir, model=model, clicks=[2], seed=4, cases=["case_b"], labels=["tumor"])
    both = evaluate(data_dir, model=model, clicks=[2], seed=4, cases=["case_a", "case_b"], labels=["5", "liver"])
    assert [(r.case, r.label) for r in alone.rows] == [("case_b", 5)]
    assert {(r.case, r.label) for r in both.rows} == {("case_a", 1), ("case_b", 5)}
    tumor = next(r for r in both.rows if r.label == 5)
    assert (tumor.dice, tumor.nsd) == (alone.rows[0].dice, alone.rows[0].nsd)


# -- the protocol itself, with a method whose answer is known ---------------------------------------


class OracleOfClicks:
    """A method that paints a 1-voxel-radius cross at positive clicks and erases at negative ones.

    Its masks are known exactly, so the protocol's bookkeeping (order, resets, click counts,
    stopping when perfect) can be checked against hand-derived values.
    """

    def __init__(self, image: sitk.Image) -> None:
        self._mask = np.zeros(sitk.GetArrayViewFromImage(image).shape, dtype=np.uint8)
        self.clicks: list[tuple[tuple[int, int, int], bool]] = []
        self.resets = 0

    def click_index(self, index_xyz, positive: bool = True) -> None:  # noqa: ANN001
        x, y, z = (int(v) for v in index_xyz)
        self.clicks.append(((z, y, x), positive))
        self._mask[z, y, x] = 1 if positive else 0

    @property
    def mask_array(self) -> np.ndarray:
        return self._mask

    def reset(self) -> None:
        self._mask[...] = 0
        self.clicks.clear()
        self.resets += 1


def test_run_structure_follows_the_protocol_on_the_original_grid() -> None:
    image = sitk.Image(10, 8, 6, sitk.sitkFloat32)  # x, y, z sizes → array (6, 8, 10)
    gt = np.zeros((6, 8, 10), dtype=bool)
    gt[2, 3, 4:7] = True  # three voxels along x
    method = OracleOfClicks(image)
    metrics = run_structure(method, gt, (3.0, 1.0, 1.0), [1, 2, 3, 5], np.random.default_rng(0))
    # Each click paints one voxel of gt (a random error voxel is always a false negative here),
    # so Dice after k clicks is 2k / (k + 3) until the mask is perfect at 3 clicks; the user then
    # stops, and 5 clicks repeats the 3-click values.
    assert [round(metrics[k][0], 6) for k in (1, 2, 3, 5)] == [0.5, 0.8, 1.0, 1.0]
    assert metrics[3][1] == metrics[5][1] == 1.0
    assert len(method.clicks) == 3 and all(positive for _, positive in method.clicks)
    assert {c for c, _ in method.clicks} == {(2, 3, 4), (2, 3, 5), (2, 3, 6)}
    assert method.resets == 1


def test_evaluate_takes_any_method_with_the_click_interface(data_dir: Path, tmp_path: Path) -> None:
    result = evaluate(data_dir, method=OracleOfClicks, clicks=[1, 4], seed=1)
    assert result.method == "OracleOfClicks" and result.structures == 4
    for r in result.rows:  # k one-voxel clicks on an n-voxel sphere: Dice = 2k / (k + n)
        assert r.dice == pytest.approx(2 * r.clicks / (r.clicks + r.voxels))
    summary = result.write_summary_csv(tmp_path / "summary.csv").read_text(encoding="utf-8").splitlines()
    assert summary[0] == "case,clicks,structures,mean_dice,mean_nsd"
    assert summary[1].startswith("ALL,1,4,") and summary[3].startswith("case_a,1,2,")
    per_case = result.per_case()
    assert set(per_case) == {"case_a", "case_b"}
    assert per_case["case_a"]["dice"][4] == pytest.approx(
        np.mean([r.dice for r in result.rows if r.case == "case_a" and r.clicks == 4])
    )
    line = result.to_json_dict()
    assert line["structures"] == 4 and set(line["mean_dice"]) == {"1", "4"}
    png = plot_mean_dice([result, result], tmp_path / "two.png")  # several methods on one plot
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_small_and_absent_structures_are_skipped_and_counted(tmp_path: Path) -> None:
    structures = {1: ("organ", (20, 20, 20), 6, 200.0), 2: ("speck", (5, 5, 5), 1.0, 200.0)}
    write_case(tmp_path / "c1", structures, seed=0)
    labels = json.loads((tmp_path / "c1" / "labels.json").read_text(encoding="utf-8"))
    labels["labels"]["9"] = "missing_organ"
    (tmp_path / "c1" / "labels.json").write_text(json.dumps(labels))
    result = evaluate(tmp_path, method=OracleOfClicks, clicks=[1], min_voxels=10)
    assert [(r.label, r.name) for r in result.rows] == [(1, "organ")]
    assert {(s.label, s.voxels) for s in result.skipped} == {(2, 7), (9, 0)}
    assert {s.label: s.reason for s in result.skipped} == {2: "only 7 voxel(s), fewer than 10", 9: "absent from label.nii.gz"}
    assert result.to_json_dict()["skipped"] == 2
    assert "skipped c1/2 speck: only 7 voxel(s)" in result.summary_text()


def test_structure_rng_depends_only_on_seed_case_and_label() -> None:
    def draw(*key) -> int:  # noqa: ANN002
        return int(structure_rng(*key).integers(1 << 30))

    assert draw(0, "case_a", 1) == draw(0, "case_a", 1)
    assert len({draw(0, "case_a", 1), draw(1, "case_a", 1), draw(0, "case_b", 1), draw(0, "case_a", 2)}) == 4


# -- the Grow from seeds baseline -------------------------------------------------------------------


@pytest.mark.parametrize("click_mode", ["random", "center"])
def test_growcut_baseline_segments_bright_spheres(data_dir: Path, click_mode: str) -> None:
    result = evaluate(data_dir, method="growcut", clicks=[1, 3], seed=0, click_mode=click_mode)
    assert result.method == "growcut" and result.model == "grow-from-seeds" and result.structures == 4
    for r in result.rows:
        if r.clicks == 3:
            assert r.dice > 0.8, r
    assert result.mean_dice()[3] > 0.9


def test_growcut_session_follows_clicks() -> None:
    from SAMMed3DLib.baselines import GrowCutSession

    image_zyx = np.full((40, 40, 40), 10.0, dtype=np.float32)
    ball = np.zeros_like(image_zyx, dtype=bool)
    ball[12:28, 12:28, 12:28] = True
    image_zyx[ball] = 200.0
    image = sitk.GetImageFromArray(image_zyx)
    image.SetSpacing((3.0, 3.0, 3.0))
    session = GrowCutSession(image, box_mm=90.0)
    with pytest.raises(PromptError, match="first click of an object must be positive"):
        session.click_index((20, 20, 20), positive=False)
    with pytest.raises(PromptError, match="outside the image"):
        session.click_index((40, 0, 0))
    mask = session.click(image.TransformIndexToPhysicalPoint((20, 20, 20)), positive=True)
    assert mask.shape == (40, 40, 40) and np.array_equal(mask != 0, ball)
    session.click_index((13, 13, 13), positive=False)  # a negative click carves the corner out
    assert not session.mask_array[13, 13, 13] and session.mask_array[20, 20, 20]
    session.reset()
    assert not session.mask_array.any() and session.clicks_zyx == []


# -- the command line --------------------------------------------------------------------------------


def test_cli_json_csv_summary_and_plot(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "res" / "results.csv"
    png = tmp_path / "dice.png"
    argv = ["evaluate", str(data_dir), "--method", "growcut", "--clicks", "1", "2", "--out", str(out), "--json", "--plot", str(png)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    assert len(stdout) == 1
    line = json.loads(stdout[0])
    assert {"structures", "mean_dice", "mean_nsd", "model", "click_mode", "seconds"} <= set(line)
    assert line["structures"] == 4 and line["click_mode"] == "random" and line["model"] == "grow-from-seeds"
    assert set(line["mean_dice"]) == set(line["mean_nsd"]) == {"1", "2"}
    assert all(0.0 <= v <= 1.0 for v in line["mean_dice"].values())
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 8
    assert (out.parent / "results_summary.csv").is_file()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Same seed → same CSV (timings aside).
    again = tmp_path / "again.csv"
    assert main(argv[:-5] + ["--out", str(again), "--json"]) == 0
    assert _rows_without_seconds(out) == _rows_without_seconds(again)


def test_cli_human_summary_and_filters(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.csv"
    argv = ["evaluate", str(data_dir), "--method", "growcut", "--clicks", "1", "--out", str(out), "--exclude-cases", "case_a", "--labels", "tumor"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "mean Dice" in text and "case_b" in text and "1 structure(s) in 1 case(s)" in text
    assert [(r["case"], r["name"]) for r in csv.DictReader(out.open(encoding="utf-8"))] == [("case_b", "tumor")]


@pytest.mark.slow
def test_cli_with_a_model_checkpoint(data_dir: Path, model, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from SAMMed3DLib.checkpoint import save_model

    ckpt = tmp_path / "small.pth"
    save_model(model, ckpt)
    out = tmp_path / "m.csv"
    argv = ["evaluate", str(data_dir), "--model", str(ckpt), "--device", "cpu", "--clicks", "1", "--out", str(out), "--json", "--max-cases", "1"]
    assert main(argv) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["structures"] == 2 and line["model"] == "test" and line["method"] == "model"


# -- invalid input -----------------------------------------------------------------------------------


def test_invalid_data_folders(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(DataError, match=r"data folder .*nowhere does not exist.*image\.nii\.gz, label\.nii\.gz and labels\.json"):
        find_cases(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes").mkdir()
    with pytest.raises(DataError, match=r"empty holds no case folders; expected DATA_DIR/<case>/image\.nii\.gz"):
        find_cases(tmp_path / "empty")
    broken = tmp_path / "broken" / "c1"
    broken.mkdir(parents=True)
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8), str(broken / "image.nii.gz"))
    with pytest.raises(DataError, match=r"c1 lacks label\.nii\.gz, labels\.json"):
        find_cases(tmp_path / "broken")
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8), str(broken / "label.nii.gz"))
    (broken / "labels.json").write_text('{"labels": {"one": "liver"}}')
    with pytest.raises(DataError, match=r"labels\.json: label 'one': 'liver' is invalid"):
        find_cases(tmp_path / "broken")
    (broken / "labels.json").write_text("{not json")
    with pytest.raises(DataError, match=r"cannot read .*labels\.json"):
        find_cases(tmp_path / "broken")
    (broken / "labels.json").write_text('{"labels": {"1": "liver"}}')
    sitk.WriteImage(sitk.Image(5, 4, 4, sitk.sitkUInt8), str(broken / "label.nii.gz"))
    with pytest.raises(DataError, match=r"label\.nii\.gz .* is not on the grid of image\.nii\.gz"):
        evaluate(tmp_path / "broken", method=OracleOfClicks)
    with pytest.raises(DataError, match=r"case\(s\) 'cse_a' \(did you mean 'case_a'\?\) not found"):
        find_cases(data_dir, cases=["cse_a"])
    with pytest.raises(DataError, match="no structure named or numbered"):
        evaluate(data_dir, method=OracleOfClicks, labels=["heart"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clicks": [0, 1]}, "click counts must be >= 1"),
        ({"clicks": []}, "click counts must be >= 1"),
        ({"click_mode": "edge"}, "click mode 'edge' is not known"),
        ({"seed": -1}, "seed must be a whole number >= 0"),
        ({"method": "magic"}, "method 'magic' is not known; use one of model, growcut"),
        ({"method": "model"}, "method 'model' needs a model"),
        ({"max_cases": 0}, "max_cases must be >= 1"),
    ],
)
def test_invalid_options(data_dir: Path, kwargs: dict, match: str) -> None:
    args = {"method": OracleOfClicks} | kwargs
    with pytest.raises(ConfigError, match=match):
        evaluate(data_dir, **args)


def test_cli_reports_a_bad_data_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["evaluate", str(tmp_path / "nowhere"), "--method", "growcut", "--out", str(tmp_path / "r.csv")])
    assert code == 2
    assert "sammed3d evaluate: error: data folder" in capsys.readouterr().err


# -- real data -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_one_click_on_a_real_structure(shared_data: Path, model) -> None:
    # sct_t2_cord: a sagittal MR acquisition (permuted axes), 1 structure (spinal cord).
    result = evaluate(shared_data, model=model, clicks=[1], cases=["sct_t2_cord"], seed=0)
    assert result.structures == 1 and len(result.rows) == 1
    row = result.rows[0]
    assert row.name == "spinal_cord" and row.voxels > 1000
    assert 0.0 <= row.dice <= 1.0 and 0.0 <= row.nsd <= 1.0


def test_the_window_spacing_option_gives_the_sessions_a_card_of_that_spacing() -> None:
    from SAMMed3DLib.card import with_window_spacing
    from SAMMed3DLib.errors import ConfigError
    from SAMMed3DLib.evaluate import _method_factory

    model = build_sam3d(SMALL)
    model.card = ModelCard(name="tiny", config=model.config)
    image = sitk.Image([40, 40, 20], sitk.sitkFloat32)
    factory, _, _ = _method_factory("model", model, window_spacing_mm=0.75)
    session = factory(image)
    assert session.card.spacing_mm == 0.75 and session.card.name == "tiny" and model.card.spacing_mm == 1.5
    assert _method_factory("model", model)[0](image).card is model.card
    with pytest.raises(ConfigError, match="above 0"):
        with_window_spacing(model.card, float("nan"))
