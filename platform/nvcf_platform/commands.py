"""The `nvcf-sidecar` subcommands the platform adds (entry point group `nvcf_sidecar.commands`).

Kept to a table of module names so that `nvcf-sidecar --help` imports none of them.
"""

from __future__ import annotations

from typing import Final

__all__ = ["COMMANDS"]

COMMANDS: Final[dict[str, tuple[str, str]]] = {
    "platform": (
        "nvcf_platform.main",
        "run the local invocation service and the nvcf.Worker gRPC stand-in",
    ),
    "dev": (
        "nvcf_platform.devstack.dev",
        "run the whole local stack: dev [OPTIONS] -- COMMAND, or dev --config functions.toml",
    ),
    "function": ("nvcf_platform.cli.function", "manage functions and deployments, as nvcf-cli"),
}
