"""The shared all-or-nothing writer: the destination holds the old file or the whole new one, no temporary is left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from SAMMed3DLib.atomic import atomic_open, atomic_path, atomic_write_json, atomic_write_text, move_into_place


def test_atomic_open_replaces_the_file_only_when_complete(tmp_path: Path) -> None:
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")
    with atomic_open(target) as handle:
        handle.write(b"new ")
        assert target.read_bytes() == b"old"  # nothing visible until the block ends
        handle.write(b"bytes")
    assert target.read_bytes() == b"new bytes"
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "report.csv"
    target.write_text("old\n", encoding="utf-8")
    with pytest.raises(type(error)), atomic_open(target, "w", encoding="utf-8") as handle:
        handle.write("half a report")
        raise error
    assert target.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.csv"]


def test_atomic_path_keeps_the_suffix_a_writer_needs(tmp_path: Path) -> None:
    target = tmp_path / "seg.nii.gz"
    seen: list[Path] = []
    with atomic_path(target, suffix=".nii.gz") as temp:
        seen.append(temp)
        assert temp.parent == tmp_path and temp.name.startswith(".seg.nii.gz.") and temp.name.endswith(".nii.gz")
        assert not temp.exists()
        temp.write_bytes(b"image")
    assert target.read_bytes() == b"image" and not seen[0].exists()


def test_a_failed_move_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.png"
    target.mkdir()  # a folder is in the way: written, then os.replace fails
    with pytest.raises(OSError), atomic_path(target, suffix=".png") as temp:
        temp.write_bytes(b"picture")
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"] and not any(target.iterdir())


def test_missing_folder_is_an_os_error_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), atomic_open(tmp_path / "no" / "such" / "file.bin") as handle:
        handle.write(b"x")
    assert list(tmp_path.iterdir()) == []


def test_text_and_json_helpers(tmp_path: Path) -> None:
    text = atomic_write_text(tmp_path / "a.txt", "grüße\n")
    assert text.read_bytes() == "grüße\n".encode()
    doc = {"b": [1, 2.5], "a": "ü"}
    path = atomic_write_json(tmp_path / "a.json", doc, indent=1, sort_keys=True)
    assert path.read_text(encoding="utf-8") == json.dumps(doc, indent=1, sort_keys=True)
    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "bad.json", {"x": object()})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.txt"]


def test_only_write_modes_are_accepted(tmp_path: Path) -> None:
    for mode in ("a", "r+b", "x"):
        with pytest.raises(ValueError, match="mode must be one of"), atomic_open(tmp_path / "f", mode):
            pass
    assert list(tmp_path.iterdir()) == []


def test_move_into_place_replaces_the_target(tmp_path: Path) -> None:
    part, target = tmp_path / "m.pth.part", tmp_path / "m.pth"
    part.write_bytes(b"complete")
    target.write_bytes(b"stale")
    move_into_place(part, target)
    assert target.read_bytes() == b"complete" and not part.exists()


def test_the_module_is_torch_free() -> None:
    code = "import sys, SAMMed3DLib.atomic\nassert 'torch' not in sys.modules\nprint('ok')\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
