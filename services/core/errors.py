"""Domain errors shared by every service. They carry no HTTP: core.http maps them to a status.

Messages are short, actionable and safe to show to the caller (devices and curl users read them);
anything a client sent is passed through ``identity.printable`` before it lands in a message.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base of the errors a caller may see verbatim."""


class Invalid(DomainError):
    """The request is malformed (400)."""


class Unauthenticated(DomainError):
    """No or wrong credentials (401). ``challenges`` become WWW-Authenticate headers."""

    def __init__(
        self, message: str = "authentication required", challenges: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.challenges = challenges


class Forbidden(DomainError):
    """Authenticated, but not allowed (403)."""


class NotFound(DomainError):
    """Nothing there, or nothing the caller may know about (404)."""


class Conflict(DomainError):
    """The request contradicts the current state (409)."""


class Unprocessable(DomainError):
    """Well-formed, but the content is not acceptable (422)."""


class TooLarge(DomainError):
    """The body or a collection in it exceeds a configured limit (413)."""


class TooManyRequests(DomainError):
    """The caller is over a limit for now (429); ``retry_after`` seconds become Retry-After."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Busy(DomainError):
    """The server is at a configured capacity for this kind of work (503, Retry-After)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UsageError(Exception):
    """A command-line problem the user can fix; printed as one line, exit status 2."""
