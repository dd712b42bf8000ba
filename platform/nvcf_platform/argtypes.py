"""argparse `type=` converters shared by the platform's commands (`dev`, `function`): each
returns the parsed value or raises `ArgumentTypeError` naming what was wrong."""

from __future__ import annotations

import argparse
import uuid

__all__ = ["count", "port", "port_or_zero", "positive", "seconds", "uuid_text"]


def uuid_text(value: str) -> str:
    """A UUID, in its canonical lower-case hyphenated form."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {value!r}") from None


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None


def count(value: str) -> int:
    """An integer >= 0."""
    number = _integer(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {number}")
    return number


def positive(value: str) -> int:
    """An integer >= 1."""
    number = _integer(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {number}")
    return number


def port(value: str) -> int:
    """A TCP port, 1-65535."""
    number = _integer(value)
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {number}")
    return number


def port_or_zero(value: str) -> int:
    """A TCP port, or 0 for a free one."""
    number = _integer(value)
    if not 0 <= number < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {number}")
    return number


def seconds(value: str) -> float:
    """A finite number of seconds > 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive: {value}")
    return number
