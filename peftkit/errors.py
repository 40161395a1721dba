"""The small family of errors peftkit raises.

Every message names the problem *and* what to do about it; callers can catch
``PeftkitError`` for all of them, and each is also a ``ValueError`` so code that
already guards against bad values keeps working.
"""


class PeftkitError(ValueError):
    """Base class: something the user gave us cannot be used as it is."""


class UnsupportedModelError(PeftkitError):
    """The model's family has no layers/special tokens this method knows how to find."""


class SpecialTokenError(PeftkitError):
    """No usable special-token ids (PASTA needs them) or none present in the input."""


class MethodConfigError(PeftkitError):
    """A method's config does not fit the model (missing target modules, bad rank, ...)."""


class ModelKindError(PeftkitError):
    """A text model given for an image task, or a vision model for a text task."""


class AdapterMismatchError(PeftkitError):
    """An adapter was made for another backbone or another task head."""


class AdapterFileError(PeftkitError):
    """An adapter directory is missing files, or a file in it is corrupt."""


class DataError(PeftkitError):
    """A dataset is missing, empty, malformed or lacks a column."""


class TrainingError(PeftkitError):
    """Training cannot go on (non-finite loss, output directory in the way, ...)."""


class RequestError(PeftkitError):
    """A request to the server (or one row of a prediction file) cannot be answered as sent.

    ``status`` is the HTTP status the server answers with and ``code`` a stable machine-readable
    name for the problem; the message says what was wrong and what to send instead."""

    def __init__(self, message: str, *, status: int = 422, code: str = "invalid_request", headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


class AdaptedModelError(PeftkitError):
    """The model already carries an adapter; unload it or start from a fresh base model."""


class BaseModelError(PeftkitError):
    """The base model an adapter needs is not available locally, or cannot be loaded as asked."""
