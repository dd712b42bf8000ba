"""The errors of `nvcf-sidecar function`: one base class, and what each failure says.

Every error the commands raise on purpose is a `CliError`; the dispatcher prints it as
`error: <message>` on stderr and exits with its `exit_status`.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ApiError",
    "CliError",
    "DeploymentFailed",
    "DeploymentTimedOut",
    "PlatformUnreachable",
    "UsageError",
]


class CliError(Exception):
    """Base class: the command could not do what was asked (exit status 1)."""

    exit_status: ClassVar[int] = 1


class UsageError(CliError):
    """Flags or an input file that argparse could not check: a missing field, bad JSON (exit 2)."""

    exit_status: ClassVar[int] = 2


class ApiError(CliError):
    """The API refused a call: its HTTP status and RFC 9457 problem `title` and `detail`."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")


class PlatformUnreachable(CliError):
    """No answer from the API's base URL: refused, unresolvable or too slow."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(
            f"cannot reach the NVCF API at {url} ({reason}); is the platform running? "
            "(--base-url or $NVCF_BASE_HTTP_URL)"
        )


class DeploymentFailed(CliError):
    """The version being deployed ended in ERROR (or was undeployed meanwhile)."""


class DeploymentTimedOut(CliError):
    """The version was not ACTIVE within `--timeout` seconds."""
