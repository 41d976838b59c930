"""Exceptions raised at the library boundary, each with one clear message for the user."""


class StableSRError(Exception):
    """Base class: the CLI prints the message without a traceback."""


class WeightsNotFoundError(StableSRError, FileNotFoundError):
    """A weight file or folder the user must provide is missing."""


class CheckpointMismatchError(StableSRError):
    """A checkpoint's keys or shapes do not match the model it is loaded into."""


class ImageReadError(StableSRError):
    """An input image cannot be read (corrupt, truncated, unsupported)."""
