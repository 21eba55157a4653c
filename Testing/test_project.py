"""The project's own promises: README commands and CI stay in step."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_readme_has_exactly_two_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert all("\n" not in c for c in commands)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = _readme_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    assert test_command in ci_lines


def test_the_built_wheel_carries_the_core_and_the_shipped_model(tmp_path: Path) -> None:
    """A non-editable install (``pip install .``, a wheel) must hold the default model and its card."""
    import json
    import shutil
    import subprocess
    import sys
    import zipfile

    import pytest

    if shutil.which("git") is None or subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: the wheel is built from the tracked files")
    pytest.importorskip("setuptools", reason="building the wheel without network needs setuptools in this environment")
    # Build from a copy of the tracked files, so the checkout gets no build/ or *.egg-info.
    source = tmp_path / "src"
    for name in subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out), str(source)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = out.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    registry = json.loads((ROOT / "SAMMed3DLib" / "Resources" / "models.json").read_text(encoding="utf-8"))
    shipped = {f"SAMMed3DLib/Resources/{e[k]}" for e in registry["models"].values() for k in ("file", "card") if e.get(k)}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "SAMMed3DLib/Resources/models.json" in names and "SAMMed3DLib/session.py" in names
    assert "training/trainer.py" in names
    assert not any(n.startswith(("SAMMed3D/", "Testing/")) for n in names), "the wheel holds the core and training only"
    size = zipfile.ZipFile(wheel).getinfo("SAMMed3DLib/Resources/Models/default.pth").file_size
    assert size == (ROOT / "SAMMed3DLib" / "Resources" / "Models" / "default.pth").stat().st_size


def test_the_package_sets_passive_openmp_waiting_before_torch_loads_unless_the_user_chose() -> None:
    """Through the Python API too (not only the CLI): spinning OpenMP threads collapse on a busy core."""
    import os
    import subprocess
    import sys

    code = "import os, SAMMed3DLib, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip() == "ACTIVE"
