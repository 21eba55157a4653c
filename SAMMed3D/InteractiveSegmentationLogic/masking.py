"""Which voxels a model update may change: editable area, overwriting other segments.

Design: the same choices the Segment Editor offers under "Masking", as explicit options of the
logic (:class:`WriteOptions`), applied by one pure numpy function (:func:`compose_update`) on
blocks of the segmentation's lattice, so every rule is tested without a scene.

- The model proposes values only for voxels it decided in this update (``model_code``: 0 = not
  decided, 1 = background, 2 = object). Every other voxel of the target segment keeps its value.
- **Editable area** further restricts the decided voxels (the target segment itself never counts
  as "a segment" here, as in Slicer): everywhere; inside / outside all other segments; inside /
  outside the visible other segments; inside one chosen segment. An optional intensity range of
  the source volume restricts it again.
- **Overwrite other segments**: ``none`` (default: other segments are never modified; the new
  mask may overlap them), ``visible`` or ``all`` (those segments lose the voxels the update sets
  in the target segment).
- **Locked segments** (``lockedSegmentIds``: finished segments): never modified, whatever the
  overwrite rule, and never overlapped: the target segment cannot gain their voxels. The logic
  also hands their voxels to the session (``Session.set_locked``), so the model's mask leaves them
  out before any of these rules run.

:meth:`WriteOptions.from_segment_editor_node` reads these settings from a
``vtkMRMLSegmentEditorNode``, so the module can honour whatever the user set in the Segment Editor.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from SAMMed3DLib.errors import ConfigError

#: Values of the model code block handed to :func:`compose_update`.
CODE_UNDECIDED, CODE_BACKGROUND, CODE_OBJECT = 0, 1, 2


class EditableArea(str, Enum):
    """Where a model update may change the target segment (Segment Editor "Editable area")."""

    EVERYWHERE = "everywhere"
    INSIDE_ALL_SEGMENTS = "inside_all_segments"
    INSIDE_VISIBLE_SEGMENTS = "inside_visible_segments"
    OUTSIDE_ALL_SEGMENTS = "outside_all_segments"
    OUTSIDE_VISIBLE_SEGMENTS = "outside_visible_segments"
    INSIDE_SEGMENT = "inside_segment"


class OverwriteMode(str, Enum):
    """Which other segments lose the voxels the update adds (Segment Editor "Modify other segments")."""

    NONE = "none"
    VISIBLE = "visible"
    ALL = "all"


def _coerce(enum: type[Enum], value: Any, name: str) -> Any:
    if isinstance(value, enum):
        return value
    try:
        return enum(str(value).strip().lower())
    except ValueError:
        choices = [e.value for e in enum]  # type: ignore[attr-defined]
        close = difflib.get_close_matches(str(value).lower(), choices, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{name} {value!r} is not one of {choices}.{hint}") from None


#: vtkMRMLSegmentationNode.EditAllowed* → EditableArea (values checked against slicer-core 5.13).
_SLICER_MASK_MODES = {
    "EditAllowedEverywhere": EditableArea.EVERYWHERE,
    "EditAllowedInsideAllSegments": EditableArea.INSIDE_ALL_SEGMENTS,
    "EditAllowedInsideVisibleSegments": EditableArea.INSIDE_VISIBLE_SEGMENTS,
    "EditAllowedOutsideAllSegments": EditableArea.OUTSIDE_ALL_SEGMENTS,
    "EditAllowedOutsideVisibleSegments": EditableArea.OUTSIDE_VISIBLE_SEGMENTS,
    "EditAllowedInsideSingleSegment": EditableArea.INSIDE_SEGMENT,
}
_SLICER_OVERWRITE_MODES = {
    "OverwriteAllSegments": OverwriteMode.ALL,
    "OverwriteVisibleSegments": OverwriteMode.VISIBLE,
    "OverwriteNone": OverwriteMode.NONE,
}


@dataclass(frozen=True)
class WriteOptions:
    """How a model update is written into the segmentation.

    Attributes:
        editableArea: where the target segment may change (:class:`EditableArea` or its value).
        maskSegmentId: the segment that bounds the editable area for ``inside_segment``.
        overwrite: which other segments lose the voxels set in the target (:class:`OverwriteMode`).
        intensityRange: optional (low, high) source-volume intensities outside of which nothing changes.
        lockedSegmentIds: segments that are never modified nor overlapped (finished ones).
    """

    editableArea: EditableArea = EditableArea.EVERYWHERE
    maskSegmentId: str | None = None
    overwrite: OverwriteMode = OverwriteMode.NONE
    intensityRange: tuple[float, float] | None = None
    lockedSegmentIds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.lockedSegmentIds, str):
            raise ConfigError(f"lockedSegmentIds must be a sequence of segment IDs, got the string {self.lockedSegmentIds!r}")
        object.__setattr__(self, "lockedSegmentIds", tuple(str(v) for v in self.lockedSegmentIds))
        object.__setattr__(self, "editableArea", _coerce(EditableArea, self.editableArea, "editableArea"))
        object.__setattr__(self, "overwrite", _coerce(OverwriteMode, self.overwrite, "overwrite"))
        if self.editableArea is EditableArea.INSIDE_SEGMENT and not self.maskSegmentId:
            raise ConfigError("editableArea 'inside_segment' needs maskSegmentId: the segment inside which edits are allowed")
        if self.intensityRange is not None:
            try:
                low, high = (float(v) for v in self.intensityRange)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"intensityRange must be (low, high) numbers, got {self.intensityRange!r}") from exc
            if not low <= high:
                raise ConfigError(f"intensityRange must have low <= high, got ({low}, {high})")
            object.__setattr__(self, "intensityRange", (low, high))

    @classmethod
    def from_segment_editor_node(cls, editor_node: Any) -> WriteOptions:
        """The masking settings of a ``vtkMRMLSegmentEditorNode`` (what the Segment Editor shows)."""
        import slicer

        mask_mode = editor_node.GetMaskMode()
        area = next(
            (a for name, a in _SLICER_MASK_MODES.items() if getattr(slicer.vtkMRMLSegmentationNode, name) == mask_mode),
            EditableArea.EVERYWHERE,
        )
        overwrite_mode = editor_node.GetOverwriteMode()
        overwrite = next(
            (o for name, o in _SLICER_OVERWRITE_MODES.items() if getattr(slicer.vtkMRMLSegmentEditorNode, name) == overwrite_mode),
            OverwriteMode.NONE,
        )
        intensity = None
        if editor_node.GetSourceVolumeIntensityMask():
            intensity = tuple(editor_node.GetSourceVolumeIntensityMaskRange())
        mask_segment = editor_node.GetMaskSegmentID() or None
        if area is EditableArea.INSIDE_SEGMENT and not mask_segment:
            area = EditableArea.EVERYWHERE  # Slicer allows this state and then masks nothing
        return cls(editableArea=area, maskSegmentId=mask_segment, overwrite=overwrite, intensityRange=intensity)  # type: ignore[arg-type]

    def segments_to_read(self, target_id: str, segment_ids: Iterable[str], visible_ids: Iterable[str]) -> list[str]:
        """Other segments whose voxels :func:`compose_update` needs, in ``segment_ids`` order."""
        others = [s for s in segment_ids if s != target_id]
        visible = set(visible_ids)
        needed: set[str] = set()
        if self.editableArea in (EditableArea.INSIDE_ALL_SEGMENTS, EditableArea.OUTSIDE_ALL_SEGMENTS):
            needed |= set(others)
        elif self.editableArea in (EditableArea.INSIDE_VISIBLE_SEGMENTS, EditableArea.OUTSIDE_VISIBLE_SEGMENTS):
            needed |= set(others) & visible
        elif self.editableArea is EditableArea.INSIDE_SEGMENT and self.maskSegmentId in others:
            needed.add(self.maskSegmentId)  # type: ignore[arg-type]
        if self.overwrite is OverwriteMode.ALL:
            needed |= set(others)
        elif self.overwrite is OverwriteMode.VISIBLE:
            needed |= set(others) & visible
        needed |= set(others) & set(self.lockedSegmentIds)
        return [s for s in others if s in needed]

    def segments_to_overwrite(self, target_id: str, segment_ids: Iterable[str], visible_ids: Iterable[str]) -> list[str]:
        others = [s for s in segment_ids if s != target_id and s not in self.lockedSegmentIds]
        if self.overwrite is OverwriteMode.ALL:
            return others
        if self.overwrite is OverwriteMode.VISIBLE:
            visible = set(visible_ids)
            return [s for s in others if s in visible]
        return []


#: Choices of the module's "Other segments" combo box → write options (the values are what the
#: parameter node stores).
WRITE_MODES: tuple[str, ...] = ("allow_overlap", "overwrite_visible", "overwrite_all", "segment_editor")


def write_options_for_mode(mode: str, segment_editor_node: Any | None = None) -> WriteOptions:
    """Write options for one of :data:`WRITE_MODES`.

    Args:
        mode: ``allow_overlap`` (never modify other segments), ``overwrite_visible``,
            ``overwrite_all``, or ``segment_editor`` (the masking settings of
            ``segment_editor_node``; the Segment Editor's own defaults when there is none:
            editable everywhere, overwrite all other segments).
        segment_editor_node: a ``vtkMRMLSegmentEditorNode`` or None.

    Raises:
        ConfigError: unknown mode.
    """
    if mode == "allow_overlap":
        return WriteOptions()
    if mode == "overwrite_visible":
        return WriteOptions(overwrite=OverwriteMode.VISIBLE)
    if mode == "overwrite_all":
        return WriteOptions(overwrite=OverwriteMode.ALL)
    if mode == "segment_editor":
        if segment_editor_node is None:
            import slicer

            segment_editor_node = slicer.vtkMRMLSegmentEditorNode()  # its defaults: what the Segment Editor does untouched
        return WriteOptions.from_segment_editor_node(segment_editor_node)
    close = difflib.get_close_matches(str(mode), WRITE_MODES, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"write mode {mode!r} is not one of {list(WRITE_MODES)}.{hint}")


def compose_update(
    model_code: np.ndarray,
    target_before: np.ndarray,
    others_before: Mapping[str, np.ndarray],
    options: WriteOptions,
    target_id: str,
    visible_ids: Iterable[str] = (),
    intensity: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """New voxels of the target segment and of the other segments it overwrites, on one block.

    Args:
        model_code: (k, j, i) uint8, 0 = not decided by this update, 1 = model says background,
            2 = model says object.
        target_before: (k, j, i) uint8 0/1, the target segment now.
        others_before: other segments' (k, j, i) uint8 0/1 blocks, at least those named by
            :meth:`WriteOptions.segments_to_read`.
        options: the write options.
        target_id: the target segment's ID (never part of the editable-area masks).
        visible_ids: IDs of the segments shown in the views.
        intensity: (k, j, i) source-volume intensities, needed when ``options.intensityRange`` is set.

    Returns:
        (target after, {segment ID: after} for every other segment whose voxels change).

    Raises:
        ConfigError: the mask segment is missing, or an intensity range without intensities.
    """
    visible = set(visible_ids)
    decided = model_code != CODE_UNDECIDED
    area = EditableArea(options.editableArea)
    others = {k: v for k, v in others_before.items() if k != target_id}

    def union(ids: Iterable[str]) -> np.ndarray:
        out = np.zeros(model_code.shape, dtype=bool)
        for s in ids:
            out |= others[s] > 0
        return out

    if area is EditableArea.INSIDE_ALL_SEGMENTS:
        decided &= union(others)
    elif area is EditableArea.OUTSIDE_ALL_SEGMENTS:
        decided &= ~union(others)
    elif area is EditableArea.INSIDE_VISIBLE_SEGMENTS:
        decided &= union(s for s in others if s in visible)
    elif area is EditableArea.OUTSIDE_VISIBLE_SEGMENTS:
        decided &= ~union(s for s in others if s in visible)
    elif area is EditableArea.INSIDE_SEGMENT:
        if options.maskSegmentId == target_id:
            decided &= target_before > 0  # literally "inside the mask segment", as Slicer does
        elif options.maskSegmentId not in others:
            raise ConfigError(
                f"the editable area is inside segment {options.maskSegmentId!r}, but that segment does not exist; "
                "choose another mask segment in the Segment Editor or set the editable area to everywhere"
            )
        else:
            decided &= others[options.maskSegmentId] > 0  # type: ignore[index]
    if options.intensityRange is not None:
        if intensity is None:
            raise ConfigError("an intensity range was set but no source-volume intensities were given")
        low, high = options.intensityRange
        decided &= (intensity >= low) & (intensity <= high)
    locked = [s for s in options.lockedSegmentIds if s in others]
    if locked:
        decided &= ~(union(locked) & (model_code == CODE_OBJECT))  # may still remove, never add, where locked

    target_after = np.where(decided, (model_code == CODE_OBJECT).astype(np.uint8), target_before).astype(np.uint8)
    changed_others: dict[str, np.ndarray] = {}
    set_here = decided & (target_after > 0)
    for s in options.segments_to_overwrite(target_id, others.keys(), visible):
        before = others[s]
        if np.any(before[set_here]):
            after = before.copy()
            after[set_here] = 0
            changed_others[s] = after
    return target_after, changed_others
