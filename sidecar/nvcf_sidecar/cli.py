"""`nvcf-sidecar`: one command line for the sidecar and the local platform.

Each subcommand's module owns its own flags (`add_arguments`) and its entry (`run_command`);
this module only dispatches, so importing it stays cheap.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence
from typing import Final

__all__ = ["ENTRY_POINT_GROUP", "commands", "main"]

# subcommand -> (module, one-line help). Modules are imported only when their command runs.
_COMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "nvcf_sidecar.worker.main",
        "run the utils sidecar next to a function's inference server",
    ),
    "invoke": (
        "nvcf_sidecar.client.invoke",
        "call a function as an NVCF client does: assets, status polls, large responses",
    ),
}
ENTRY_POINT_GROUP: Final = "nvcf_sidecar.commands"
"""Installed packages add subcommands here (the platform adds `platform`, `dev`, `function`): each
entry point names a mapping shaped like `_COMMANDS`, so the sidecar never imports them itself."""


def commands() -> dict[str, tuple[str, str]]:
    """The sidecar's own subcommands and those installed packages add, in that order."""
    found = dict(_COMMANDS)
    for entry in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)):
        try:
            table = entry.load()
        except ImportError:
            continue  # declared but not installed, e.g. the sidecar image, which ships no platform
        for name, command in table.items():
            found.setdefault(name, command)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run the chosen subcommand; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("command", nargs="?")
    known, _ = parser.parse_known_args(args_list[:1])
    full = _full_parser(known.command)
    args = full.parse_args(args_list)
    module = importlib.import_module(args._module)
    status: int = module.run_command(args)
    return status


def _full_parser(command: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nvcf-sidecar",
        description="NVCF utils sidecar and local platform, wire-compatible with NVIDIA's NVCF.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, summary) in commands().items():
        sub = subparsers.add_parser(name, help=summary, description=summary)
        sub.set_defaults(_module=module_name)
        if name == command:
            importlib.import_module(module_name).add_arguments(sub)
    return parser


if __name__ == "__main__":
    sys.exit(main())
