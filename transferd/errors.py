"""The exception tree every failure in transferd descends from.

    TransferError                 (class "internal" unless a subclass says otherwise)
     ├── RetryableError           transient: reset, timeout, 5xx, 429 (carries retry_after_s)
     ├── PermanentError           will not get better by retrying: 404/410, bad request, disk full
     │    └── NotFound            the source or destination does not exist
     ├── AuthError                401/403 from a peer; class "auth"
     │    └── AuthExpired         a token ran out mid-transfer; refresh and retry
     ├── ChecksumMismatch         computed != expected; class "checksum" (retryable once)
     ├── SourceChanged            the source validator changed between attempts or mid-file
     └── Canceled                 the file was canceled or its lease was lost

Every failure that reaches a file record carries ``error_class`` (a short word)
and ``reason`` (one human sentence, never a secret).
"""

from __future__ import annotations


class TransferError(Exception):
    """Root of every transfer failure; ``error_class`` is what the retry policy reads."""

    error_class = "internal"
    retryable = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RetryableError(TransferError):
    """A transient failure; the file is retried after a backoff."""

    error_class = "transient"
    retryable = True

    def __init__(self, reason: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after_s = retry_after_s


class PermanentError(TransferError):
    """A failure that retrying cannot fix."""

    error_class = "permanent"


class NotFound(PermanentError):
    """The source (or a destination parent) does not exist."""

    error_class = "not_found"


class DiskFull(PermanentError):
    """The destination has no space left."""

    error_class = "disk_full"


class AuthError(TransferError):
    """A peer refused our credentials (401/403)."""

    error_class = "auth"


class AuthExpired(AuthError):
    """A credential expired mid-transfer; a fresh one may succeed."""

    retryable = True


class ChecksumMismatch(TransferError):
    """The computed checksum differs from the expected one; both values are in the reason."""

    error_class = "checksum"
    retryable = True

    def __init__(self, algorithm: str, expected: str, actual: str, *, where: str = "") -> None:
        where_txt = f" ({where})" if where else ""
        super().__init__(
            f"{algorithm} checksum mismatch{where_txt}: expected {expected}, got {actual}"
        )
        self.algorithm = algorithm
        self.expected = expected
        self.actual = actual


class SourceChanged(RetryableError):
    """The source changed (size/ETag/Last-Modified) since the manifest was written."""

    error_class = "source_changed"


class Canceled(TransferError):
    """The transfer was canceled, or this worker lost its lease."""

    error_class = "canceled"
