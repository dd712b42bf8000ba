"""Typed, null-as-absent reads of JSON request bodies for the control plane's validators.

`FieldReader` reads one object's fields and raises `ControlError` (400) in Spring's
bean-validation shape naming the field; ISO-8601 durations and URIs are checked as Java parses them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

import orjson

from nvcf_platform.control.problems import ControlError, bad_request

__all__ = ["FieldReader", "format_duration", "invalid", "is_uri", "parse_duration"]

_DURATION_RE: Final = re.compile(
    r"([-+]?)P(?:([-+]?\d+)D)?(T(?:([-+]?\d+)H)?(?:([-+]?\d+)M)?(?:([-+]?\d+)(?:[.,](\d{0,9}))?S)?)?",
    re.IGNORECASE | re.ASCII,
)
_SCHEME_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_URI_ILLEGAL: Final = frozenset(' "<>\\^`{|}')
_REJECTED_MAX: Final = 256


def invalid(obj: str, field: str, rejected: object, message: str) -> ControlError:
    """400 in Spring's bean-validation shape, naming the object, field and rejected value."""
    return bad_request(
        f"Validation failed: [object={obj}, field={field}, rejected={_show(rejected)}, "
        f"message={message}]"
    )


def _show(value: object) -> str:
    if value is None:
        text = "null"
    elif isinstance(value, str):
        text = value
    else:
        text = orjson.dumps(value).decode()
    if len(text) <= _REJECTED_MAX:
        return text
    return f"{text[:_REJECTED_MAX]}... (truncated for log/response, total length {len(text)} chars)"


def parse_duration(text: str) -> Decimal | None:
    """Seconds of an ISO-8601 duration as Java's `Duration.parse` reads it; None if invalid."""
    match = _DURATION_RE.fullmatch(text)
    if (
        match is None
        or (match.group(3) or "").upper() == "T"
        or not any(match.group(i) for i in (2, 3))
    ):
        return None
    sign, days, _, hours, minutes, seconds, fraction = match.groups()
    secs = Decimal(seconds or 0)
    if fraction:
        frac = Decimal("0." + fraction)
        secs += -frac if seconds and seconds.startswith("-") else frac
    total = Decimal(days or 0) * 86400 + Decimal(hours or 0) * 3600 + Decimal(minutes or 0) * 60
    total += secs
    return -total if sign == "-" else total


def format_duration(seconds: Decimal) -> str:
    """Java's `Duration.toString` of a non-negative duration (`PT10S`, `PT1M30S`, `PT0.5S`)."""
    if seconds == 0:
        return "PT0S"
    whole = int(seconds)
    hours, minutes, secs = whole // 3600, whole % 3600 // 60, seconds - whole // 60 * 60
    text = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if secs:
        text += format(secs.normalize(), "f") + "S"
    return text


def is_uri(text: str) -> bool:
    """Whether `java.net.URI` parses `text` (relative references included)."""
    if any(ch in _URI_ILLEGAL or ord(ch) < 0x20 or ord(ch) == 0x7F or ch.isspace() for ch in text):
        return False
    if text.count("#") > 1 or re.search(r"%(?![0-9A-Fa-f]{2})", text):
        return False
    end = next((i for i, ch in enumerate(text) if ch in ":/?#"), -1)
    if (
        end >= 0
        and text[end] == ":"
        and (not _SCHEME_RE.fullmatch(text[:end]) or end == len(text) - 1)
    ):
        return False
    bracketed = re.match(r"[A-Za-z][A-Za-z0-9+.\-]*://\[[0-9A-Fa-f:.]+\]", text)
    rest = text[bracketed.end() :] if bracketed else text
    return "[" not in rest and "]" not in rest


class FieldReader:
    """Typed reads of one JSON object's fields; JSON null reads as absent.

    `obj` names the request in messages (`createFunctionRequest`), `path` the object within it
    (`health`, `deploymentSpecifications[0]`); each failure names the full field path.
    """

    def __init__(self, body: object, obj: str, path: str = "") -> None:
        if not isinstance(body, dict):
            raise invalid(obj, path or "body", body, "must be a JSON object")
        self.body: dict[str, Any] = body
        self.obj = obj
        self.path = path

    def field(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, rejected: object, message: str) -> ControlError:
        return invalid(self.obj, self.field(name), rejected, message)

    def get(self, name: str) -> object:
        return self.body.get(name)

    def has(self, name: str) -> bool:
        return self.body.get(name) is not None

    def string(self, name: str, *, required: bool = False, blank: bool = True) -> str | None:
        value = self.body.get(name)
        if value is None:
            if required:
                raise self.error(name, None, "must not be null")
            return None
        if not isinstance(value, str):
            raise self.error(name, value, "must be a string")
        if not blank and not value.strip():
            raise self.error(name, value, "must not be blank")
        return value

    def uri(self, name: str, *, required: bool = False) -> str | None:
        value = self.string(name, required=required)
        if value is not None and not is_uri(value):
            raise self.error(name, value, "must be a valid URI")
        return value

    def integer(
        self,
        name: str,
        *,
        required: bool = False,
        minimum: int | None = None,
        maximum: int | None = None,
        positive: bool = False,
    ) -> int | None:
        value = self.body.get(name)
        if value is None:
            if required:
                raise self.error(name, None, "must not be null")
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, value, "must be an integer")
        if minimum is not None and value < minimum:
            # Bean validation's wording: @Positive vs @Min / @PositiveOrZero.
            what = "greater than 0" if positive else f"greater than or equal to {minimum}"
            raise self.error(name, value, f"must be {what}")
        if maximum is not None and value > maximum:
            raise self.error(name, value, f"must be less than or equal to {maximum}")
        return value

    def required_string(self, name: str, *, blank: bool = False) -> str:
        """A string that must be present (and, unless `blank`, not blank)."""
        value = self.string(name, required=True, blank=blank)
        assert value is not None  # required=True raised otherwise
        return value

    def required_integer(self, name: str, *, minimum: int, positive: bool = False) -> int:
        """An integer that must be present, at least `minimum`."""
        value = self.integer(name, required=True, minimum=minimum, positive=positive)
        assert value is not None  # required=True raised otherwise
        return value

    def enum(self, name: str, choices: Mapping[str, str] | tuple[str, ...]) -> str | None:
        """The canonical spelling of a case-insensitive enum value."""
        value = self.string(name)
        if value is None:
            return None
        canon = choices if isinstance(choices, Mapping) else {c: c for c in choices}
        for key, spelling in canon.items():
            if key.upper() == value.upper():
                return spelling
        raise self.error(name, value, f"must be one of [{', '.join(canon.values())}]")

    def mapping(self, name: str, *, required: bool = False) -> dict[str, Any] | None:
        value = self.body.get(name)
        if value is None:
            if required:
                raise self.error(name, None, "must not be null")
            return None
        if not isinstance(value, dict):
            raise self.error(name, value, "must be a JSON object")
        return value

    def nested(self, name: str, *, required: bool = False) -> FieldReader | None:
        value = self.mapping(name, required=required)
        return None if value is None else FieldReader(value, self.obj, self.field(name))

    def array(self, name: str) -> list[Any] | None:
        value = self.body.get(name)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.error(name, value, "must be a JSON array")
        return value

    def elements(self, name: str) -> list[FieldReader]:
        """Readers of each object of the array `name` ([] when absent)."""
        return [
            FieldReader(item, self.obj, f"{self.field(name)}[{index}]")
            for index, item in enumerate(self.array(name) or ())
        ]

    def strings(self, name: str, *, unique: bool = False, drop_blank: bool = False) -> list[str]:
        """An array of strings ([] when absent); a set keeps first occurrences in order."""
        result: list[str] = []
        for item in self.array(name) or ():
            if not isinstance(item, str):
                raise self.error(f"{name}[]", item, "must be a string")
            if drop_blank and not item.strip():
                continue
            if not unique or item not in result:
                result.append(item)
        return result
