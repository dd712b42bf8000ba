"""The functions and versions the local platform serves, read from a small TOML file.

Stands in for the NVCF API's function catalogue: which function ids exist, their versions, and the
default invocation path each version's container is called on (reference §3.4, §5.1 step 4).
"""

from __future__ import annotations

import random
import re
import tomllib
import urllib.parse
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nvcf_platform.errors import ConfigError, FunctionNotFound, FunctionVersionNotFound

__all__ = ["Function", "FunctionVersion", "Registry", "canonical_uuid"]

_UUID_TEXT: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
# A default invocation path is appended verbatim to the container's URL by the worker.
_PATH: Final = re.compile(r"(/[\x21-\x7e]*)?")
_FUNCTION_KEYS: Final = frozenset({"id", "name", "default_invocation_path", "versions"})
_VERSION_KEYS: Final = frozenset(
    {"id", "default_invocation_path", "min_instances", "instance_health_urls"}
)


_HYPHENATED = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_FORMS = re.compile(
    rf"[0-9a-f]{{32}}|{_HYPHENATED}|\{{{_HYPHENATED}\}}|urn:uuid:{_HYPHENATED}", re.I
)
"""The UUID forms the invocation service's parser takes: simple, hyphenated, braced, URN
(Python's `uuid.UUID` alone would also take hyphens anywhere)."""


_CANONICAL = re.compile(_HYPHENATED)
"""The canonical form, which every caller of this platform's own URLs already uses."""


def canonical_uuid(text: str) -> str | None:
    """`text` as a lower-case hyphenated UUID, or None when it is not one of those forms."""
    if _CANONICAL.fullmatch(text):
        return text  # on every invocation's path: skip the parse and format
    if not _UUID_FORMS.fullmatch(text):
        return None
    return str(uuid.UUID(text))


@dataclass(frozen=True, slots=True)
class FunctionVersion:
    """One deployable version of a function: what a work item for it carries."""

    function_id: str
    function_version_id: str
    function_name: str
    invocation_path: str
    """`requestPath` of pexec work items: the version's default invocation path ("" means `/`)."""
    min_instances: int = 0
    """NVCF's `minInstances`: ready instances the version needs to be ACTIVE (0: zero-scaled,
    ACTIVE without any); the dev stack starts this many sidecars."""
    instance_health_urls: tuple[str, ...] = ()
    """Readiness URLs of the version's instances (a sidecar's `/v1/health/ready`), probed by the
    platform to derive the version's status; written by the dev stack, which knows its sidecars."""


@dataclass(frozen=True, slots=True)
class Function:
    """A function id, its name and its versions (at least one)."""

    function_id: str
    name: str
    versions: tuple[FunctionVersion, ...]


class Registry:
    """Functions by id and versions by id; lookups raise `FunctionNotFound`/`...VersionNotFound`.

    Built from the registry file; the control plane adds and removes the versions it registers
    through the API (`add`, `remove`). Version ids are unique across all functions, as in NVCF.
    """

    __slots__ = ("_functions", "_versions")

    def __init__(self, functions: Iterable[Function]) -> None:
        self._functions: dict[str, Function] = {}
        self._versions: dict[str, FunctionVersion] = {}
        for function in functions:
            if function.function_id in self._functions:
                raise ConfigError(f"function id {function.function_id} is configured twice")
            if not function.versions:
                raise ConfigError(f"function {function.function_id} has no versions")
            self._functions[function.function_id] = function
            for version in function.versions:
                if version.function_version_id in self._versions:
                    raise ConfigError(
                        f"function version id {version.function_version_id} is configured twice"
                    )
                self._versions[version.function_version_id] = version

    @classmethod
    def from_toml(cls, path: str | Path) -> Registry:
        """Read and validate a registry file; every problem raises `ConfigError` naming the key."""
        source = Path(path)
        try:
            with source.open("rb") as file:
                data = tomllib.load(file)
        except OSError as error:
            raise ConfigError(f"cannot read function registry {source}: {error}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{source}: not valid TOML: {error}") from None
        return cls.from_mapping(data, source=str(source))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "registry") -> Registry:
        """Build from the parsed document (`{"functions": [...]}`); see docs/platform.md."""
        unknown = set(data) - {"functions"}
        if unknown:
            raise ConfigError(f"{source}: unknown top-level keys {sorted(unknown)}")
        entries = data.get("functions", [])
        if not isinstance(entries, list):
            raise ConfigError(f"{source}: `functions` must be an array of tables ([[functions]])")
        functions = [
            _function(entry, f"{source}: functions[{i}]") for i, entry in enumerate(entries)
        ]
        return cls(functions)

    def add(self, version: FunctionVersion) -> None:
        """Add (or replace) one version; its function is created with it when new."""
        function = self._functions.get(version.function_id)
        if function is None:
            function = Function(version.function_id, version.function_name, (version,))
        else:
            kept = tuple(
                v for v in function.versions if v.function_version_id != version.function_version_id
            )
            function = Function(function.function_id, function.name, (*kept, version))
        self._functions[version.function_id] = function
        self._versions[version.function_version_id] = version

    def remove(self, function_version_id: str) -> None:
        """Forget one version (no-op when unknown); a function goes with its last version."""
        version = self._versions.pop(function_version_id, None)
        if version is None:
            return
        function = self._functions[version.function_id]
        kept = tuple(v for v in function.versions if v.function_version_id != function_version_id)
        if kept:
            self._functions[version.function_id] = Function(
                function.function_id, kept[0].function_name, kept
            )
        else:
            del self._functions[version.function_id]

    def contains(self, function_version_id: str) -> bool:
        return function_version_id in self._versions

    @property
    def functions(self) -> tuple[Function, ...]:
        """Every configured function, in file order."""
        return tuple(self._functions.values())

    @property
    def versions(self) -> tuple[FunctionVersion, ...]:
        """Every configured version of every function, in file order."""
        return tuple(self._versions.values())

    def function(self, function_id: str) -> Function:
        """The function with this id (compared as a canonical UUID)."""
        key = canonical_uuid(function_id)
        function = None if key is None else self._functions.get(key)
        if function is None:
            raise FunctionNotFound(function_id)
        return function

    def version(self, function_id: str, function_version_id: str) -> FunctionVersion:
        """The version `function_version_id` of function `function_id`."""
        function = self.function(function_id)
        key = canonical_uuid(function_version_id)
        version = None if key is None else self._versions.get(key)
        if version is None or version.function_id != function.function_id:
            raise FunctionVersionNotFound(function.function_id, function_version_id)
        return version

    def resolve(self, function_id: str, function_version_id: str | None) -> FunctionVersion:
        """The version an invocation goes to: the named one, or a random version of the function.

        NVCF picks at random among the versions the caller may invoke (reference §5.1 step 4).
        """
        if function_version_id is not None:
            return self.version(function_id, function_version_id)
        versions = self.function(function_id).versions
        return versions[0] if len(versions) == 1 else random.choice(versions)


# --- parsing -------------------------------------------------------------------------------------


def _table(value: object, where: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a table, not {type(value).__name__}")
    unknown = set(value) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    return value


def _uuid(table: Mapping[str, Any], where: str) -> str:
    value = table.get("id")
    if not isinstance(value, str) or not _UUID_TEXT.fullmatch(value):
        raise ConfigError(f"{where}.id: {value!r} is not a UUID (8-4-4-4-12 hex digits)")
    return value.lower()


def _path(table: Mapping[str, Any], where: str, default: str) -> str:
    value = table.get("default_invocation_path", default)
    if not isinstance(value, str) or not _PATH.fullmatch(value):
        raise ConfigError(
            f"{where}.default_invocation_path: {value!r} must be empty or start with '/' "
            "and hold no spaces or control characters"
        )
    return value


def _function(entry: object, where: str) -> Function:
    table = _table(entry, where, _FUNCTION_KEYS)
    function_id = _uuid(table, where)
    name = table.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}.name: {name!r} must be a non-empty string")
    path = _path(table, where, "")
    entries = table.get("versions")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{where}.versions: at least one [[functions.versions]] is required")
    versions = tuple(
        _version(item, f"{where}.versions[{i}]", function_id, name, path)
        for i, item in enumerate(entries)
    )
    return Function(function_id=function_id, name=name, versions=versions)


def _version(
    entry: object, where: str, function_id: str, name: str, function_path: str
) -> FunctionVersion:
    table = _table(entry, where, _VERSION_KEYS)
    min_instances = table.get("min_instances", 0)
    if isinstance(min_instances, bool) or not isinstance(min_instances, int) or min_instances < 0:
        raise ConfigError(f"{where}.min_instances: {min_instances!r} must be an integer >= 0")
    return FunctionVersion(
        function_id=function_id,
        function_version_id=_uuid(table, where),
        function_name=name,
        invocation_path=_path(table, where, function_path),
        min_instances=min_instances,
        instance_health_urls=_health_urls(table, where),
    )


def _health_urls(table: Mapping[str, Any], where: str) -> tuple[str, ...]:
    values = table.get("instance_health_urls", [])
    if not isinstance(values, list):
        raise ConfigError(f"{where}.instance_health_urls: must be an array of http(s) URLs")
    for i, value in enumerate(values):
        if not _is_http_url(value):
            raise ConfigError(f"{where}.instance_health_urls[{i}]: {value!r} is not an http(s) URL")
    return tuple(values)


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str) or any(c.isspace() for c in value):
        return False
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port  # raises for a port that is not a number or out of range
    except ValueError:
        return False
    return parts.scheme in {"http", "https"} and bool(parts.hostname)
