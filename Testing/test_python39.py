"""Slicer 5.8 ships Python 3.9: everything Slicer imports must run there (checked without a 3.9 interpreter).

vermin reads the syntax, the standard-library calls and their keyword arguments (``zip(strict=)``,
``match``, PEP 604 unions outside annotations, ...) and reports the oldest Python that runs them.
The module, its logic package and the core are what Slicer imports; ``training`` is checked too,
because ``pip install`` in Slicer's Python takes the whole distribution (requires-python >= 3.9).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: vermin has no ``python -m vermin``; its console entry point is ``vermin.main``.
VERMIN = [sys.executable, "-c", "import sys, vermin; sys.argv[0] = 'vermin'; sys.exit(vermin.main())"]


@pytest.mark.parametrize("folder", ["SAMMed3D", "SAMMed3DLib", "training"])
def test_code_runs_on_python_3_9(folder: str) -> None:
    pytest.importorskip("vermin", reason="vermin is part of the test extras: pip install -e '.[test]'")
    out = subprocess.run(
        [*VERMIN, "--no-tips", "--violations", "--eval-annotations", "-t=3.9-", "--no-parse-comments", str(ROOT / folder)],
        capture_output=True, text=True, cwd=ROOT,
    )
    report = out.stdout + out.stderr
    assert out.returncode == 0 and "Minimum required versions: 3.9" in report, f"code newer than Python 3.9 in {folder}/:\n{report}"


def test_vermin_catches_what_python_3_9_cannot_run(tmp_path: Path) -> None:
    """The check above can fail: a file with zip(strict=True) is reported."""
    pytest.importorskip("vermin", reason="vermin is part of the test extras")
    (tmp_path / "new.py").write_text("pairs = list(zip([1], [2], strict=True))\n", encoding="utf-8")
    out = subprocess.run([*VERMIN, "--no-tips", "--violations", "-t=3.9-", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode != 0 and re.search(r"zip\(strict\)", out.stdout)


def test_requires_python_admits_slicer_5_8() -> None:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^requires-python = ">=3\.9"$', text, re.M), "Slicer 5.8's Python 3.9 must be allowed"
