"""The web app: a trame-slicer scene and views, the page's state and controls, the editor.

Design: :class:`WebApp` owns one Slicer core application (trame-slicer's ``SlicerApp``: scene,
application logic, markups and segmentations logics), four remote views (axial, coronal,
sagittal, 3D), the Slicer module's ``InteractiveSegmentationLogic`` and the :class:`~.editing.Editor`
that drives it. The page's state variables (``sam_*``) mirror the editor after every change
(:meth:`WebApp.push_state`); the page's controls call the editor. Everything runs on the
server's event loop except the model, which the editor runs on its worker thread.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from ..errors import SAMMed3DError
from . import saving
from . import scene as web_scene
from .editing import MODES, Editor

logger = logging.getLogger(__name__)

#: Devices offered in the page (``SAMMed3DLib.devices`` accepts these and ``cuda:N``).
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class WebOptions:
    """What ``sammed3d web`` was asked for.

    Attributes:
        images: the volume given on the command line (a one-item sequence; empty: upload one).
        segmentation: a segmentation to start from (``.seg.nrrd`` or a label image), or None.
        model, device: the model (registry name or checkpoint path) and device.
        out_dir: where Save writes.
        sample: show the demo's sample volume when no image is given.
    """

    images: Sequence[str] = ()
    segmentation: str | None = None
    model: str = "default"
    device: str = "auto"
    out_dir: Path = field(default_factory=lambda: Path("sammed3d-web"))
    sample: bool = False


class WebApp:
    """The page, its Slicer scene and the editing session behind it.

    Args:
        server: a trame server (``trame.app.get_server(..., client_type="vue3")``).
        options: see :class:`WebOptions`.
    """

    def __init__(self, server: Any, options: WebOptions) -> None:
        from InteractiveSegmentationLogic import InteractiveSegmentationLogic
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.app.logic import get_view_trame_id
        from trame_slicer.core import SlicerApp
        from trame_slicer.rca_view import register_rca_factories
        from trame_slicer.views import ViewLayoutDefinition

        from ..registry import default_registry
        from .ui import build_page

        self.server = server
        self.options = options
        self.inputs: list[tuple[str, Path]] = []
        server.enable_module(trame_slicer_module)
        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, server)
        definitions = {
            "axial": ViewLayoutDefinition.axial_view(),
            "coronal": ViewLayoutDefinition.coronal_view(),
            "sagittal": ViewLayoutDefinition.sagittal_view(),
            "3d": ViewLayoutDefinition.threed_view(),
        }
        self.views = {key: self.slicer.view_manager.create_view(d) for key, d in definitions.items()}
        self.slicer.view_manager.set_current_view_ids([d.singleton_tag for d in definitions.values()])
        self.logic = InteractiveSegmentationLogic(model=options.model, device=options.device)
        self.editor = Editor(self.slicer.scene, self._place_node, self.logic, on_change=self.push_state)
        state = server.state
        models = list(default_registry().names())
        if options.model not in models:
            models.append(options.model)
        state.update(
            {
                "trame__title": "SAM-Med3D",
                "sam_status": self.editor.info.text(),
                "sam_models": models,
                "sam_model": options.model,
                "sam_devices": list(DEVICES) if options.device in DEVICES else [*DEVICES, options.device],
                "sam_device": options.device,
                "sam_windows": list(web_scene.WINDOW_PRESETS),
                "sam_window": "Auto",
                "sam_out_dir": str(Path(options.out_dir).resolve()),
                "sam_save_name": "segmentation",
                "sam_saved": "",
                "sam_loaded": False,
            }
        )
        self.download_trigger = server.trigger_name(self.download)
        self.layout = build_page(server, {key: get_view_trame_id(server, view) for key, view in self.views.items()}, self.on_key, self)
        state.change("sam_sign")(self._on_sign)
        state.change("sam_segment")(self._on_segment)
        state.change("sam_model", "sam_device")(self._on_model)
        state.change("sam_window")(self._on_window)
        state.change("sam_lock")(self._on_lock)
        self.push_state()

    # -- loading ---------------------------------------------------------------------------------

    def load_paths(self, images: Sequence[str], segmentation: str | None = None) -> Any:
        """Show the first of ``images`` (a file or a DICOM folder, read as the CLI reads it)."""
        from ..io import read_image

        path = Path(images[0])
        image = read_image(path)
        self.inputs = [(f"the input image {str(path)!r}", path)]
        if segmentation is not None:
            self.inputs.append((f"the input segmentation {segmentation!r}", Path(segmentation)))
        return self.show_image(image, web_scene.volume_name(path), segmentation)

    def show_image(self, image: sitk.Image, name: str, segmentation: str | None = None) -> Any:
        """Show ``image`` in the views and make it the volume that clicks segment."""
        scene = self.slicer.scene
        volume = web_scene.add_volume(scene, image, name)
        try:
            seg_node = web_scene.load_segmentation(scene, segmentation, volume)[0] if segmentation else None
        except SAMMed3DError:
            scene.RemoveNode(volume)
            raise
        self.editor.set_volume(volume, seg_node)
        self.slicer.display_manager.show_volume_in_slice_background(volume)
        for view in self.slicer.view_manager.get_slice_views():
            view.set_visible_in_3d(True)
        for view in self.views.values():
            view.reset_view()
        with self.server.state as state:
            state.sam_save_name = saving.safe_name(name, "segmentation")
            state.sam_window = "Auto"
        self.push_state()
        return volume

    async def load_files(self, files: list[dict]) -> None:
        """Upload from the page: one image file, or the files of a DICOM folder."""
        from trame.app.file_upload import ClientFile

        from ..io import read_image

        if not files:
            return
        with tempfile.TemporaryDirectory(prefix="sammed3d-upload-") as folder:
            written = []
            for entry in files:
                upload = ClientFile(entry)
                target = Path(folder) / saving.safe_name(Path(upload.name or "upload").name, "upload")
                target.write_bytes(upload.content or b"")
                written.append(target)
            source = written[0] if len(written) == 1 else Path(folder)
            try:
                image = read_image(source)
            except SAMMed3DError as exc:
                self.editor.info.message = f"error: {exc}"
                self.push_state()
                return
            self.inputs = []
            self.show_image(image, web_scene.volume_name(written[0].name if len(written) == 1 else "dicom"))

    # -- controls --------------------------------------------------------------------------------

    def _place_node(self, node: Any, persistent: bool) -> None:
        self.slicer.markups_logic.place_node(node, persistent=persistent)

    def on_key(self, key: str) -> None:
        """A shortcut typed in the page (see :data:`.ui.SHORTCUT_KEYS`)."""
        if self.editor.segmentation is None:
            return
        actions = {
            "p": lambda: self.editor.set_mode("positive"),
            "n": lambda: self.editor.set_mode("negative"),
            "t": self.editor.toggle_sign,
            "b": lambda: self.editor.set_mode("box"),
            "z": self.undo,
            "y": self.redo,
        }
        if key in actions:
            actions[key]()

    def undo(self) -> None:
        self.editor.undo()

    def redo(self) -> None:
        self.editor.redo()

    def reset(self) -> None:
        self.editor.reset()

    def clear_box(self) -> None:
        if self.editor.segmentation is not None:
            self.editor.clear_box()

    def add_segment(self) -> None:
        if self.editor.segmentation is None:
            return
        try:
            self.editor.add_segment(str(self.server.state.sam_new_segment_name or "").strip())
        except SAMMed3DError as exc:
            self.editor.info.message = f"error: {exc}"
            self.push_state()
            return
        self.server.state.sam_new_segment_name = ""

    def save(self) -> list[Path]:
        """Save into the output folder (the page's Save button)."""
        return self._save(Path(self.options.out_dir), "saved")

    def _save(self, folder: Path, done: str) -> list[Path]:
        editor = self.editor
        if editor.segmentation is None:
            return []
        if editor.busy:
            self._saved("not saved: an update is running; save when it is written")
            return []
        stem = str(self.server.state.sam_save_name or "segmentation").strip()
        ids = web_scene.segment_ids(editor.segmentation)
        nodes = {i: editor.points_nodes(i) for i in ids}
        boxes = {i: editor.box_node(i) for i in ids if editor.has_box(i)}
        try:
            written = saving.save(folder, stem, editor.volume, editor.segmentation, nodes, boxes=boxes, inputs=self.inputs)
        except SAMMed3DError as exc:
            self._saved(f"not {done}: {exc}")
            return []
        self._saved(f"{done} " + ", ".join(p.name for p in written))
        logger.info("%s %s", done, ", ".join(str(p) for p in written))
        return written

    def _saved(self, text: str) -> None:
        with self.server.state as state:
            state.sam_saved = text

    def download(self) -> Any:
        """The saved files as a zip archive for the browser (nothing is kept on the server)."""
        with tempfile.TemporaryDirectory(prefix="sammed3d-download-") as folder:
            written = self._save(Path(folder), "downloaded")
            payload = saving.zipped(written) if written else b""
        return self.server.protocol.addAttachment(payload)

    def close(self) -> None:
        """Stop the model's worker and release the views' render windows (on the server's thread)."""
        self.editor.close()
        for view in self.views.values():
            view.finalize()

    # -- state -----------------------------------------------------------------------------------

    def _on_sign(self, sam_sign: str = "positive", **_: Any) -> None:
        if self.editor.segmentation is not None and sam_sign in MODES and sam_sign != self.editor.mode:
            self.editor.set_mode(sam_sign)

    def _on_lock(self, sam_lock: bool = False, **_: Any) -> None:
        if bool(sam_lock) != self.editor.lock_others:
            self.editor.set_lock_others(bool(sam_lock))

    def _on_segment(self, sam_segment: str | None = None, **_: Any) -> None:
        if sam_segment and self.editor.segmentation is not None and sam_segment != self.editor.segment_id:
            try:
                self.editor.select_segment(sam_segment)
            except SAMMed3DError as exc:
                self.editor.info.message = f"error: {exc}"
                self.push_state()

    def _on_model(self, sam_model: str = "", sam_device: str = "", **_: Any) -> None:
        model = str(sam_model or "").strip()
        if model and (model != self.logic.modelSpec or sam_device != self.logic.device):
            self.editor.set_model(model, sam_device or None)

    def _on_window(self, sam_window: str = "Auto", **_: Any) -> None:
        if self.editor.volume is not None and sam_window in web_scene.WINDOW_PRESETS:
            web_scene.apply_window_preset(self.editor.volume, sam_window)

    def push_state(self) -> None:
        """Show the editor's status, segments and buttons in the page."""
        editor = self.editor
        with self.server.state as state:
            state.sam_status = editor.info.text()
            state.sam_busy = editor.info.busy
            state.sam_loaded = editor.segmentation is not None
            state.sam_segments = editor.segments()
            state.sam_segment = editor.segment_id
            state.sam_sign = editor.mode
            state.sam_has_box = editor.info.box
            state.sam_lock = editor.lock_others
            state.sam_can_undo = bool(self.logic.canUndo)
            state.sam_can_redo = bool(self.logic.canRedo)
