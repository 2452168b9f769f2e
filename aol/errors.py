"""The exception tree of aol.

Every error derives from `AolError`; a subclass's docstring is its default message.
Handlers steer the worker by type: a `PermanentError` sends the action straight to `dead`,
any other exception (or a timeout) is retried until `max_attempts`.
"""

from __future__ import annotations


class AolError(Exception):
    """An aol operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(AolError):
    """aol is configured with a value it cannot use."""


class DatabaseUnavailable(AolError):
    """The database cannot be reached."""


class SchemaMismatch(AolError):
    """The database schema is not at a revision this aol knows."""


class MigrationFailed(AolError):
    """A schema migration failed; its transaction was rolled back."""


class PermissionDenied(AolError):
    """The database role aol connected as lacks a right this operation needs."""


class LeaseHeld(AolError):
    """Another worker holds the lease."""

    def __init__(self, owner: str | None, epoch: int) -> None:
        self.owner = owner
        self.epoch = epoch
        super().__init__(
            f"another worker holds the lease: owner={owner or 'unknown'} epoch={epoch}; "
            "stop it first, or start this one with --standby to take over when it exits"
        )


class LeaseLost(AolError):
    """This worker no longer holds the lease; it must not write under its epoch."""

    def __init__(self, epoch: int, reason: str) -> None:
        self.epoch = epoch
        self.reason = reason
        super().__init__(f"lease lost at epoch {epoch}: {reason}")


class HandlerTimeout(AolError):
    """The handler did not finish within its timeout."""


class AttemptInterrupted(AolError):
    """The attempt was cut short before its handler finished."""


class EnqueueRejected(AolError):
    """The database refused the action."""

    def __init__(self, message: str, *, field: str | None = None, constraint: str | None = None):
        self.field = field
        self.constraint = constraint
        super().__init__(message)


class PermanentError(AolError):
    """The action cannot succeed by retrying; it goes straight to dead."""


class UnknownActionType(PermanentError):
    """No handler is registered for this action type."""


class InvalidPayload(PermanentError):
    """The payload does not match what the handler needs."""


class RealRunNotConfigured(PermanentError):
    """Proof mode is off but no real integration is configured for this action type."""
