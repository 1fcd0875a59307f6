"""Exception types and their single mapping to an HTTP status and a JSON error body."""

from __future__ import annotations


class ShepherdError(Exception):
    """Base of every error meant for a human: `str(err)` is the message, `status` the HTTP status."""

    status: int = 500
    code: str = "INTERNAL_ERROR"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self) -> dict[str, str]:
        """The JSON error body: `error` (message) and `code`, plus `field` when one is to blame."""
        out = {"error": self.message, "code": self.code}
        if self.field:
            out["field"] = self.field
        return out


class InvalidInput(ShepherdError):
    """A request, file or argument is malformed or breaks a rule."""

    status = 400
    code = "INVALID_PARAMETER_VALUE"


class BundleRejected(InvalidInput):
    """A bundle failed verification or safe extraction; nothing was changed."""

    code = "BUNDLE_REJECTED"


class PayloadTooLarge(InvalidInput):
    """A body or archive member is larger than the configured limit."""

    status = 413
    code = "PAYLOAD_TOO_LARGE"


class NotFound(ShepherdError):
    """The named resource does not exist."""

    status = 404
    code = "RESOURCE_DOES_NOT_EXIST"


class Conflict(ShepherdError):
    """The change conflicts with the current state."""

    status = 409
    code = "RESOURCE_ALREADY_EXISTS"


class Busy(ShepherdError):
    """Too much of this kind of work is already in flight; retry later."""

    status = 503
    code = "BUSY"


class Unauthenticated(ShepherdError):
    """No valid token was presented."""

    status = 401
    code = "UNAUTHENTICATED"


class Forbidden(ShepherdError):
    """The token's role is not allowed to do this."""

    status = 403
    code = "PERMISSION_DENIED"


class ConfigError(ShepherdError):
    """A config or policy file is invalid: the message names the key, the value and the reason."""

    status = 400
    code = "INVALID_CONFIG"
