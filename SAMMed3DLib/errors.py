"""One exception type per kind of error a user can cause.

Every error raised on purpose by this project derives from :class:`SAMMed3DError`, so callers
(the CLI, the Slicer module) can catch project errors without catching programming bugs. Each
message says what happened, the value that was seen and what to do about it.
"""

from __future__ import annotations


class SAMMed3DError(Exception):
    """Base class of all errors this project raises on purpose."""


class ConfigError(SAMMed3DError, ValueError):
    """A model configuration or option is invalid (unknown key, impossible size, bad option)."""


class CheckpointError(SAMMed3DError):
    """A checkpoint file cannot be read: missing, truncated, corrupt or of an unknown layout."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint would execute code or build arbitrary objects when unpickled; it was refused."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint's tensors do not fit the model: missing/unexpected keys or wrong shapes."""


class ModelCardError(SAMMed3DError, ValueError):
    """A model card is missing a field, holds an invalid value, or does not match its weights."""


class DownloadError(SAMMed3DError):
    """A model download failed (network error, interrupted transfer, no disk space)."""


class IntegrityError(DownloadError):
    """A downloaded file does not have the expected size or SHA-256 digest."""


class OperationCancelledError(SAMMed3DError):
    """The user cancelled a long operation (e.g. a download); nothing was left half-done."""


class UnknownModelError(SAMMed3DError, KeyError):
    """A model name is not in the registry and is not an existing file."""

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0]) if self.args else ""


class ImageError(SAMMed3DError, ValueError):
    """An image cannot be used: unreadable file, not 3D, NaN/inf voxels, empty."""


class PromptError(SAMMed3DError, ValueError):
    """A click cannot be used: outside the image, negative first click, malformed coordinates."""


class SessionStateError(SAMMed3DError, RuntimeError):
    """A session method was called in the wrong state (e.g. a click before an image was set)."""


class DataError(SAMMed3DError, ValueError):
    """A dataset folder cannot be used: empty, missing files, inconsistent labels."""


class DeviceError(SAMMed3DError, RuntimeError):
    """The requested compute device is not available or ran out of memory."""


class OutputError(SAMMed3DError, OSError):
    """A result file cannot be written: unsupported extension, missing folder, no permission, no disk space."""


class OutputConflictError(OutputError):
    """An output path is the input (or another output) of the same command; writing it would destroy data."""
