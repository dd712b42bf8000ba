"""What the stack's processes complained about during a scenario: their warnings and errors, counted.

Reads dev's `logs/<process>.log` files (the sidecars' JSON lines, the platform's text lines,
nats-server's `[WRN]`/`[ERR]` lines); ids, ports and numbers are masked so that alike lines count
as one.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Final

__all__ = ["log_digest"]

_PLATFORM_LINE: Final = re.compile(
    r"^\d{4}-\d\d-\d\d [\d:,.]+ (WARNING|ERROR|CRITICAL) (\S+) (.*)$"
)
_NATS_LINE: Final = re.compile(r"\[(WRN|ERR|FTL)\] (.*)$")
_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NUMBER: Final = re.compile(r"\d+")
_LEVELS: Final = {"WARNING", "ERROR", "CRITICAL"}
_WIDTH: Final = 160


def _mask(text: str) -> str:
    return _NUMBER.sub("N", _UUID.sub("<id>", text))[:_WIDTH]


def _complaint(line: str) -> str | None:
    """`LEVEL logger: message` of a warning or error line, else None."""
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return None
        if not isinstance(record, dict) or record.get("level") not in _LEVELS:
            return None
        return f"{record['level']} {record.get('logger', '?')}: {record.get('message', '')}"
    if match := _PLATFORM_LINE.match(line):
        return f"{match.group(1)} {match.group(2)}: {match.group(3)}"
    if match := _NATS_LINE.search(line):
        return f"{match.group(1)} {match.group(2)}"
    if line.startswith("Traceback"):
        return "Traceback"
    return None


def log_digest(logs_dir: Path, limit: int = 12) -> dict[str, int]:
    """The `limit` most frequent warnings and errors of every process, as `process: complaint`
    (sidecars of one version counted together) -> count."""
    counts: Counter[str] = Counter()
    for path in sorted(logs_dir.glob("*.log")):
        process = re.sub(r"-\d+$", "", path.stem)
        with path.open(errors="replace") as lines:
            for line in lines:
                complaint = _complaint(line.rstrip("\n"))
                if complaint is not None:
                    counts[f"{process}: {_mask(complaint)}"] += 1
    return dict(counts.most_common(limit))
