"""The one exception family of mlctl.

Every failure a user can act on is an :class:`MlctlError` carrying a message
(what went wrong, naming the file, field or host) and a hint (what to do).
The CLI catches this family in one place and prints both; anything else is a
bug and is allowed to show a traceback.
"""

from __future__ import annotations


class MlctlError(Exception):
    """Base of all expected failures: a message and an actionable hint."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\nHint: {self.hint}"
        return self.message


class UsageError(MlctlError):
    """A command-line argument or option is wrong."""

    exit_code = 2


class ProfileError(MlctlError):
    """A profile file is missing, unreadable or invalid."""


class FitError(MlctlError):
    """The model does not fit the hardware; the message shows the sums."""

    exit_code = 3


class ConnectError(MlctlError):
    """The SSH connection could not be made or was lost."""


class RemoteError(MlctlError):
    """A command on the host failed."""


class HubError(MlctlError):
    """The Hugging Face Hub refused or could not answer."""


class HealthError(MlctlError):
    """The endpoint did not become ready or answered wrongly."""


class StateError(MlctlError):
    """Local state (saved hosts, deployments) is unreadable or inconsistent."""


class SandboxError(MlctlError):
    """The sandbox host could not be started, reached or stopped."""


class DeployError(MlctlError):
    """A deploy step failed; the message names the step, the cause and the fix."""
