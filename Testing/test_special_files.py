"""Inputs that would block a reader forever (FIFO, socket) are refused with a clear error, fast.

Each read runs in a thread with a deadline: if a check regressed, the test fails instead of
hanging, and a writer opened on the FIFO then releases the blocked reader.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SAMMed3DLib.cases import Case, read_case_images
from SAMMed3DLib.cli import main
from SAMMed3DLib.errors import DataError, ImageError
from SAMMed3DLib.io import read_image
from SAMMed3DLib.special_files import special_file_kind

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs need a POSIX system")

#: Seconds a refusal may take (it is a few stat calls; a blocked read never returns).
DEADLINE_S = 10.0


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _volume(path: Path) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)), str(path))
    return path


def _unblock(fifos: list[Path]) -> None:
    for fifo in fifos:  # a reader blocked in open() returns once a writer opens the FIFO
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def _within_deadline(call: Callable[[], object], fifos: list[Path]) -> tuple[object, BaseException | None]:
    """Run ``call`` in a thread: (its return value, what it raised). Fails past the deadline."""
    outcome: list[tuple[object, BaseException | None]] = []

    def target() -> None:
        try:
            outcome.append((call(), None))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append((None, exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(DEADLINE_S)
    if thread.is_alive():
        _unblock(fifos)
        thread.join(DEADLINE_S)
        pytest.fail(f"the read blocked for more than {DEADLINE_S} s")
    return outcome[0]


def _fifo_file(d: Path) -> tuple[Path, list[Path]]:
    fifo = _fifo(d / "pipe.nii.gz")
    return fifo, [fifo]


def _link_to_fifo(d: Path) -> tuple[Path, list[Path]]:
    fifo = _fifo(d / "pipe")
    (d / "link.nrrd").symlink_to(fifo)
    return d / "link.nrrd", [fifo]


def _fifo_in_dicom_folder(d: Path) -> tuple[Path, list[Path]]:
    (d / "dicom").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((1, 5, 6), np.int16)), str(d / "dicom" / "slice.dcm"))
    return d / "dicom", [_fifo(d / "dicom" / "stray")]


def _mhd_with_fifo_data(d: Path) -> tuple[Path, list[Path]]:
    header = _volume(d / "vol.mhd")
    raw = d / "vol.raw"
    raw.unlink()
    return header, [_fifo(raw)]


def _nhdr_with_fifo_data(d: Path) -> tuple[Path, list[Path]]:
    header = d / "vol.nhdr"
    header.write_text("NRRD0004\ntype: float\ndimension: 3\nsizes: 6 5 4\nencoding: raw\nendian: little\ndata file: vol.raw\n")
    return header, [_fifo(d / "vol.raw")]


def _socket_file(d: Path) -> tuple[Path, list[Path]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(d / "s.nii"))  # the path stays a socket after it is closed
    return d / "s.nii", []


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (_fifo_file, r"image '.*pipe\.nii\.gz' is a FIFO \(named pipe\), not a regular file or a DICOM folder.*block forever"),
        (_link_to_fifo, r"link\.nrrd' is a FIFO"),
        (_fifo_in_dicom_folder, r"folder '.*dicom' holds 'stray', which is a FIFO.*copy the DICOM slices"),
        (_mhd_with_fifo_data, r"the data file of '.*vol\.mhd', '.*vol\.raw' is a FIFO"),
        (_nhdr_with_fifo_data, r"the data file of '.*vol\.nhdr', '.*vol\.raw' is a FIFO"),
        (_socket_file, r"s\.nii' is a socket"),
    ],
    ids=["fifo", "symlink_to_fifo", "fifo_in_dicom_folder", "mhd_data_fifo", "nhdr_data_fifo", "socket"],
)
def test_read_image_refuses_what_could_block(tmp_path, make, match) -> None:
    path, fifos = make(tmp_path)
    _, raised = _within_deadline(lambda: read_image(path), fifos)
    assert isinstance(raised, ImageError), raised
    assert re.search(match, str(raised)), str(raised)


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda d: _volume(d / "v.nrrd"), None),
        (lambda d: d, None),
        (lambda d: d / "missing", None),
        (lambda d: _fifo(d / "p"), "a FIFO (named pipe)"),
        (lambda d: Path(os.devnull), "a character device"),
    ],
    ids=["file", "folder", "missing", "fifo", "devnull"],
)
def test_special_file_kind(tmp_path, make, kind) -> None:
    assert special_file_kind(make(tmp_path)) == kind


@pytest.mark.parametrize("name", ["v.mhd", "v.nii.gz"])
def test_regular_files_still_read(tmp_path, name) -> None:
    target = _volume(tmp_path / name)
    (tmp_path / "link").symlink_to(target.name)  # a link to a regular file is fine
    assert read_image(target).GetSize() == (6, 5, 4)


def test_case_reader_refuses_a_fifo(tmp_path) -> None:
    fifo = _fifo(tmp_path / "label.nii.gz")
    case = Case("c", _volume(tmp_path / "image.nii.gz"), fifo, {1: "organ"}, "CT", "")
    _, raised = _within_deadline(lambda: read_case_images(case), [fifo])
    assert isinstance(raised, DataError) and "is a FIFO (named pipe)" in str(raised), raised


def test_segment_command_refuses_a_fifo_in_one_line(tmp_path, capsys) -> None:
    fifo = _fifo(tmp_path / "pipe.nii.gz")
    code, raised = _within_deadline(lambda: main(["segment", str(fifo), "--point", "1,2,3", "--out", str(tmp_path / "m.nii.gz")]), [fifo])
    assert (code, raised) == (2, None)
    err = capsys.readouterr().err
    assert err.startswith("sammed3d segment: error: image") and "FIFO" in err and err.count("\n") == 1
