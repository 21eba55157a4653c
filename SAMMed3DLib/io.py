"""Image I/O: read and validate volumes, write segmentations and preview pictures.

Design:

- Everything goes through SimpleITK, so images keep their LPS geometry (origin, spacing,
  direction) from file to core and back. Supported inputs: NIfTI (.nii, .nii.gz), NRRD (.nrrd,
  .nhdr), MetaImage (.mha, .mhd) and a folder of DICOM slices (the largest series in the folder).
- :func:`validate_image` is the single gate for images, from a file or from memory: it rejects
  what SAM-Med3D cannot segment (2D, 4D, multi-component, non-finite voxels) with an
  :class:`~SAMMed3DLib.errors.ImageError` that says what was seen and what to do, and returns a
  float32 scalar 3D image.
- Writers are atomic and verified (:mod:`SAMMed3DLib.outputs`): they check the path first, write
  a temporary file in the destination folder, read it back (every voxel, the geometry, NIfTI's
  byte count), fsync it and ``os.replace`` it into place, so an error (full disk, file-size limit,
  permission, crash) never leaves a half-written file and never destroys an existing one. Given
  ``files`` (:func:`SAMMed3DLib.outputs.all_or_nothing`), several outputs replace theirs together.
- ``.seg.nrrd`` files carry the custom fields 3D Slicer's segmentation storage node reads
  (``Segmentation_*`` and ``Segment0_*``; Slicer developer guide, "Segmentation labelmap file
  format"), so they open in Slicer as a named, coloured segment.
- :func:`write_preview_png` draws axial, coronal and sagittal world-aligned slices through a point
  with the mask overlaid, in radiological display convention, using SimpleITK only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .atomic import AtomicFiles
from .errors import ImageError, OutputError, PromptError
from .image_checks import check_nifti_file, check_slice_spacing, scan_nifti
from .outputs import check_output_path, read_back_difference, write_verified

logger = logging.getLogger(__name__)

#: Extensions :func:`read_image` documents (SimpleITK may read more; these are tested).
IMAGE_EXTENSIONS: tuple[str, ...] = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")

#: Output extension → extension of the temporary file (what selects SimpleITK's writer).
SEGMENTATION_EXTENSIONS: dict[str, str] = {
    ".seg.nrrd": ".nrrd",
    ".nii.gz": ".nii.gz",
    ".nii": ".nii",
    ".nrrd": ".nrrd",
    ".mha": ".mha",
}

_COMPLEX_PIXEL_IDS = {sitk.sitkComplexFloat32, sitk.sitkComplexFloat64}
_INTEGER_PIXEL_IDS = {
    sitk.sitkUInt8,
    sitk.sitkInt8,
    sitk.sitkUInt16,
    sitk.sitkInt16,
    sitk.sitkUInt32,
    sitk.sitkInt32,
    sitk.sitkUInt64,
    sitk.sitkInt64,
}

#: Preview overlay colour (RGB 0-255) and opacity of the mask; marker colour of the point.
_OVERLAY_RGB = np.array([255.0, 120.0, 0.0])
_OVERLAY_ALPHA = 0.45
_MARKER_RGB = np.array([0, 255, 0], dtype=np.uint8)


def _suffix(path: Path, choices: Sequence[str]) -> str | None:
    name = path.name.lower()
    for ext in sorted(choices, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return None


def _first_line(exc: BaseException) -> str:
    """The useful part of a SimpleITK/ITK exception message (they span many lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("Exception thrown in")]
    if not lines:
        return type(exc).__name__
    main = next((line for line in lines if "ERROR:" in line), lines[0])
    main = main.split("ERROR:", 1)[-1].strip()
    if "): " in main and "(0x" in main:  # "NrrdImageIO(0x5634...): Read: ..." -> "Read: ..."
        main = main.split("): ", 1)[1]
    detail = lines[-1]
    if detail != main and "ERROR:" not in detail and not detail.startswith("Reason:"):
        main = f"{main.rstrip('.')} ({detail})"
    return main.rstrip(".")


def read_image(path: str | os.PathLike[str]) -> sitk.Image:
    """Read a 3D medical image from a file or a DICOM folder and validate it.

    Args:
        path: a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file, or a
            folder of DICOM slices. When the folder holds several series the one with the most
            slices is read (and the choice is logged).

    Returns:
        float32 scalar 3D SimpleITK image with the file's LPS geometry.

    Raises:
        ImageError: the path does not exist, is neither a regular file nor a folder (a FIFO,
            socket or device, which could block the reader forever), cannot be read (corrupt,
            truncated, unsupported format), is a DICOM series with uneven slice spacing, or
            fails :func:`validate_image`.

    Note:
        SimpleITK reads a truncated or bit-flipped NIfTI file, one with a damaged magic number
        and NaN voxels (as 0) without an error: :mod:`SAMMed3DLib.image_checks` checks the file
        before it is read.
    """
    from . import special_files

    path = Path(path)
    try:
        exists = path.exists()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise ImageError(f"cannot open image {str(path)!r}: {exc.strerror or exc}; check the path") from exc
    if not exists:
        raise ImageError(f"image {str(path)!r} does not exist; check the path (supported: {', '.join(IMAGE_EXTENSIONS)} files or a DICOM folder)")
    special_files.refuse_special_file(path)
    if path.is_dir():
        image = _read_dicom_folder(path)
    else:
        special_files.refuse_special_data_file(path)
        try:
            if _suffix(path, (".nii", ".nii.gz")) is not None:
                check_nifti_file(path)
            image = sitk.ReadImage(str(path))
        except RuntimeError as exc:
            raise ImageError(
                f"cannot read image {str(path)!r}: {_first_line(exc)}. The file may be truncated or corrupt, or not a "
                f"supported format ({', '.join(IMAGE_EXTENSIONS)} or a DICOM folder); re-export it or pass another file"
            ) from exc
    return validate_image(image, name=str(path))


def _read_dicom_folder(folder: Path) -> sitk.Image:
    from . import special_files

    special_files.refuse_special_entries(folder)  # GDCM opens every file of the folder
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise ImageError(f"cannot scan folder {str(folder)!r} for DICOM series: {_first_line(exc)}") from exc
    if not series_ids:
        raise ImageError(
            f"folder {str(folder)!r} contains no DICOM series; pass a folder of DICOM slices, or an image file "
            f"({', '.join(IMAGE_EXTENSIONS)})"
        )
    files_by_series = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    chosen = max(series_ids, key=lambda sid: len(files_by_series[sid]))
    if len(series_ids) > 1:
        counts = ", ".join(f"{sid} ({len(files_by_series[sid])} slices)" for sid in series_ids)
        logger.info("folder %s holds %d DICOM series: %s; reading the largest, %s", folder, len(series_ids), counts, chosen)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files_by_series[chosen])
    reader.MetaDataDictionaryArrayUpdateOn()  # each slice's tags, for the spacing check
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ImageError(
            f"cannot read DICOM series {chosen} in {str(folder)!r}: {_first_line(exc)}; check that the slices are complete "
            "and belong to one volume"
        ) from exc
    check_slice_spacing(reader, len(files_by_series[chosen]), f"DICOM series {chosen} in {str(folder)!r}")
    return image


def validate_image(image: sitk.Image, name: str = "image") -> sitk.Image:
    """Check that an image is something SAM-Med3D can segment; return it as float32.

    Accepted: a scalar 3D image with at least 2 voxels along every axis (trailing axes of size
    1, as in a 4D or 5D file holding one volume, are dropped), finite voxels that fit in float32,
    voxel spacing within :data:`SPACING_RANGE_MM` and every voxel within :data:`MAX_COORDINATE_MM`
    of the origin of patient coordinates, any real pixel type.

    Args:
        image: a SimpleITK image (from a file or built in memory).
        name: how to call the image in error messages (e.g. its path).

    Returns:
        float32 scalar 3D SimpleITK image with the same geometry (the same object when it
        already was float32 3D).

    Raises:
        ImageError: not a SimpleITK image, fewer or more than 3 dimensions, multi-component or
            complex, NaN/inf voxels or values beyond float32, implausible spacing or position.
    """
    if not isinstance(image, sitk.Image):
        raise ImageError(f"{name} must be a SimpleITK image, got {type(image).__name__}; read files with SAMMed3DLib.io.read_image")
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1 or image.GetPixelID() in _COMPLEX_PIXEL_IDS:
        raise ImageError(
            f"{name} has {components} component(s) per voxel of type {image.GetPixelIDTypeAsString()} (e.g. RGB, vector or "
            "complex data); SAM-Med3D needs one real intensity per voxel: convert it to greyscale or extract one channel"
        )
    image = _drop_trailing_axes(image)
    dim, size = image.GetDimension(), image.GetSize()
    if dim > 3:
        extra = " x ".join(str(s) for s in size[3:])
        raise ImageError(
            f"{name} is {dim}D (size {list(size)}: {extra} volumes); SAM-Med3D segments one 3D volume: extract one time point "
            f"or channel first (e.g. SimpleITK Extract with size [x, y, z{', 0' * (dim - 3)}])"
        )
    if dim != 3 or min(size) < 2:
        raise ImageError(
            f"{name} is 2D (size {list(size)}); SAM-Med3D segments 3D volumes: load the whole volume or DICOM series, not a single slice"
        )
    _check_placement(image, name)
    _check_values(sitk.GetArrayViewFromImage(image), name)  # before the cast: float64 beyond float32 would become inf
    return image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)


#: Voxel spacing accepted, in mm: finer is a header in other units (µm) or no CT/MR volume;
#: coarser (a metre a voxel) is a damaged header. Both break the model's 1.5 mm windows.
SPACING_RANGE_MM = (1e-3, 1e3)
#: Farthest a voxel may lie from the origin of patient coordinates, in mm (100 m): beyond it the
#: header is damaged, and positions lose the precision the windows need (an origin of 1e30 mm
#: leaves none: every voxel has the same coordinates).
MAX_COORDINATE_MM = 1e5
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _drop_trailing_axes(image: sitk.Image) -> sitk.Image:
    """The image without its axes of size 1 beyond the third (a 4D/5D file holding one volume)."""
    size = list(image.GetSize())
    if len(size) <= 3 or any(s != 1 for s in size[3:]):
        return image
    return sitk.Extract(image, size[:3] + [0] * (len(size) - 3), [0] * len(size))


def _check_placement(image: sitk.Image, name: str) -> None:
    """Spacing within :data:`SPACING_RANGE_MM` and every corner within :data:`MAX_COORDINATE_MM`."""
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)
    low, high = SPACING_RANGE_MM
    if not np.all((spacing >= low) & (spacing <= high)):
        raise ImageError(
            f"{name} has a voxel spacing of {[float(f'{s:.3g}') for s in spacing]} mm, outside the {low:g}-{high:g} mm of any CT or "
            "MR volume: its header is damaged or in other units (m or µm). Set the spacing in mm (e.g. SimpleITK SetSpacing, or "
            "Volumes > Volume information in 3D Slicer) and try again"
        )
    last = [float(s - 1) for s in image.GetSize()]
    corners = [image.TransformContinuousIndexToPhysicalPoint([a, b, c]) for a in (0.0, last[0]) for b in (0.0, last[1]) for c in (0.0, last[2])]
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)
    far = float(np.max(np.abs(np.concatenate([origin, np.ravel(corners)]))))
    if not far <= MAX_COORDINATE_MM:
        raise ImageError(
            f"{name} reaches {far:.4g} mm from the origin of patient coordinates (origin {[float(f'{o:.6g}') for o in origin]}): "
            f"no scanner places a volume more than {MAX_COORDINATE_MM:g} mm away, and positions that far lose the precision the "
            "model needs. The header is damaged: set the origin (e.g. to 0, 0, 0 with SimpleITK SetOrigin) and place the clicks on that"
        )


def _check_values(values: np.ndarray, name: str) -> None:
    """Finite voxels whose magnitude fits in float32 (checked before a float64 image is cast)."""
    if values.dtype.kind != "f":
        return
    low, high = float(values.min()), float(values.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise ImageError(
            f"{name} has {bad} NaN/inf voxel(s) out of {values.size}; fix or mask them before segmenting "
            "(e.g. replace them with the background intensity)"
        )
    if max(abs(low), abs(high)) > _FLOAT32_MAX:
        raise ImageError(
            f"{name} has intensities from {low:.3g} to {high:.3g}, beyond the ±{_FLOAT32_MAX:.3g} of 32-bit floats the model "
            "computes in; rescale the intensities (e.g. to Hounsfield units or 0-1) before segmenting"
        )


def image_from_array(
    array_zyx: np.ndarray,
    spacing_xyz_mm: Sequence[float] = (1.0, 1.0, 1.0),
    origin_lps: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Any = None,
) -> sitk.Image:
    """Build a SimpleITK image from a numpy array and explicit geometry.

    The pixel type follows the array's dtype (bool becomes uint8); use :func:`validate_image`
    to get a float32 image for segmentation.

    Args:
        array_zyx: 3D array in SimpleITK order (k, j, i), i.e. (z, y, x).
        spacing_xyz_mm: voxel spacing along index axes (i, j, k) in mm.
        origin_lps: LPS mm of the centre of voxel (0, 0, 0).
        direction: (3, 3) matrix whose column c is the LPS direction of index axis c, or a
            flat sequence of 9 values in row-major order; identity when None.

    Returns:
        3D scalar SimpleITK image.

    Raises:
        ImageError: the array is not 3D, or the geometry is invalid.
    """
    array = np.asarray(array_zyx)
    if array.ndim != 3:
        raise ImageError(f"array_zyx must be a 3D (z, y, x) array, got shape {array.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    spacing = np.asarray(spacing_xyz_mm, dtype=np.float64)
    origin = np.asarray(origin_lps, dtype=np.float64)
    matrix = (np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)).reshape(-1)
    if spacing.shape != (3,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ImageError(f"spacing_xyz_mm must be 3 positive numbers, got {list(np.ravel(spacing_xyz_mm))}")
    if origin.shape != (3,) or not np.all(np.isfinite(origin)):
        raise ImageError(f"origin_lps must be 3 finite numbers, got {list(np.ravel(origin_lps))}")
    if matrix.size != 9 or not np.all(np.isfinite(matrix)):
        raise ImageError(f"direction must be a 3x3 matrix, got {np.asarray(direction).tolist()}")
    mat = matrix.reshape(3, 3)
    if not np.allclose(mat.T @ mat, np.eye(3), atol=1e-4):
        raise ImageError(f"direction must be orthonormal (columns = unit LPS axis directions), got {mat.tolist()}")
    image = sitk.GetImageFromArray(array, isVector=False)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(origin.tolist())
    image.SetDirection([float(v) for v in matrix])
    return image


def _verify_mask(temp: Path, expected: sitk.Image) -> str | None:
    """Why the written ``temp`` is not ``expected`` (None when it is); see :func:`~SAMMed3DLib.outputs.read_back_difference`."""
    if _suffix(temp, (".nii", ".nii.gz")) is not None:  # SimpleITK reads a truncated NIfTI as zeros, without an error
        try:
            scan = scan_nifti(temp)
        except ImageError as exc:
            return f"the file written has a damaged header ({exc})"
        if scan.stream_error is not None:
            return f"the file written is corrupt ({scan.stream_error})"
        if scan.held < scan.announced:
            return f"the file written holds {scan.held} of the {scan.announced} bytes its header announces"
    return read_back_difference(temp, expected)


def _extent_ijk(mask_zyx: np.ndarray) -> list[int]:
    """Slicer's segment extent [i0, i1, j0, j1, k0, k1] of the non-zero voxels ("0 -1 ..." when empty)."""
    if not mask_zyx.any():
        return [0, -1, 0, -1, 0, -1]
    extent: list[int] = []
    for axis in (2, 1, 0):  # i, j, k
        other = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask_zyx.any(axis=other))
        extent += [int(present[0]), int(present[-1])]
    return extent


def _segmentation_fields(mask_zyx: np.ndarray, segment_name: str, color_rgb: Sequence[float]) -> dict[str, str]:
    """Custom NRRD fields of a one-segment Slicer segmentation (label value 1, layer 0)."""
    segment_id = "_".join(segment_name.split()) or "Segment_1"
    return {
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_SourceRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
        "Segment0_ID": segment_id,
        "Segment0_Name": segment_name,
        "Segment0_NameAutoGenerated": "0",
        "Segment0_Color": " ".join(f"{float(c):.6g}" for c in color_rgb),
        "Segment0_ColorAutoGenerated": "0",
        "Segment0_LabelValue": "1",
        "Segment0_Layer": "0",
        "Segment0_Extent": " ".join(str(v) for v in _extent_ijk(mask_zyx)),
        "Segment0_Tags": "|",
    }


def write_segmentation(
    mask: sitk.Image,
    path: str | os.PathLike[str],
    segment_name: str = "Segment_1",
    color_rgb: Sequence[float] = (0.9, 0.4, 0.2),
    files: AtomicFiles | None = None,
) -> Path:
    """Write a label mask atomically and verified; the format follows the extension.

    - ``.seg.nrrd``: a 3D Slicer segmentation with one segment (all non-zero voxels, stored as
      label 1) named ``segment_name`` with colour ``color_rgb``;
    - ``.nii`` / ``.nii.gz`` / ``.nrrd`` / ``.mha``: the label values as they are (uint8).

    Args:
        mask: 3D scalar SimpleITK label image on the image grid (uint8, or an integer type whose
            values fit 0..255).
        path: destination file.
        segment_name: segment name (``.seg.nrrd`` only).
        color_rgb: segment colour, 3 values in [0, 1] (``.seg.nrrd`` only).
        files: stage the file in this transaction (:func:`~SAMMed3DLib.outputs.all_or_nothing`),
            moved with the others when it commits; None: move it into place now.

    Returns:
        The written path.

    Raises:
        OutputError: unsupported extension, missing or read-only folder, a folder in the way, or
            the write failed or reads back differently (nothing half-written is left; an
            existing file is unchanged).
        ImageError: the mask is not a 3D integer image with values in 0..255.
    """
    path = check_output_path(path, "segmentation", extensions=tuple(SEGMENTATION_EXTENSIONS))
    extension = _suffix(path, tuple(SEGMENTATION_EXTENSIONS))
    if not isinstance(mask, sitk.Image) or mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1:
        got = (
            f"a {mask.GetDimension()}D image with {mask.GetNumberOfComponentsPerPixel()} component(s)" if isinstance(mask, sitk.Image) else type(mask).__name__
        )
        raise ImageError(f"the segmentation mask must be a 3D scalar SimpleITK image, got {got}")
    if mask.GetPixelID() not in _INTEGER_PIXEL_IDS:
        raise ImageError(f"the segmentation mask must have an integer pixel type, got {mask.GetPixelIDTypeAsString()}")
    values = sitk.GetArrayViewFromImage(mask)
    if values.size and (int(values.min()) < 0 or int(values.max()) > 255):
        raise ImageError(f"the segmentation mask values must lie in 0..255, got {int(values.min())}..{int(values.max())}")
    out = sitk.Cast(mask, sitk.sitkUInt8) if mask.GetPixelID() != sitk.sitkUInt8 else mask
    if extension == ".seg.nrrd":
        color = [float(c) for c in color_rgb]
        if len(color) != 3 or not all(0.0 <= c <= 1.0 for c in color):
            raise OutputError(f"color_rgb must be 3 numbers in [0, 1], got {list(color_rgb)}")
        binary = (sitk.GetArrayViewFromImage(out) > 0).astype(np.uint8)
        labelled = sitk.GetImageFromArray(binary)
        labelled.CopyInformation(out)
        for key, value in _segmentation_fields(binary, segment_name, color).items():
            labelled.SetMetaData(key, value)
        out = labelled
    compress = extension != ".nii"
    write_verified(
        path,
        lambda temp: sitk.WriteImage(out, str(temp), useCompression=compress),
        lambda temp: _verify_mask(temp, out),
        suffix=SEGMENTATION_EXTENSIONS[extension],
        files=files,
        describe=_first_line,
    )
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(out)))
    if files is None:  # in a transaction the caller reports the write once every output is in place
        logger.info("wrote segmentation %s (%d non-zero voxels)", path, voxels)
    return path


# Display planes (LPS unit vectors): columns run along `u` (left → right on screen), rows along
# `v` (top → bottom). Radiological convention as in 3D Slicer: axial and coronal show the
# patient's right on the left, sagittal shows anterior on the left; superior/anterior on top.
_PREVIEW_PLANES: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "axial": (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])),  # u = Left, v = Posterior
    "coronal": (np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])),  # u = Left, v = Inferior
    "sagittal": (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])),  # u = Posterior, v = Inferior
}


def _plane_reference(corners_lps: np.ndarray, point_lps: np.ndarray, u: np.ndarray, v: np.ndarray, pixel_mm: float) -> sitk.Image:
    """One-slice 3D reference grid of the plane through ``point_lps`` spanned by u and v."""
    w = np.cross(u, v)
    du = (corners_lps - point_lps) @ u
    dv = (corners_lps - point_lps) @ v
    size_u = max(int(np.ceil((du.max() - du.min()) / pixel_mm)) + 1, 1)
    size_v = max(int(np.ceil((dv.max() - dv.min()) / pixel_mm)) + 1, 1)
    reference = sitk.Image([size_u, size_v, 1], sitk.sitkFloat32)
    reference.SetSpacing([pixel_mm, pixel_mm, 1.0])
    reference.SetDirection(np.column_stack([u, v, w]).ravel().tolist())
    reference.SetOrigin((point_lps + du.min() * u + dv.min() * v).tolist())
    return reference


def write_preview_png(
    image: sitk.Image,
    mask: sitk.Image | None,
    point_lps: Sequence[float],
    path: str | os.PathLike[str],
    max_panel_px: int = 384,
    files: AtomicFiles | None = None,
) -> Path:
    """Write axial | coronal | sagittal slices through a point, mask overlaid, as one PNG.

    Slices are world-aligned planes through ``point_lps`` covering the whole image (oblique
    images are resampled), shown in radiological convention (patient right on the left in axial
    and coronal, anterior on the left in sagittal, superior/anterior up). Intensities are
    windowed to the image's 1st-99th percentiles; the mask's non-zero voxels are tinted orange
    and the point is marked with a green cross.

    Args:
        image: 3D scalar image (LPS geometry).
        mask: label image in the same physical space (any grid), or None for no overlay.
        point_lps: (3,) LPS mm where the three planes cross.
        path: destination .png file (written atomically, decoded back and compared).
        max_panel_px: largest side of one panel in pixels.
        files: stage the file in this transaction, as for :func:`write_segmentation`.

    Returns:
        The written path.

    Raises:
        ImageError: the image or mask is not 3D scalar.
        PromptError: ``point_lps`` is not 3 finite numbers.
        OutputError: the file name does not end with .png, or the file cannot be written (or
            reads back differently).
    """
    path = check_output_path(path, "preview", extensions=(".png",))
    image = validate_image(image)
    if mask is not None and (not isinstance(mask, sitk.Image) or mask.GetDimension() != 3 or mask.GetNumberOfComponentsPerPixel() != 1):
        raise ImageError("the preview mask must be a 3D scalar SimpleITK image or None")
    point = np.asarray(point_lps, dtype=np.float64)
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise PromptError(f"point_lps must be 3 finite LPS coordinates in mm, got {point_lps!r}")
    values = sitk.GetArrayViewFromImage(image)
    stride = max(1, int(np.ceil((values.size / 2_000_000) ** (1 / 3))))
    low, high = (float(v) for v in np.percentile(values[::stride, ::stride, ::stride], [1.0, 99.0]))
    if high <= low:
        high = low + 1.0
    size = np.asarray(image.GetSize())
    corners_idx = np.array([[a, b, c] for a in (0, size[0] - 1) for b in (0, size[1] - 1) for c in (0, size[2] - 1)], dtype=np.float64)
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint(c.tolist()) for c in corners_idx])
    extent = float(np.max(corners.max(axis=0) - corners.min(axis=0)))
    pixel_mm = max(float(min(image.GetSpacing())), extent / max_panel_px)
    mask_u8 = None if mask is None else sitk.Cast(mask, sitk.sitkUInt8) if mask.GetPixelID() != sitk.sitkUInt8 else mask
    panels = []
    for u, v in _PREVIEW_PLANES.values():
        reference = _plane_reference(corners, point, u, v, pixel_mm)
        grey = sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), sitk.sitkLinear, low, sitk.sitkFloat32))[0]
        grey = np.clip((grey - low) / (high - low), 0.0, 1.0) * 255.0
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        if mask_u8 is not None:
            labels = sitk.GetArrayFromImage(sitk.Resample(mask_u8, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))[0]
            tint = labels > 0
            rgb[tint] = (1.0 - _OVERLAY_ALPHA) * rgb[tint] + _OVERLAY_ALPHA * _OVERLAY_RGB
        rgb = np.round(rgb).astype(np.uint8)
        centre = reference.TransformPhysicalPointToContinuousIndex(point.tolist())
        col, row = int(round(centre[0])), int(round(centre[1]))
        if 0 <= row < rgb.shape[0] and 0 <= col < rgb.shape[1]:  # a cross with a gap at the point
            rgb[row, max(col - 6, 0) : max(col - 1, 0)] = _MARKER_RGB
            rgb[row, col + 2 : col + 7] = _MARKER_RGB
            rgb[max(row - 6, 0) : max(row - 1, 0), col] = _MARKER_RGB
            rgb[row + 2 : row + 7, col] = _MARKER_RGB
        panels.append(rgb)
    height = max(p.shape[0] for p in panels)
    gap = np.zeros((height, 4, 3), dtype=np.uint8)
    padded = []
    for index, panel in enumerate(panels):
        canvas = np.zeros((height, panel.shape[1], 3), dtype=np.uint8)
        top = (height - panel.shape[0]) // 2
        canvas[top : top + panel.shape[0]] = panel
        padded.append(canvas)
        if index < len(panels) - 1:
            padded.append(gap)
    picture = sitk.GetImageFromArray(np.concatenate(padded, axis=1), isVector=True)
    return write_verified(
        path,
        lambda temp: sitk.WriteImage(picture, str(temp)),
        lambda temp: read_back_difference(temp, picture),
        suffix=".png",
        files=files,
        describe=_first_line,
    )
