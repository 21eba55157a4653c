"""``sammed3d web``: the interactive loop in a browser, on Slicer core (trame-slicer).

Design:

- The page shows the axial, coronal and sagittal slice views and a 3D view of a real MRML scene
  (slicer-core), rendered on the server through VTK's EGL window and streamed to the browser by
  trame-slicer's remote-controlled areas. A left click in a slice view places a markups point
  exactly as in Slicer, and the Slicer module's own logic
  (``SAMMed3D/InteractiveSegmentationLogic``: prepare / compute / apply, the one undo history)
  turns the points into the segment. There is no second segmentation path: what the desktop
  module writes, the page writes, into the same kind of segmentation and markups nodes.
- The model runs off the server's event loop: :mod:`.editing` prepares an update on the loop,
  computes it on one persistent worker thread and applies it back on the loop; a click made
  meanwhile is kept and runs next with all the points (a newer click supersedes a pending one).
- Modules: :mod:`.scene` (volumes, segmentations, window/level presets), :mod:`.saving`
  (.seg.nrrd, NIfTI and markups JSON, all or nothing), :mod:`.editing` (clicks → updates, undo,
  segments), :mod:`.ui` (the page), :mod:`.app` (the wiring), :mod:`.server` (start-up, binding).
- Importing this package imports neither trame nor slicer nor vtk: the ``web`` extra is optional
  (``pip install -e ".[web]"``) and :func:`missing_web_extra` says what is missing.
- The logic lives in the Slicer module's folder, which a source checkout (or an installed
  extension) has and a wheel does not: :func:`add_logic_to_path` finds it or says so.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from ..errors import ConfigError

#: The command that installs what the web app needs.
WEB_EXTRA_INSTALL = 'pip install -e ".[web]"'

#: Top-level modules the web app imports, with the PyPI package that provides each.
WEB_REQUIREMENTS: dict[str, str] = {
    "trame": "trame",
    "trame_slicer": "trame-slicer[standalone]",
    "trame_vuetify": "trame-vuetify",
    "slicer": "slicer-core",
    "vtk": "vtk",
}

#: VTK's render window class that needs no X server (Mesa's llvmpipe without a GPU).
EGL_WINDOW = "vtkEGLRenderWindow"


def missing_web_extra() -> str | None:
    """Why the web app cannot start here (what to install), or None when everything is there."""
    missing = [package for module, package in WEB_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]
    if not missing:
        return None
    return (
        f"the web app needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
        f"run {WEB_EXTRA_INSTALL} in a source checkout (Python 3.10 or newer)"
    )


def use_egl_rendering() -> None:
    """Render without an X server: VTK's EGL window, unless the user chose another one.

    Must run before the first VTK render window is created.
    """
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", EGL_WINDOW)


def logic_folder_candidates() -> list[Path]:
    """Folders that may hold ``InteractiveSegmentationLogic``: a source checkout's ``SAMMed3D/``
    beside ``SAMMed3DLib/``, or the folder holding both (an installed Slicer extension)."""
    core = Path(__file__).resolve().parents[1]
    return [core.parent / "SAMMed3D", core.parent]


def add_logic_to_path() -> Path | None:
    """Make ``InteractiveSegmentationLogic`` importable; return the folder put on ``sys.path``.

    Returns None when it was importable already.

    Raises:
        ConfigError: it is nowhere to be found (a wheel install carries only the core).
    """
    if importlib.util.find_spec("InteractiveSegmentationLogic") is not None:
        return None
    for folder in logic_folder_candidates():
        if (folder / "InteractiveSegmentationLogic" / "__init__.py").is_file():
            sys.path.insert(0, str(folder))
            return folder
    raise ConfigError(
        "the web app runs the Slicer module's logic (SAMMed3D/InteractiveSegmentationLogic), which only a source "
        "checkout carries: clone the repository and run "
        f"{WEB_EXTRA_INSTALL} there (looked in {', '.join(str(f) for f in logic_folder_candidates())})"
    )
