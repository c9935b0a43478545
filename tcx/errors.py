"""Errors a user can act on.

Every failure caused by input (a config value, a file, the network) raises a `TcxError` subclass
whose message is one paragraph naming the bad key or file and what to do. The CLI prints that
paragraph alone; anything else is a bug and keeps its traceback.
"""


class TcxError(Exception):
    """Base class: the message is shown to the user as is."""


class ConfigError(TcxError, ValueError):
    """A config value is impossible; the message names the key."""


class ModelLoadError(TcxError):
    """A model could not be loaded (unknown, corrupt, or unreachable hub)."""


class CorpusError(TcxError):
    """The text corpus is missing or empty."""


class CheckpointError(TcxError):
    """A checkpoint or saved dictionary cannot be read; the file is left untouched."""


class NonFiniteLossError(TcxError):
    """Training produced NaN/inf; the last good checkpoint is kept."""


class OutOfSpaceError(TcxError):
    """The disk (or a quota) filled while writing; the file keeps its previous content."""


class RunDirBusyError(TcxError):
    """Another live process is training in the same run dir."""


class NotWritableError(TcxError):
    """An output folder that cannot be written (read-only, no permission)."""
