"""Registry errors: each message says what is wrong and what to do; the CLI prints it and exits 2."""

from __future__ import annotations


class RegistryError(Exception):
    """Base class of everything the registry refuses."""


class InvalidName(RegistryError):
    """An adapter or alias name outside the grammar `[a-z0-9][a-z0-9._-]{0,62}`."""


class InvalidSpec(RegistryError):
    """A `NAME@vN[=WEIGHT]` target list that breaks the routing rules."""


class ArtifactRejected(RegistryError):
    """An artifact that failed the push checks; `problems` lists every failure found."""

    def __init__(self, folder: str, problems: list[str]):
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"refusing to push {folder}: {len(problems)} problem(s)\n{listing}")


class BaseModelMismatch(RegistryError):
    """The registry has no usable base model, or a different one from the one asked for."""


class NotFound(RegistryError):
    """A version or alias that does not exist."""


class InUse(RegistryError):
    """A version that an alias still routes traffic to."""


class NothingToRollBack(RegistryError):
    """An alias with no earlier routing to return to."""
