"""`nvcf-sidecar function ...`: NVIDIA nvcf-cli's function and deployment commands, here.

`function` parses and dispatches, `subcommands` does each command's work, `bodies` builds request
bodies from flags, `api_client` calls the API, `display` prints, `state` remembers the last ids.
"""

from nvcf_platform.cli.api_client import ApiClient, wait_until_deployed
from nvcf_platform.cli.errors import (
    ApiError,
    CliError,
    DeploymentFailed,
    DeploymentTimedOut,
    PlatformUnreachable,
    UsageError,
)
from nvcf_platform.cli.state import CliState

__all__ = [
    "ApiClient",
    "ApiError",
    "CliError",
    "CliState",
    "DeploymentFailed",
    "DeploymentTimedOut",
    "PlatformUnreachable",
    "UsageError",
    "wait_until_deployed",
]
