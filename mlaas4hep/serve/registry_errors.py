"""The registry's errors, each with the HTTP status and field the service answers with."""

from __future__ import annotations

from typing import Any

from mlaas4hep.errors import MlaasError


class RegistryError(MlaasError, ValueError):
    """A registry operation was refused; ``status`` is the HTTP status that fits."""

    status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)

    def payload(self) -> dict[str, Any]:
        return {"error": str(self), "field": self.field, "problem": str(self)}


class ModelNotFound(RegistryError, LookupError):
    """No model version, name or alias matches."""

    status = 404


class RegistryConflict(RegistryError):
    """The operation conflicts with the registry's state (an aliased version, a tag taken)."""

    status = 409


class StaleCandidate(RegistryConflict):
    """A promotion of a version trained on older data than the one behind the alias."""


class ArchiveError(RegistryError):
    """An uploaded archive is malformed, unsafe or too large."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, field="body")
        self.status = status
