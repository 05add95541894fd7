"""Errors: retryable or permanent, each mapping to an HTTP problem and a consumer action."""

from __future__ import annotations


class HeraldError(Exception):
    """Base of Herald's errors. `status` and `title` shape the problem+json answer."""

    status: int = 500
    title: str = "Internal error"
    retryable: bool = False

    def __init__(self, detail: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field
        self.code = code

    @property
    def type_uri(self) -> str:
        """The problem type, a stable URI-reference naming the error class."""
        return f"https://herald.dev/problems/{self.code or type(self).__name__}"


class PermanentError(HeraldError):
    """Processing can never succeed: 4xx over HTTP, the DLQ for a consumer."""

    status = 422
    title = "Unprocessable"


class InvalidInput(PermanentError):
    """A field is wrong."""

    status = 422
    title = "Invalid input"


class MalformedRequest(PermanentError):
    """The body cannot be parsed at all (not JSON, not form data)."""

    status = 400
    title = "Malformed request"


class NotFound(PermanentError):
    """The named resource does not exist."""

    status = 404
    title = "Not found"


class Conflict(PermanentError):
    """The request conflicts with the current state."""

    status = 409
    title = "Conflict"


class PreconditionFailed(PermanentError):
    """If-Match did not match."""

    status = 412
    title = "Precondition failed"


class RetryableError(HeraldError):
    """A passing failure: 503 over HTTP, bounded retries for a consumer."""

    status = 503
    title = "Temporarily unavailable"
    retryable = True

    def __init__(
        self,
        detail: str,
        *,
        retry_after: float | None = None,
        field: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(detail, field=field, code=code)
        self.retry_after = retry_after
