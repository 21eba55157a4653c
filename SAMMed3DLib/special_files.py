"""Refuse inputs that are not regular files before a reader opens them.

Opening a FIFO (named pipe) for reading blocks until another process writes to it, possibly
forever, and SimpleITK, GDCM and ``open`` all wait without a timeout; a socket or a device is
no image either. So every image reader checks its path first (:func:`refuse_special_file`), the
DICOM reader checks each entry of its folder, because GDCM opens every file there to find the
series (:func:`refuse_special_entries`), and a detached header's data file is checked too
(:func:`refuse_special_data_file`, MetaImage ``.mhd`` and NRRD ``.nhdr``). Only ``stat`` calls
are made: nothing is opened but a header, which is a regular file by then.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .errors import ImageError

__all__ = ["refuse_special_data_file", "refuse_special_entries", "refuse_special_file", "special_file_kind"]

logger = logging.getLogger(__name__)

#: Header keys naming the separate data file of a detached header, by header extension.
_DATA_FILE_KEYS: dict[str, tuple[str, str]] = {".mhd": ("=", "elementdatafile"), ".nhdr": (":", "data file")}
#: Bytes of a detached header read to find its data file (headers are a few hundred bytes).
_HEADER_BYTES = 1 << 16
#: What to do instead, appended to every refusal.
_ADVICE = "save the image to a regular file (.nii.gz, .nrrd, .mha) or a folder of DICOM slices and pass that"


def special_file_kind(path: Path) -> str | None:
    """What ``path`` is when it exists but is neither a regular file nor a folder, else None.

    Symbolic links are followed (a link to a FIFO is a FIFO); a missing path gives None, so
    the caller's own "does not exist" message applies.
    """
    if path.is_file() or path.is_dir() or not path.exists():
        return None
    for test, kind in (
        (path.is_fifo, "a FIFO (named pipe)"),
        (path.is_socket, "a socket"),
        (path.is_char_device, "a character device"),
        (path.is_block_device, "a block device"),
    ):
        if test():
            return kind
    return "not a regular file"


def refuse_special_file(path: Path, what: str = "image") -> None:
    """Raise :class:`ImageError` if ``path`` is a FIFO, socket or device.

    Raises:
        ImageError: naming what the path is and what to pass instead.
    """
    kind = special_file_kind(path)
    if kind is not None:
        raise ImageError(f"{what} {str(path)!r} is {kind}, not a regular file or a DICOM folder, and reading it could block forever; {_ADVICE}")


def refuse_special_entries(folder: Path) -> None:
    """Raise :class:`ImageError` if an entry of ``folder`` is a FIFO, socket or device.

    Raises:
        ImageError: the folder cannot be listed, or holds such an entry (named in the message).
    """
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise ImageError(f"cannot list folder {str(folder)!r}: {exc.strerror or exc}") from exc
    for entry in entries:
        kind = special_file_kind(entry)
        if kind is not None:
            raise ImageError(
                f"folder {str(folder)!r} holds {entry.name!r}, which is {kind}: scanning the folder for DICOM slices "
                "could block forever. Remove it, or copy the DICOM slices into a folder of their own"
            )


def refuse_special_data_file(header: Path) -> None:
    """Raise :class:`ImageError` if a detached header (``.mhd``, ``.nhdr``) names a special data file.

    Only a single data file is checked; file lists and patterns are left to the reader.
    """
    suffix = next((s for s in _DATA_FILE_KEYS if header.name.lower().endswith(s)), None)
    if suffix is None:
        return
    separator, key = _DATA_FILE_KEYS[suffix]
    try:
        with open(header, "rb") as handle:
            text = handle.read(_HEADER_BYTES).decode("latin-1")
    except OSError:
        return  # the reader reports an unreadable header itself
    for line in text.splitlines():
        name, sep, value = line.partition(separator)
        data = value.strip()
        if sep and name.strip().lower() == key:
            if data and " " not in data and data.upper() not in ("LIST", "LOCAL"):
                refuse_special_file(header.parent / data, what=f"the data file of {str(header)!r},")
            return
