"""Bad input never costs the user data: outputs are checked first, verified, and replace files all together or not at all.

The file-size limit cases run the command in a child process with ``RLIMIT_FSIZE`` lowered
(``preexec_fn``), so they need neither root nor a small file system: CPython ignores SIGXFSZ, so
writes past the limit fail with EFBIG, as on a full disk. The child writes no bytecode: CPython
itself installs truncated ``.pyc`` files under such a limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import SAMMed3DLib.evaluate as evaluate_module
from SAMMed3DLib.atomic import atomic_files
from SAMMed3DLib.cli import main
from SAMMed3DLib.errors import OutputConflictError, OutputError
from SAMMed3DLib.io import image_from_array, write_preview_png, write_segmentation
from SAMMed3DLib.outputs import check_distinct

ROOT = Path(__file__).resolve().parents[1]
CLICK = ["--ijk", "--point", "35,30,15", "--negative", "30,25,14", "--threads", "1"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
needs_permissions = pytest.mark.skipif(IS_ROOT or os.name != "posix", reason="root (or Windows) can write into a read-only folder")


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """One case: a bright ball with its label map."""
    case = tmp_path / "data" / "case_a"
    case.mkdir(parents=True)
    zz, yy, xx = np.indices((24, 26, 28))
    ball = (zz - 12) ** 2 + (yy - 13) ** 2 + (xx - 14) ** 2 <= 36
    image = np.random.default_rng(1).normal(20, 4, ball.shape).astype(np.float32) + 200 * ball
    for array, name in ((image, "image.nii.gz"), (ball.astype(np.uint8), "label.nii.gz")):
        out = sitk.GetImageFromArray(array)
        out.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(out, str(case / name))
    (case / "labels.json").write_text(json.dumps({"labels": {"1": "ball"}}), encoding="utf-8")
    return tmp_path / "data"


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (temporary files included) → its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


CLI = "import sys; from SAMMed3DLib.cli import main; sys.exit(main(sys.argv[1:]))"
#: ``sammed3d evaluate`` with a fixed result in place of the (slow: MONAI, the model) evaluation.
CANNED_EVALUATE = """
import sys
import SAMMed3DLib.evaluate as E
from SAMMed3DLib.cli import main
row = E.Row("case_a", 1, "ball", 925, 1, 0.5, 0.25, 0.1)
E.evaluate = lambda *a, **k: E.EvaluationResult([row], [], (1,), "canned", "growcut", "random", 0, 1.0, cases=["case_a"])
sys.exit(main(sys.argv[1:]))
"""


def _run_limited(argv: list[str], max_bytes: int, cwd: Path, code: str = CLI) -> subprocess.CompletedProcess:
    """``sammed3d ARGV`` (or ``code`` with ARGV) in a child process whose files may not grow past ``max_bytes``."""
    resource = pytest.importorskip("resource")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, argv)], preexec_fn=limit, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


# -- 1. a bad second output: the first one is not replaced -------------------------------------------


@pytest.mark.parametrize(
    ("preview", "message"),
    [
        ("preview.jpg", "unsupported extension; use .png"),
        ("no/such/folder/preview.png", "does not exist; create it first"),
        ("a_folder.png", "it is a folder"),
        pytest.param("read_only/preview.png", "is not writable", marks=needs_permissions),
    ],
)
def test_a_bad_preview_leaves_the_earlier_segmentation_alone(tmp_path, ct_file, small_model_path, capsys, preview, message) -> None:
    (tmp_path / "a_folder.png").mkdir()
    (tmp_path / "read_only").mkdir(mode=0o555)
    keep = tmp_path / "keep.nii.gz"
    keep.write_bytes(b"an earlier result")
    before = _snapshot(tmp_path)
    code = main(["segment", str(ct_file), *CLICK, "--model", str(small_model_path), "--out", str(keep), "--preview", str(tmp_path / preview)])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "--preview" in err and "nothing was written" in err
    assert _snapshot(tmp_path) == before


# -- 2. an output that is the input, or the other output ---------------------------------------------


@pytest.mark.parametrize(
    ("make", "out", "preview", "message"),
    [
        (None, "{ct}", None, "is the input image"),
        (None, "ct.nii.gz", None, "is the input image"),  # relative, run in the image's folder
        (None, "sub/../ct.nii.gz", None, "is the input image"),
        ("symlink", "link.nii.gz", None, "is the input image"),
        ("hardlink", "hard.nii.gz", None, "is the input image"),
        ("hardlink_png", "mask.nii.gz", "hard.png", "--preview"),
        ("preview_link", "mask.nii.gz", "p.png", "are the same file"),
    ],
)
def test_an_output_that_is_the_input_or_the_other_output_is_refused(tmp_path, ct_file, small_model_path, monkeypatch, capsys, make, out, preview, message) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    if make == "symlink":
        (tmp_path / "link.nii.gz").symlink_to(ct_file)
    elif make == "hardlink":
        os.link(ct_file, tmp_path / "hard.nii.gz")
    elif make == "hardlink_png":
        os.link(ct_file, tmp_path / "hard.png")
    elif make == "preview_link":
        (tmp_path / "p.png").write_bytes(b"an earlier preview")
        (tmp_path / "mask.nii.gz").symlink_to(tmp_path / "p.png")
    before = _snapshot(tmp_path)
    argv = ["segment", str(ct_file), *CLICK, "--model", str(small_model_path), "--out", out.format(ct=ct_file)]
    code = main(argv + (["--preview", preview] if preview else []))
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "nothing was written" in err
    assert _snapshot(tmp_path) == before


def test_check_distinct_names_both_paths(tmp_path) -> None:
    with pytest.raises(OutputConflictError, match=r"--out '.*a\.csv' and --plot '.*a\.csv' are the same file"):
        check_distinct([("--out", tmp_path / "a.csv"), ("--plot", tmp_path / "x" / ".." / "a.csv")])
    check_distinct([("--out", tmp_path / "a.csv"), ("--plot", None)], inputs=[("the image", tmp_path / "b.csv")])


# -- 3. full disk / file-size limit: the earlier file stays, the command fails -----------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha"])
def test_a_file_size_limit_keeps_the_earlier_segmentation(tmp_path, ct_file, small_model_path, suffix) -> None:
    out = tmp_path / f"mask{suffix}"
    argv = ["segment", ct_file, *CLICK, "--model", small_model_path, "--out", out]
    assert main([str(a) for a in argv]) == 0  # the earlier result
    before = _snapshot(tmp_path)
    done = _run_limited(argv, out.stat().st_size // 2, tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"cannot write '{out}'" in done.stderr and "ulimit -f" in done.stderr and "wrote segmentation" not in done.stderr
    assert _snapshot(tmp_path) == before


def test_a_preview_past_the_limit_keeps_both_earlier_outputs(tmp_path, ct_file, small_model_path) -> None:
    out, preview = tmp_path / "mask.nii.gz", tmp_path / "preview.png"
    argv = ["segment", ct_file, *CLICK, "--model", small_model_path, "--out", out, "--preview", preview]
    assert main([str(a) for a in argv]) == 0
    mask_bytes, png_bytes = out.stat().st_size, preview.stat().st_size
    assert mask_bytes < png_bytes  # so a limit between them lets the mask through and stops the picture
    before = _snapshot(tmp_path)
    done = _run_limited(argv, (mask_bytes + png_bytes) // 2, tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"cannot write '{preview}'" in done.stderr and f"'{out}' was not written either" in done.stderr
    assert _snapshot(tmp_path) == before


def _truncate_after(real_write):
    def write(image, filename, *args, **kwargs):  # what ITK does on a full disk: short file, no exception
        real_write(image, filename, *args, **kwargs)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])

    return write


@pytest.mark.parametrize(
    ("name", "write"),
    [
        ("m.nii", lambda mask, image, path: write_segmentation(mask, path)),
        ("m.nii.gz", lambda mask, image, path: write_segmentation(mask, path)),
        ("m.nrrd", lambda mask, image, path: write_segmentation(mask, path)),
        ("m.seg.nrrd", lambda mask, image, path: write_segmentation(mask, path)),
        ("m.mha", lambda mask, image, path: write_segmentation(mask, path)),
        ("p.png", lambda mask, image, path: write_preview_png(image, mask, (10.0, 10.0, 10.0), path)),
    ],
)
def test_a_silently_truncated_write_is_caught_by_reading_back(tmp_path, monkeypatch, name, write) -> None:
    labels = np.zeros((20, 24, 28), np.uint8)
    labels[5:15, 6:18, 7:21] = 1
    mask = image_from_array(labels, (1.0, 1.2, 1.5), (3.0, -4.0, 5.0))
    image = image_from_array(labels.astype(np.float32) * 100.0, (1.0, 1.2, 1.5), (3.0, -4.0, 5.0))
    target = tmp_path / name
    target.write_bytes(b"an earlier result")
    monkeypatch.setattr(sitk, "WriteImage", _truncate_after(sitk.WriteImage))
    with pytest.raises(OutputError, match=r"cannot write .*(holds|cannot be read back|read back)"):
        write(mask, image, target)
    assert _snapshot(tmp_path) == {name: b"an earlier result"}


# -- 4. evaluate: outputs checked before the run, written together at the end ------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--out", "{tmp}/a_folder"], "it is a folder"),
        (["--out", "{tmp}/file.txt/r.csv"], "is a file, not a folder"),
        (["--out", "{tmp}/r.csv", "--plot", "{tmp}/x.txt"], "unsupported extension; use .png"),
        (["--out", "{tmp}/r.png", "--plot", "{tmp}/r.png"], "are the same file"),
        (["--out", "{tmp}/data/case_a/label.nii.gz"], "is case case_a's label map"),
        (["--out", "{tmp}/data/case_a/labels.json"], "is case case_a's labels"),
        pytest.param(["--out", "{tmp}/read_only/r.csv"], "is not writable", marks=needs_permissions),
    ],
)
def test_evaluate_refuses_bad_outputs_before_evaluating(tmp_path, data_dir, small_model_path, monkeypatch, capsys, options, message) -> None:
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "file.txt").write_text("a file", encoding="utf-8")
    (tmp_path / "read_only").mkdir(mode=0o555)
    (tmp_path / "r.csv").write_text("an earlier result\n", encoding="utf-8")

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the evaluation started before the outputs were checked")

    monkeypatch.setattr(evaluate_module, "evaluate", no_evaluation)
    before = _snapshot(tmp_path)
    argv = ["evaluate", str(data_dir), "--model", str(small_model_path), "--device", "cpu", "--clicks", "1"]
    assert main(argv + [o.format(tmp=tmp_path) for o in options]) == 2
    err = capsys.readouterr().err
    assert message in err and "nothing was written" in err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(("stopped", "max_bytes"), [("res.csv", 64), ("dice.png", 4096)])  # the CSV files are ~100 bytes, the plot ~20 kB
def test_evaluate_under_a_file_size_limit_keeps_every_earlier_output(tmp_path, data_dir, stopped, max_bytes) -> None:
    for name in ("res.csv", "res_summary.csv", "dice.png"):
        (tmp_path / name).write_text(f"an earlier {name}\n", encoding="utf-8")
    before = _snapshot(tmp_path)
    argv = ["evaluate", data_dir, "--method", "growcut", "--out", tmp_path / "res.csv", "--plot", tmp_path / "dice.png", "--threads", "1"]
    done = _run_limited(argv, max_bytes, tmp_path, code=CANNED_EVALUATE)
    assert done.returncode == 2, done.stderr
    assert f"cannot write '{tmp_path / stopped}'" in done.stderr and "ulimit -f" in done.stderr and "Traceback" not in done.stderr
    assert _snapshot(tmp_path) == before


# -- the transaction itself ----------------------------------------------------------------------------


@pytest.mark.parametrize("failure", ["writer", "second_move"])
def test_atomic_files_replace_every_destination_or_none(tmp_path, failure, caplog) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("old a", encoding="utf-8")
    if failure == "second_move":
        second.mkdir()  # a folder in the way: the first file is moved, the second move fails
    else:
        second.write_text("old b", encoding="utf-8")
    with pytest.raises(OSError), atomic_files() as files:
        files.path(first).write_text("new a", encoding="utf-8")
        files.path(second).write_text("new b", encoding="utf-8")
        if failure == "writer":
            raise OSError(28, "No space left on device")
    if failure == "writer":
        assert first.read_text(encoding="utf-8") == "old a" and second.read_text(encoding="utf-8") == "old b"
    else:  # the one case a rename cannot be undone: it is logged
        assert first.read_text(encoding="utf-8") == "new a" and "after" in caplog.text and str(first) in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
