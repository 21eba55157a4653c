"""The page: four views, the tool bar, the side panel and the status line (Vuetify 3 through trame).

Contract with checks (issue 15): the axial, coronal, sagittal and 3D views are the elements with
ids ``sam-view-axial``, ``sam-view-coronal``, ``sam-view-sagittal`` and ``sam-view-3d``; the
element ``sam-status`` holds the status line, whose text contains ``voxels=N`` (N the current
segment's voxel count) once an update has been applied. Other ids name the controls
(``sam-positive``, ``sam-negative``, ``sam-undo``, ``sam-redo``, ``sam-reset``, ``sam-save``, ...).

State variables are prefixed ``sam_``; the app (:mod:`.app`) owns their meaning. Keyboard
shortcuts are the Slicer module's (``SAMMed3DModule.choices.SHORTCUTS``): P and N choose + and −
points, T toggles, Z undoes, Y redoes; B draws the segment's box (two clicks, opposite corners);
keys typed into a text field are left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: View key (as in the element ids) → its title.
VIEW_TITLES: dict[str, str] = {"axial": "Axial", "coronal": "Coronal", "sagittal": "Sagittal", "3d": "3D"}

#: Single-key shortcuts (lower case) → what they do; the app's ``on_key`` receives the key.
SHORTCUT_KEYS: dict[str, str] = {"p": "+ points", "n": "− points", "t": "toggle + / −", "b": "box", "z": "undo", "y": "redo"}

_KEYBOARD_SCRIPT = """
document.addEventListener('keydown', function (event) {
  var target = event.target || {};
  var tag = (target.tagName || '').toLowerCase();
  if (tag === 'input' || tag === 'textarea' || target.isContentEditable) { return; }
  if (event.ctrlKey || event.metaKey || event.altKey) { return; }
  var key = (event.key || '').toLowerCase();
  if (%s.indexOf(key) < 0 || !window.trame) { return; }
  event.preventDefault();
  window.trame.trigger('%s', [key]);
});
"""

_STYLE = """
html { overflow: hidden; }
.sam-grid { display: grid; grid-template-columns: 1fr 1fr; grid-template-rows: 1fr 1fr; gap: 2px;
            width: 100%; height: calc(100vh - 64px - 36px); background: #111; }
.sam-view { position: relative; overflow: hidden; min-width: 0; min-height: 0; }
.sam-view-title { position: absolute; top: 4px; right: 8px; z-index: 2; color: #ddd; font: 12px sans-serif;
                  pointer-events: none; }
#sam-status { height: 36px; line-height: 36px; font: 14px monospace; white-space: nowrap; overflow: hidden;
              text-overflow: ellipsis; }
"""


def build_page(server: Any, view_ids: dict[str, str], on_key: Callable[[str], None], actions: Any) -> Any:
    """Build the page on ``server`` and return its layout.

    Args:
        server: the trame server.
        view_ids: view key (``axial``, ``coronal``, ``sagittal``, ``3d``) → the trame template
            name of that view (trame-slicer's remote view).
        on_key: called with a shortcut key (see :data:`SHORTCUT_KEYS`).
        actions: the app; its methods ``undo``, ``redo``, ``reset``, ``add_segment``, ``save``,
            ``download`` and ``load_files`` are bound to the controls.
    """
    import json

    from trame.widgets import client, html
    from trame.widgets import vuetify3 as v3
    from trame_slicer.app.ui import LoadVolumeUI
    from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout

    key_trigger = server.trigger_name(on_key)
    with SinglePageWithDrawerLayout(server, width=300) as layout:
        layout.title.set_text("SAM-Med3D")
        client.Style(_STYLE)
        client.Script(_KEYBOARD_SCRIPT % (json.dumps(sorted(SHORTCUT_KEYS)), key_trigger))
        with layout.toolbar:
            v3.VSpacer()
            loader = LoadVolumeUI()
            loader.on_load_volume.connect(actions.load_files)
            with v3.VBtnToggle(v_model=("sam_sign", "positive"), mandatory=True, density="compact", classes="mx-2"):
                v3.VBtn("+ point", value="positive", id="sam-positive", color="green", title="P: object here")
                v3.VBtn("− point", value="negative", id="sam-negative", color="red", title="N: not here (T toggles)")
                v3.VBtn("Box", value="box", id="sam-box", color="amber", title="B: two clicks, opposite corners of the object's box")
            v3.VBtn("Undo", id="sam-undo", click=actions.undo, disabled=("!sam_can_undo || sam_busy",), title="Z", variant="text")
            v3.VBtn("Redo", id="sam-redo", click=actions.redo, disabled=("!sam_can_redo || sam_busy",), title="Y", variant="text")
            v3.VBtn("Reset", id="sam-reset", click=actions.reset, disabled=("!sam_loaded || sam_busy",), variant="text",
                    title="undo this segment's updates and clear its clicks")
            v3.VProgressCircular(v_show=("sam_busy",), indeterminate=True, size=20, classes="mx-2")
        with layout.drawer:
            _side_panel(v3, html, actions)
        with layout.content:
            with html.Div(classes="sam-grid"):
                for key, title in VIEW_TITLES.items():
                    with html.Div(id=f"sam-view-{key}", classes="sam-view"):
                        html.Div(title, classes="sam-view-title")
                        client.ServerTemplate(name=view_ids[key])
        layout.footer.clear()
        with layout.footer:
            html.Div("{{ sam_status }}", id="sam-status")
    return layout


def _side_panel(v3: Any, html: Any, actions: Any) -> None:
    with v3.VContainer(classes="pa-3"):
        html.Div("Segments", classes="text-subtitle-2 mb-1")
        v3.VSelect(
            id="sam-segment",
            v_model=("sam_segment", None),
            items=("sam_segments", []),
            item_title="name",
            item_value="id",
            density="compact",
            hide_details=True,
            disabled=("!sam_loaded || sam_busy",),
        )
        v3.VCheckbox(id="sam-lock", v_model=("sam_lock", False), label="Lock other segments", density="compact", hide_details=True,
                     disabled=("!sam_loaded || sam_busy",))
        v3.VBtn("Clear box", id="sam-clear-box", click=actions.clear_box, size="small", variant="tonal",
                disabled=("!sam_has_box || sam_busy",))
        with html.Div(classes="d-flex mt-2"):
            v3.VTextField(v_model=("sam_new_segment_name", ""), label="new segment", density="compact", hide_details=True)
            v3.VBtn("Add", id="sam-add-segment", click=actions.add_segment, disabled=("!sam_loaded || sam_busy",), classes="ml-2")
        html.Div("Model", classes="text-subtitle-2 mt-4 mb-1")
        v3.VCombobox(id="sam-model", v_model=("sam_model", "default"), items=("sam_models", []), density="compact",
                     hide_details=True, label="name or checkpoint path", disabled=("sam_busy",))
        v3.VSelect(id="sam-device", v_model=("sam_device", "auto"), items=("sam_devices", []), density="compact",
                   hide_details=True, label="device", classes="mt-2", disabled=("sam_busy",))
        html.Div("Window / level", classes="text-subtitle-2 mt-4 mb-1")
        v3.VSelect(id="sam-window", v_model=("sam_window", "Auto"), items=("sam_windows", []), density="compact",
                   hide_details=True, disabled=("!sam_loaded",))
        html.Div("Save", classes="text-subtitle-2 mt-4 mb-1")
        v3.VTextField(id="sam-save-name", v_model=("sam_save_name", "segmentation"), label="file name (no extension)",
                      density="compact", hide_details=True)
        html.Div("into {{ sam_out_dir }} on the server", classes="text-caption")
        with html.Div(classes="d-flex mt-2"):
            v3.VBtn("Save", id="sam-save", click=actions.save, disabled=("!sam_loaded || sam_busy",))
            v3.VBtn(
                "Download",
                id="sam-download",
                classes="ml-2",
                disabled=("!sam_loaded || sam_busy",),
                click=f"utils.download(sam_save_name + '.zip', trigger('{actions.download_trigger}'), 'application/zip')",
            )
        html.Div("{{ sam_saved }}", id="sam-saved", classes="text-caption mt-1")
        html.Div(
            "Left click: a point of the chosen kind, or a corner of the box. Keys: " + ", ".join(f"{k.upper()} {v}" for k, v in SHORTCUT_KEYS.items()) + ".",
            classes="text-caption mt-4",
        )
