"""The Slicer extension's packaging and GUI wiring, checked without Slicer.

The Qt GUI cannot run here (slicer-core has MRML but no Qt application), so the widget is checked
statically instead: every control bound with ``SlicerParameterName`` in the .ui file matches a
field of the ``@parameterNodeWrapper`` class with a widget type the wrapper can connect, every
``self.ui.<name>`` the widget code uses exists in the .ui file, every MRML widget gets the scene,
and the combo-box choices are values the logic accepts. The helpers ``SAMMed3D.py`` imports from its
sub-package ``SAMMed3DModule`` are read the same way (and run in ``test_slicer_module_helpers.py``).
The CMake lists must name every Python file and resource, so that teammates' new files are packaged.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "SAMMed3D"
CORE = ROOT / "SAMMed3DLib"
UI_FILE = MODULE / "Resources" / "UI" / "SAMMed3D.ui"
MODULE_SCRIPT = MODULE / "SAMMed3D.py"
HELPERS = MODULE / "SAMMed3DModule"
#: Every Python file of the module that Slicer loads: the main script and its helper sub-package.
MODULE_CODE = [MODULE_SCRIPT, *sorted(HELPERS.glob("*.py"))]
sys.path.insert(0, str(MODULE))


def _cmake_list(path: Path, name: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"set\({name}\s+(.*?)\)", text, flags=re.S)
    assert match, f"{name} not found in {path}"
    items = [line.split("#")[0].strip() for line in match.group(1).splitlines()]
    return [item.replace("${MODULE_NAME}", "SAMMed3D") for item in items if item]


def _cmake_set(path: Path, name: str) -> str:
    match = re.search(rf'set\({name} "(.*?)"\)', path.read_text(encoding="utf-8"))
    assert match, f"{name} not set in {path}"
    return match.group(1)


def _s4ext() -> dict[str, str]:
    fields = {}
    for line in (ROOT / "SAMMed3D.s4ext").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            fields[key] = value.strip()
    return fields


def _module_ast(path: Path = MODULE_SCRIPT) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _class(tree: ast.Module, name: str, where: str = "SAMMed3D.py") -> ast.ClassDef:
    found = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    assert found, f"class {name} missing from {where}"
    return found[0]


def _imported_from(tree: ast.Module, module: str) -> set[str]:
    """Names a module's top level imports with ``from <module> import ...``."""
    return {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == module for a in n.names}


def _ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).getroot().iter("widget")}


def _string_property(widget: ET.Element, name: str) -> str | None:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            string = prop.find("string")
            return string.text if string is not None else None
    return None


# -- CMake and extension description ------------------------------------------------------------


def test_every_python_file_of_the_module_is_packaged() -> None:
    listed = _cmake_list(MODULE / "CMakeLists.txt", "MODULE_PYTHON_SCRIPTS")
    on_disk = sorted(
        str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts and p.parts[len(MODULE.parts)] != "Testing"
    )
    assert len(listed) == len(set(listed)), "duplicates in MODULE_PYTHON_SCRIPTS"
    missing = sorted(set(on_disk) - set(listed))
    assert not missing, f"add these files to MODULE_PYTHON_SCRIPTS in SAMMed3D/CMakeLists.txt: {missing}"
    stale = sorted(set(listed) - set(on_disk))
    assert not stale, f"MODULE_PYTHON_SCRIPTS lists files that do not exist: {stale}"


def test_every_resource_of_the_module_is_packaged() -> None:
    listed = set(_cmake_list(MODULE / "CMakeLists.txt", "MODULE_PYTHON_RESOURCES"))
    on_disk = {str(p.relative_to(MODULE)) for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    assert on_disk == listed, f"MODULE_PYTHON_RESOURCES and SAMMed3D/Resources differ: {sorted(on_disk ^ listed)}"


def test_every_file_of_the_core_is_installed_beside_the_module() -> None:
    top = ROOT / "CMakeLists.txt"
    scripts = _cmake_list(top, "CORE_PYTHON_SCRIPTS")
    on_disk = sorted(str(p.relative_to(ROOT)) for p in CORE.rglob("*.py") if "__pycache__" not in p.parts)
    assert len(scripts) == len(set(scripts)), "duplicates in CORE_PYTHON_SCRIPTS"
    assert sorted(scripts) == on_disk, f"CORE_PYTHON_SCRIPTS and SAMMed3DLib/ differ: {sorted(set(scripts) ^ set(on_disk))}"
    resources = set(_cmake_list(top, "CORE_PYTHON_RESOURCES"))
    registry = json.loads((CORE / "Resources" / "models.json").read_text(encoding="utf-8"))
    shipped = {f"SAMMed3DLib/Resources/{entry[key]}" for entry in registry["models"].values() for key in ("file", "card") if entry.get(key)}
    assert shipped, "models.json names no shipped model file"
    assert shipped <= resources, f"the shipped model files must be installed: {sorted(shipped - resources)}"
    res_on_disk = {str(p.relative_to(ROOT)) for p in (CORE / "Resources").rglob("*") if p.is_file()}
    assert res_on_disk == resources, f"CORE_PYTHON_RESOURCES and SAMMed3DLib/Resources differ: {sorted(res_on_disk ^ resources)}"
    # Into the folder that holds SAMMed3D.py (on sys.path in Slicer), keeping the SAMMed3DLib/ prefix.
    call = re.search(r"ctkMacroCompilePythonScript\((.*?)\)\n", top.read_text(encoding="utf-8"), re.S)
    assert call, "the top-level CMakeLists.txt must install the core with ctkMacroCompilePythonScript"
    args = call.group(1)
    assert "${CORE_PYTHON_SCRIPTS}" in args and "${CORE_PYTHON_RESOURCES}" in args
    assert "DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}" in args
    assert "INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}" in args and "NO_INSTALL_SUBDIR" in args


def test_the_top_level_is_the_design_cards() -> None:
    expected = {"SAMMed3D", "SAMMed3DLib", "Resources", "Testing", "training", "CMakeLists.txt", "SAMMed3D.s4ext", "README.md"}
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    if tracked.returncode != 0:
        pytest.skip("not a git checkout")
    top_level = {line.split("/")[0] for line in tracked.stdout.splitlines()}
    assert expected <= top_level, sorted(expected - top_level)
    assert not (MODULE / "SAMMed3DLib").exists(), "the core lives at the top, not inside the module folder"


def test_the_module_finds_the_core_of_a_source_checkout() -> None:
    """Slicer with SAMMed3D/ in "additional module paths": the core one folder up becomes importable."""
    tree = _module_ast()
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_addCoreFromSourceCheckout")
    assert any(isinstance(n, ast.Expr) and isinstance(n.value, ast.Call) and getattr(n.value.func, "id", "") == function.name for n in tree.body)
    namespace: dict = {"os": __import__("os"), "sys": sys, "__file__": str(MODULE_SCRIPT)}
    exec(compile(ast.Module(body=[function], type_ignores=[]), str(MODULE_SCRIPT), "exec"), namespace)
    saved = list(sys.path)
    try:
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
        namespace[function.name]()
        assert str(ROOT) in sys.path
    finally:
        sys.path[:] = saved


def test_module_cmake_registers_the_self_test_and_generic_tests() -> None:
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "WITH_GENERIC_TESTS" in text
    assert re.search(r"if\(BUILD_TESTING\).*slicer_add_python_unittest\(SCRIPT \$\{MODULE_NAME\}\.py\).*add_subdirectory\(Testing\)", text, re.S)
    testing = (MODULE / "Testing" / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "slicer_add_python_unittest" in testing and "SAMMed3D.py" in testing


#: The one project home of the extension (the upstream SAM-Med3D repository holds no extension).
PROJECT_HOME = "https://github.com/SlicerSAMMed3D/SlicerSAMMed3D"
#: Keys of Slicer's extensions catalog entry schema v1.0.2 (``additionalProperties`` is false).
CATALOG_KEYS = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies", "dicom_support_rule",
                "build_subdirectory", "enabled", "tier"}


def _local_file(url: str) -> Path:
    """The repository file a raw URL of the project names (fails for any other URL)."""
    prefix = PROJECT_HOME.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/main/"
    assert url.startswith(prefix), f"{url} is not a file of {PROJECT_HOME}"
    return ROOT / url[len(prefix):]


def test_extension_description_agrees_in_cmake_s4ext_and_the_catalog_entry() -> None:
    top = ROOT / "CMakeLists.txt"
    text = top.read_text(encoding="utf-8")
    assert "add_subdirectory(SAMMed3D)" in text
    assert "include(${Slicer_EXTENSION_CPACK})" in text and "find_package(Slicer REQUIRED)" in text
    s4ext = _s4ext()
    entry = json.loads((ROOT / "SAMMed3D.json").read_text(encoding="utf-8"))
    assert set(entry) <= CATALOG_KEYS and {"$schema", "category", "scm_url"} <= set(entry)
    assert re.fullmatch(r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1\.0\.\d\.json#", entry["$schema"])
    assert isinstance(entry["tier"], int) and 1 <= entry["tier"] <= 5 and entry["build_subdirectory"] == s4ext["build_subdirectory"] == "."
    assert _cmake_set(top, "EXTENSION_CATEGORY") == s4ext["category"] == entry["category"] == "Segmentation"
    assert _cmake_set(top, "EXTENSION_DEPENDS").split() == s4ext["depends"].split() == entry["build_dependencies"] == ["PyTorch"]
    assert _cmake_set(top, "EXTENSION_HOMEPAGE") == s4ext["homepage"] == PROJECT_HOME
    assert s4ext["scmurl"] == entry["scm_url"] == PROJECT_HOME + ".git" and s4ext["scmrevision"] == entry["scm_revision"] == "main"
    for cmake_name, key in (("EXTENSION_DESCRIPTION", "description"), ("EXTENSION_CONTRIBUTORS", "contributors"),
                            ("EXTENSION_ICONURL", "iconurl"), ("EXTENSION_SCREENSHOTURLS", "screenshoturls")):
        assert _cmake_set(top, cmake_name) == s4ext[key], cmake_name
    contributors = _cmake_set(top, "EXTENSION_CONTRIBUTORS")
    assert "for 3D Slicer contributors" not in contributors and "for Slicer developers" not in contributors, "no placeholder"
    assert "uni-medical" not in text and "uni-medical" not in (ROOT / "SAMMed3D.s4ext").read_text(encoding="utf-8")
    icon = _local_file(_cmake_set(top, "EXTENSION_ICONURL"))
    assert icon == ROOT / "Resources" / "SAMMed3D.png" and icon.is_file()
    screenshots = _cmake_set(top, "EXTENSION_SCREENSHOTURLS").split()
    assert screenshots, "the catalogue needs at least one screenshot (Resources/Screenshots)"
    assert any(url.endswith("/slicer-module-panel.png") for url in screenshots), "the module panel is shown"
    for url in screenshots:
        local = _local_file(url)
        assert local.is_file() and local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"screenshot {url} is not a PNG of this repository"
    module = _class(_module_ast(), "SAMMed3D")
    assert f'self.parent.contributors = ["{contributors.split(" (")[0]}' in ast.unparse(module).replace("'", '"'), "the module names the same team"


@pytest.mark.parametrize("icon", [ROOT / "Resources" / "SAMMed3D.png", MODULE / "Resources" / "Icons" / "SAMMed3D.png"], ids=["extension", "module"])
def test_icon_is_a_valid_128_pixel_png(icon: Path) -> None:
    data = icon.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth) == (128, 128, 8)
    idat = b"".join(data[i + 8 : i + 8 + struct.unpack(">I", data[i : i + 4])[0]] for i in [m.start() - 4 for m in re.finditer(b"IDAT", data)])
    channels = {2: 3, 6: 4}[color]
    assert len(zlib.decompress(idat)) == height * (1 + width * channels)


def test_requirements_exclude_torch_and_parse() -> None:
    from packaging.requirements import Requirement

    lines = [l.strip() for l in (MODULE / "Resources" / "requirements.txt").read_text(encoding="utf-8").splitlines()]
    requirements = [Requirement(l) for l in lines if l and not l.startswith("#")]
    assert requirements and all(r.name.lower() != "torch" for r in requirements)


# -- the GUI, statically ---------------------------------------------------------------------------

#: Widget classes the parameterNodeWrapper connects, per field type.
_CONNECTABLE = {"qMRMLNodeComboBox": "node", "QCheckBox": "bool", "QComboBox": "enum", "ctkPathLineEdit": "path"}


def _parameter_fields() -> dict[str, str]:
    cls = _class(_module_ast(), "SAMMed3DParameterNode")
    assert any(isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in cls.decorator_list)
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def _enums() -> dict[str, dict[str, str]]:
    """The option enums of ``SAMMed3DModule/choices.py``, which ``SAMMed3D.py`` imports for the parameter node."""
    out = {}
    for node in _module_ast(HELPERS / "choices.py").body:
        if isinstance(node, ast.ClassDef) and any(ast.unparse(b) == "enum.Enum" for b in node.bases):
            out[node.name] = {
                t.id: v.value.value
                for v in node.body
                if isinstance(v, ast.Assign)
                for t in v.targets
                if isinstance(t, ast.Name) and isinstance(v.value, ast.Constant)
            }
    imported = _imported_from(_module_ast(), "SAMMed3DModule.choices")
    assert set(out) <= imported, f"SAMMed3D.py must import {sorted(set(out) - imported)} from SAMMed3DModule.choices"
    return out


def test_every_bound_control_maps_to_a_parameter_node_field_of_a_matching_type() -> None:
    fields = _parameter_fields()
    enums = _enums()
    bound = {name: w for name, w in _ui_widgets().items() if _string_property(w, "SlicerParameterName")}
    assert len(bound) >= 7
    names = [_string_property(w, "SlicerParameterName") for w in bound.values()]
    assert len(names) == len(set(names)), "two controls bound to the same parameter"
    for widget_name, widget in bound.items():
        parameter = _string_property(widget, "SlicerParameterName")
        assert parameter in fields, f"{widget_name}: SlicerParameterName {parameter!r} is not a SAMMed3DParameterNode field"
        annotation = fields[parameter]
        kind = _CONNECTABLE.get(widget.get("class"))
        assert kind is not None, f"{widget_name}: the parameter node wrapper cannot connect a {widget.get('class')}"
        if kind == "node":
            assert annotation.startswith("vtkMRML"), (widget_name, annotation)
            node_types = [s.text for s in widget.iter("string") if s.text and s.text.startswith("vtkMRML")]
            assert annotation in node_types, f"{widget_name}: nodeTypes {node_types} do not include {annotation}"
        elif kind == "enum":
            assert annotation in enums, f"{widget_name}: a QComboBox needs an Enum field, got {annotation}"
        elif kind == "path":
            assert annotation == "pathlib.Path"
        else:
            assert annotation == kind
    # Fields without a control are the embedded Segment Editor's choices, copied by segment_editor.syncParameterNode.
    assert set(fields) - set(names) == {"inputVolume", "segmentation", "segmentId"}


def test_widget_code_only_uses_controls_that_exist_in_the_ui_file() -> None:
    used = {name for path in MODULE_CODE for name in re.findall(r"self\.ui\.(\w+)", path.read_text(encoding="utf-8"))}
    widgets = _ui_widgets()
    assert used, "the widget uses no .ui control"
    missing = sorted(used - set(widgets))
    assert not missing, f"SAMMed3D.py uses controls missing from SAMMed3D.ui: {missing}"
    for required in ("positivePlaceWidget", "negativePlaceWidget", "segmentEditorWidget", "undoButton", "redoButton",
                     "resetButton", "clearPointsButton", "nextSegmentButton", "statusLabel", "progressBar", "cancelButton"):
        assert required in used, f"the widget never wires {required}"
    assert widgets["positivePlaceWidget"].get("class") == widgets["negativePlaceWidget"].get("class") == "qSlicerMarkupsPlaceWidget"
    assert widgets["segmentEditorWidget"].get("class") == "qMRMLSegmentEditorWidget"
    # the embedded Segment Editor replaced the volume, segmentation and segment selectors
    assert not {w.get("class") for w in widgets.values()} & {"qMRMLSegmentSelectorWidget"}
    assert not [n for n, w in widgets.items() if w.get("class") == "qMRMLNodeComboBox" and "vtkMRMLSegmentationNode" in ET.tostring(w, encoding="unicode")]


def test_every_mrml_widget_receives_the_scene() -> None:
    root = ET.parse(UI_FILE).getroot()
    receivers = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)" and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"
    }
    mrml = {name for name, w in _ui_widgets().items() if w.get("class", "").startswith(("qMRML", "qSlicerMarkups")) and w.get("class") != "qMRMLWidget"}
    # The Segment Editor gets it in setup(), after its settings (connected in the .ui it would get it first).
    setup = ast.unparse(_widget_method("setup"))
    in_code = {"segmentEditorWidget"} if re.search(r"editor = self\.ui\.segmentEditorWidget\b.*editor\.setMRMLScene\(slicer\.mrmlScene\)", setup, re.S) else set()
    assert in_code and "segmentEditorWidget" not in receivers
    assert mrml and mrml <= receivers | in_code, f"these MRML widgets never get the scene: {sorted(mrml - receivers - in_code)}"


def test_combo_box_choices_are_values_the_logic_accepts() -> None:
    from InteractiveSegmentationLogic import WRITE_MODES, write_options_for_mode
    from SAMMed3DLib.devices import DEVICE_CHOICES

    enums = _enums()
    assert "WriteMode" not in enums, "how updates treat other segments is the Segment Editor's masking now"
    for mode in WRITE_MODES:  # still accepted by the logic (scripts)
        write_options_for_mode(mode)
    registry = json.loads((CORE / "Resources" / "models.json").read_text(encoding="utf-8"))["models"]
    assert {v for v in enums["ModelChoice"].values() if v != "file"} <= set(registry)
    assert set(enums["DeviceChoice"].values()) <= set(DEVICE_CHOICES)


def _top_level_imports(path: Path) -> set[str]:
    """The top-level packages a file imports at import time ("." for its own package)."""
    names = set()
    for n in _module_ast(path).body:
        if isinstance(n, ast.Import):
            names |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            names.add("." if n.level else n.module.split(".")[0])
    return names


@pytest.mark.parametrize("path", MODULE_CODE, ids=lambda p: str(p.relative_to(MODULE)))
def test_module_imports_nothing_heavy_at_import_time(path: Path) -> None:
    top_level = _top_level_imports(path)
    assert not top_level & {"torch", "SAMMed3DLib", "InteractiveSegmentationLogic", "numpy", "PyTorchUtils"}, top_level
    if path.parent == HELPERS:
        assert "qt" not in top_level, "the helpers stay free of Qt (the widget owns every Qt call)"
    compile(path.read_text(encoding="utf-8"), str(path), "exec")


def test_the_logic_package_never_imports_the_module_helpers() -> None:
    for path in (MODULE / "InteractiveSegmentationLogic").glob("*.py"):
        assert "SAMMed3DModule" not in path.read_text(encoding="utf-8"), f"{path.name} depends on the Slicer module's helpers"


@pytest.mark.parametrize(
    "package",
    ["InteractiveSegmentationLogic", *(f"SAMMed3DModule.{p.stem}" for p in sorted(HELPERS.glob("*.py")) if p.stem != "__init__")],
)
def test_the_logic_package_and_the_helpers_import_without_torch(package: str) -> None:
    code = "import sys; sys.path.insert(0, %r); import %s; print('torch' in sys.modules)" % (str(MODULE), package)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_self_test_exercises_the_logic_and_can_fail() -> None:
    cls = _class(_module_ast(), "SAMMed3DTest")
    methods = {n.name: n for n in cls.body if isinstance(n, ast.FunctionDef)}
    calls = {c.func.attr for c in ast.walk(methods["runTest"]) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)}
    tests = [m for m in methods if m.startswith("test_")]
    assert tests and set(tests) <= calls
    for name in tests:
        asserts = [c for c in ast.walk(methods[name]) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr.startswith("assert")]
        assert len(asserts) >= 3, f"{name} asserts too little to fail"
        source = ast.unparse(methods[name])
        assert "logic.segment(" in source
    assert "testLogic = False" not in MODULE_SCRIPT.read_text(encoding="utf-8")


def test_every_logic_method_the_widget_calls_exists() -> None:
    logic = _class(_module_ast(), "SAMMed3DLogic")
    assert [ast.unparse(b) for b in logic.bases] == ["ParameterNodeLogic", "ScriptedLoadableModuleLogic"]
    assert "ParameterNodeLogic" in _imported_from(_module_ast(), "SAMMed3DModule.module_logic")
    base = _class(_module_ast(HELPERS / "module_logic.py"), "ParameterNodeLogic", "SAMMed3DModule/module_logic.py")
    defined = {n.name for cls in (logic, base) for n in cls.body if isinstance(n, ast.FunctionDef)}
    used = set(re.findall(r"self\.logic\.(\w+)", MODULE_SCRIPT.read_text(encoding="utf-8")))
    assert len(used) >= 10 and not used - defined, f"the widget calls logic methods nobody defines: {sorted(used - defined)}"


def test_worker_thread_is_persistent_and_documented() -> None:
    cls = _class(_module_ast(HELPERS / "worker.py"), "ModelWorker", "SAMMed3DModule/worker.py")
    doc = ast.get_docstring(cls) or ""
    assert "persistent" in doc and "1.28 s" in doc and "0.14 s" in doc
    source = ast.unparse(cls)
    assert source.count("threading.Thread(") == 1
    # ... and the only thread the module starts; the widget keeps one worker for its lifetime.
    assert sum(path.read_text(encoding="utf-8").count("threading.Thread(") for path in MODULE_CODE) == 1
    assert "ModelWorker" in _imported_from(_module_ast(), "SAMMed3DModule.worker")
    widget_init = next(n for n in _class(_module_ast(), "SAMMed3DWidget").body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assert "self._worker = ModelWorker()" in ast.unparse(widget_init)


@pytest.mark.parametrize("name", ["SAMMed3DWidget", "SAMMed3DLogic", "SAMMed3DTest", "SAMMed3D"])
def test_template_classes_exist(name: str) -> None:
    _class(_module_ast(), name)


# -- shortcuts and waiting ----------------------------------------------------------------------


def _widget_method(name: str) -> ast.FunctionDef:
    cls = _class(_module_ast(), "SAMMed3DWidget")
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def test_shortcuts_are_single_keys_installed_on_enter_and_removed_on_exit_and_cleanup() -> None:
    """The bookkeeping itself runs on real QShortcut objects in test_slicer_qt.py; here: the widget calls it."""
    text = MODULE_SCRIPT.read_text(encoding="utf-8") + UI_FILE.read_text(encoding="utf-8")
    assert "Ctrl+Alt+" not in text, "Ctrl+Alt+letter is AltGr on many layouts"
    choices = _module_ast(MODULE / "SAMMed3DModule" / "choices.py")
    table = next(n.value for n in choices.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "SHORTCUTS")
    documented = {k.value for k in table.keys}
    install = next(c for c in ast.walk(_widget_method("enter")) if isinstance(c, ast.Call) and ast.unparse(c.func) == "self._shortcuts.install")
    assert {k.value for k in install.args[1].keys} == documented and all(len(k) == 1 for k in documented)
    for method in ("exit", "cleanup"):
        calls = {ast.unparse(c.func) for c in ast.walk(_widget_method(method)) if isinstance(c, ast.Call)}
        assert "self._shortcuts.remove" in calls, f"{method}() must remove the shortcuts (a module Reload runs cleanup)"
    help_text = MODULE_SCRIPT.read_text(encoding="utf-8").split("helpText", 1)[1].split('"""', 2)[1]
    assert all(f"{k} " in help_text for k in documented), "the module's help lists every shortcut"


def test_the_widget_waits_for_the_worker_pumping_events_instead_of_polling_from_the_event_loop() -> None:
    source = ast.unparse(_class(_module_ast(), "SAMMed3DWidget"))
    for waiting in ("_startJob", "_installTorch"):  # an update, and the first PyTorch install
        assert "waitPumpingEvents(job, self._pumpEvents)" in ast.unparse(_widget_method(waiting)), waiting
    assert "slicer.app.processEvents()" in ast.unparse(_widget_method("_pumpEvents"))
    assert "QTimer" not in source.replace("self._debounce = qt.QTimer()", ""), "a polling timer starves the worker of the GIL"


def test_the_self_test_skips_with_a_reason_without_pytorch_instead_of_failing() -> None:
    run = next(n for n in _class(_module_ast(), "SAMMed3DTest").body if isinstance(n, ast.FunctionDef) and n.name == "runTest")
    first, guard = run.body[0], run.body[1]
    assert isinstance(first, ast.Assign) and "torchMissingMessage" in ast.unparse(first), "check PyTorch before anything imports it"
    assert isinstance(guard, ast.If) and "self.skipTest(" in ast.unparse(guard)


def test_updates_follow_the_embedded_segment_editors_masking() -> None:
    """Like every Segment Editor effect: the masking shown in the panel is the masking every update follows."""
    node = _class(_module_ast(), "SAMMed3DParameterNode")
    assert "writeMode" not in {n.target.id for n in node.body if isinstance(n, ast.AnnAssign)}
    source = ast.unparse(_widget_method("_useEditorNode"))
    assert "moduleEditorNode(slicer.mrmlScene)" in source and "setMRMLSegmentEditorNode(self._editorNode)" in source
    assert "self.logic.useSegmentEditor(self._editorNode, UndoStates(self.ui.segmentEditorWidget))" in source
