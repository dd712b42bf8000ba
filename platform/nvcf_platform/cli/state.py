"""The last function and version a command worked on, kept between runs like NVIDIA's CLI does.

A small JSON file (`$NVCF_CLI_STATE`, else `~/.nvcf-cli.state`); a missing or unreadable file is
an empty state, so `--function-id` / `--version-id` are then required.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["DEFAULT_STATE_FILE", "STATE_ENV", "CliState", "state_path"]

STATE_ENV: Final = "NVCF_CLI_STATE"
DEFAULT_STATE_FILE: Final = "~/.nvcf-cli.state"


def state_path() -> Path:
    """Where the state lives: `$NVCF_CLI_STATE`, else `~/.nvcf-cli.state`."""
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE_FILE).expanduser()


@dataclass(frozen=True)
class CliState:
    """The remembered ids; `None` where nothing is remembered."""

    function_id: str | None = None
    version_id: str | None = None

    @classmethod
    def load(cls, path: Path) -> CliState:
        """The state in `path`; empty when the file is missing, with a warning when it is broken."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as error:
            print(f"warning: ignoring the CLI state file {path}: {error}", file=sys.stderr)
            return cls()
        if not isinstance(data, dict):
            print(f"warning: ignoring the CLI state file {path}: not an object", file=sys.stderr)
            return cls()
        function_id, version_id = data.get("functionId"), data.get("versionId")
        return cls(
            function_id=function_id if isinstance(function_id, str) else None,
            version_id=version_id if isinstance(version_id, str) else None,
        )

    def save(self, path: Path) -> None:
        """Write the state to `path` (replacing it whole); a failure is a warning, not an error,
        since the command itself has already succeeded."""
        data = {"functionId": self.function_id, "versionId": self.version_id}
        partial = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            partial.replace(path)
        except OSError as error:
            print(f"warning: could not remember the ids in {path}: {error}", file=sys.stderr)
