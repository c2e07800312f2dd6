"""Error types and the exit codes they map to (0 ok, 1 gate failed, 2 user error, 3 runtime error)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_GATE_FAILED = 1
EXIT_USER = 2
EXIT_RUNTIME = 3


class ArtifixError(Exception):
    """Base class; `exit_code` is what the CLI returns."""

    exit_code = EXIT_RUNTIME


class UserError(ArtifixError):
    """A mistake in the user's input, config or files: one clear sentence, exit 2."""

    exit_code = EXIT_USER


class RuntimeFailure(ArtifixError):
    """Something failed while running although the input was valid: exit 3."""

    exit_code = EXIT_RUNTIME


class GateFailed(ArtifixError):
    """A release gate criterion failed: exit 1."""

    exit_code = EXIT_GATE_FAILED
