"""Installing what the module needs, when the user first runs the model (never at import or startup).

Design: PyTorch comes through the PyTorch extension (``PyTorchUtils``, the module's
``EXTENSION_DEPENDS``), which picks the build matching the GPU and driver; everything else comes
from ``Resources/requirements.txt`` through Slicer's ``slicer.packaging.pip_ensure``, or on older
Slicer through a version check of our own. Both ask the user first; both are skipped in testing
mode, because tests must not change the Python environment.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

import slicer

logger = logging.getLogger(__name__)

#: PyTorch floor: the code uses torch.inference_mode and scaled_dot_product_attention (torch 2.x);
#: 2.2 is the oldest version the project's tests ran with.
TORCH_REQUIREMENT = ">=2.2"


def ensureDependencies(
    requirementsPath: str,
    confirm: Callable[[str], bool] | None = None,
    installInBackground: Callable[[list[list[str]]], bool] | None = None,
) -> bool:
    """Install PyTorch (PyTorch extension) and the listed requirements if missing.

    Args:
        requirementsPath: the module's ``Resources/requirements.txt``.
        confirm: asks the user a yes/no question; None asks with Slicer's OK/Cancel dialog.
        installInBackground: runs the PyTorch install commands (:func:`.torch_install.installCommands`)
            without freezing the application and returns whether they succeeded; None installs
            in the foreground through PyTorchUtils.

    Returns:
        False if the user declined to install PyTorch, True when everything is there (or in testing mode).

    Raises:
        RuntimeError: the PyTorch extension is missing, or the user declined the other packages.
    """
    if slicer.app.testingEnabled():
        return True
    try:
        import PyTorchUtils
    except ModuleNotFoundError as exc:
        raise RuntimeError(
            "SAM-Med3D needs the 'PyTorch' extension: install it from the Extensions Manager, restart Slicer and try again"
        ) from exc
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled():
        if installInBackground is None:
            if torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                return False
        else:
            from .torch_install import installCommands, torchImportable

            ask = confirm or (lambda text: slicer.util.confirmOkCancelDisplay(text, windowTitle="SAM-Med3D"))
            if not ask(
                f"SAM-Med3D needs PyTorch {TORCH_REQUIREMENT}. Install it now (light-the-torch picks the build for "
                "your GPU; a few minutes, Slicer stays usable and the panel shows the progress)?"
            ):
                return False
            if not installInBackground(installCommands(torchLogic, TORCH_REQUIREMENT)):
                return False
            if not torchImportable():
                raise RuntimeError("PyTorch was installed but cannot be found: restart Slicer and try again")
    else:
        installed = installedTorchVersion()
        if installed is not None and not torchVersionOk(installed):
            ask = confirm or (lambda text: slicer.util.confirmOkCancelDisplay(text, windowTitle="SAM-Med3D"))
            if not ask(
                f"SAM-Med3D needs PyTorch {TORCH_REQUIREMENT}, but PyTorch {installed} is installed. Upgrade it now "
                "through the PyTorch extension? Slicer must be restarted afterwards."
            ):
                return False
            if torchLogic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                return False
            raise RuntimeError(f"PyTorch was upgraded from {installed}: restart Slicer to use it (the old version is still loaded)")
    pipEnsure(requirementsPath, confirm)
    return True


def installedTorchVersion() -> str | None:
    """The installed torch's version from its package metadata, without importing it.

    Importing torch locks its files (on Windows) and would keep an old version loaded; reading
    the metadata does neither (PyTorchUtils checks ``torchInstalled`` the same way).
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None


def torchMissingMessage() -> str | None:
    """Why the model cannot run here (no PyTorch, or one older than the floor), or None when it can."""
    installed = installedTorchVersion()
    if installed is not None and torchVersionOk(installed):
        return None
    found = f"PyTorch {installed}" if installed else "no PyTorch"
    return f"it needs PyTorch {TORCH_REQUIREMENT} and found {found} (install the PyTorch extension)"


def torchVersionOk(installed: str) -> bool:
    """Whether ``installed`` (e.g. ``"2.1.2+cu121"``) meets :data:`TORCH_REQUIREMENT`; local labels count as the release."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        release = Version(installed).public
    except InvalidVersion:
        return False
    return SpecifierSet(TORCH_REQUIREMENT).contains(release, prereleases=True)


def pipEnsure(requirementsPath: str, confirm: Callable[[str], bool] | None) -> None:
    """Install what ``requirements.txt`` lists and is missing, after asking (Slicer's own helper when present).

    Args:
        requirementsPath: a pip requirements file; comments and option lines (``-...``) are skipped.
        confirm: asks the user a yes/no question; None asks with Slicer's OK/Cancel dialog.

    Raises:
        RuntimeError: the user declined to install missing packages.
    """
    for moduleName in ("slicer.packaging", "slicer.pydeps"):
        try:
            helpers = importlib.import_module(moduleName)
        except ModuleNotFoundError:
            continue
        if hasattr(helpers, "pip_ensure") and hasattr(helpers, "load_requirements"):
            helpers.pip_ensure(helpers.load_requirements(requirementsPath), requester="SAM-Med3D")
            return
    # Older Slicer: check the installed versions ourselves, ask, then pip install.
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import Requirement

    missing = []
    with open(requirementsPath, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", "-")):
                continue
            requirement = Requirement(line)
            try:
                if version(requirement.name) in requirement.specifier:
                    continue
            except PackageNotFoundError:
                pass  # not installed: falls through to "missing"
            missing.append(str(requirement))
    if not missing:
        return
    ask = confirm or (lambda text: slicer.util.confirmOkCancelDisplay(text, windowTitle="SAM-Med3D"))
    if not ask(f"SAM-Med3D needs these Python packages: {', '.join(missing)}. Install them now?"):
        raise RuntimeError(f"SAM-Med3D cannot run without {', '.join(missing)}")
    logger.info("SAM-Med3D: installing %s", " ".join(missing))
    slicer.util.pip_install(" ".join(missing))
