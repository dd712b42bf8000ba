"""The file of `nvcf-sidecar dev --config FILE`: several functions and versions in one local stack.

It extends the platform's registry file (docs/platform.md) with how to run each version: its
server's command, port and health endpoint, its sidecars and their environment. It may also hold
the `[[images]]` and `[[models]]` tables of an image catalog (backends/images.py), handed to the
platform for the functions deployed through the API; a file with only those runs no function.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from nvcf_platform.backends.images import ImageCatalog
from nvcf_platform.control.registry import _path, _table, _uuid
from nvcf_platform.devstack.stack_process import StackError
from nvcf_platform.devstack.stack_spec import FunctionSpec
from nvcf_platform.errors import ConfigError

__all__ = [
    "DevConfig",
    "catalog_toml",
    "check_function_name",
    "load_dev_config",
    "load_dev_file",
    "specs_from_mapping",
]

# Keys of a version; each may also be given on its function, as the default of its versions.
# fmt: off
_RUN_KEYS: Final = frozenset({
    "command", "inference_port", "default_invocation_path", "health_endpoint", "sidecars",
    "min_instances", "max_request_concurrency", "env", "sidecar_env", "sidecar_args",
    "cwd", "model", "secrets",
})
# fmt: on
_FUNCTION_KEYS: Final = _RUN_KEYS | {"id", "name", "versions"}
_VERSION_KEYS: Final = _RUN_KEYS | {"id"}
_MERGED_TABLES: Final = ("env", "sidecar_env")
# Names become process and log-file names (`server-<name>`, `logs/server-<name>.log`).
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ENDPOINT: Final = re.compile(r"/[\x21-\x7e]*")
_DEFAULTS: Final = FunctionSpec(command=["unused"], inference_port=1)
_CATALOG_KEYS: Final = frozenset({"images", "models"})


@dataclass(frozen=True)
class DevConfig:
    """A dev config file: the versions to run and the image catalog it holds (maybe empty)."""

    functions: tuple[FunctionSpec, ...]
    catalog: ImageCatalog


@dataclass(frozen=True)
class _Layers:
    """A version's table over its function's: a key is looked up in the version first."""

    tables: Sequence[tuple[Mapping[str, Any], str]]
    """(table, where) pairs, the most specific first."""

    @property
    def where(self) -> str:
        return self.tables[0][1]

    def origin(self, key: str) -> tuple[Mapping[str, Any], str] | None:
        """The table that gives `key` and where it is, or None."""
        for table, where in self.tables:
            if key in table:
                return table, where
        return None

    def find(self, key: str) -> tuple[Any, str] | None:
        """The value of `key` and where it was given, or None."""
        found = self.origin(key)
        return None if found is None else (found[0][key], found[1])


def check_function_name(name: str) -> str:
    """`name` if it can name processes and log files, else ConfigError."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"function name {name!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def load_dev_config(path: str | Path) -> tuple[FunctionSpec, ...]:
    """Read and validate a dev config file; every problem raises `ConfigError` naming the file
    and key. Servers run in the file's directory."""
    return load_dev_file(path).functions


def load_dev_file(path: str | Path) -> DevConfig:
    """A dev config file's versions and image catalog (paths relative to the file), validated;
    every problem raises `ConfigError` naming the file and key."""
    source = Path(path)
    try:
        with source.open("rb") as file:
            data = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"cannot read dev config {source}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{source}: not valid TOML: {error}") from None
    base_dir = source.resolve().parent
    functions = specs_from_mapping(data, source=str(source), base_dir=base_dir)
    catalog = ImageCatalog.from_mapping(
        data, source=str(source), base_dir=base_dir, other_keys={"functions"}
    )
    return DevConfig(functions, catalog)


def specs_from_mapping(
    data: Mapping[str, Any], *, source: str = "dev config", base_dir: Path | None = None
) -> tuple[FunctionSpec, ...]:
    """One `FunctionSpec` per version of the parsed document, in file order (none when the
    document holds only `[[images]]` or `[[models]]`)."""
    unknown = set(data) - {"functions"} - _CATALOG_KEYS
    if unknown:
        raise ConfigError(
            f"{source}: unknown top-level keys {sorted(unknown)}; allowed: functions, images, models"
        )
    entries = data.get("functions")
    if entries is None and _CATALOG_KEYS & set(data):
        return ()
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"{source}: at least one [[functions]] table is required "
            "(or only [[images]] and [[models]]: a platform for the API)"
        )
    specs: list[FunctionSpec] = []
    claimed: dict[tuple[str, object], str] = {}  # (what, value) -> where it was first given

    def claim(what: str, key: str, value: object, where: str) -> None:
        first = claimed.setdefault((what, value), where)
        if first != where:
            earlier = first.removeprefix(f"{source}: ")
            raise ConfigError(f"{where}.{key}: {value} is already used by {earlier}")

    for index, entry in enumerate(entries):
        where = f"{source}: functions[{index}]"
        versions = _function(entry, where, base_dir)
        claim("function", "id", versions[0][0].function_id, where)
        for spec, inner in versions:
            if inner != where:
                claim("version", "id", spec.version_id, inner)
            claim("port", "inference_port", spec.inference_port, inner)
            specs.append(spec)
    return tuple(specs)


def _function(entry: object, where: str, base_dir: Path | None) -> list[tuple[FunctionSpec, str]]:
    table = _table(entry, where, _FUNCTION_KEYS)
    function_id = _uuid(table, where) if "id" in table else str(uuid.uuid4())
    name = table.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"{where}.name: required (a string), not {name!r}")
    try:
        check_function_name(name)
    except ConfigError as error:
        raise ConfigError(f"{where}.name: {error}") from None
    versions = table.get("versions")
    if versions is None:  # the function's table is its only version
        layers = _Layers([(table, where)])
        return [(_spec(layers, function_id, str(uuid.uuid4()), name, base_dir), where)]
    if not isinstance(versions, list) or not versions:
        raise ConfigError(f"{where}.versions: must be an array of tables ([[functions.versions]])")
    found = []
    for index, item in enumerate(versions):
        inner = f"{where}.versions[{index}]"
        version = _table(item, inner, _VERSION_KEYS)
        version_id = _uuid(version, inner) if "id" in version else str(uuid.uuid4())
        layers = _Layers([(version, inner), (table, where)])
        found.append((_spec(layers, function_id, version_id, name, base_dir), inner))
    return found


def _spec(
    layers: _Layers, function_id: str, version_id: str, name: str, base_dir: Path | None
) -> FunctionSpec:
    path = layers.origin("default_invocation_path")
    try:
        return FunctionSpec(
            command=_command(layers),
            inference_port=_integer(layers, "inference_port", None, 1, 65535),
            function_id=function_id,
            version_id=version_id,
            name=name,
            default_invocation_path=(
                _DEFAULTS.default_invocation_path if path is None else _path(*path, "")
            ),
            health_endpoint=_endpoint(layers),
            secrets=_secrets(layers, base_dir),
            sidecars=_integer(layers, "sidecars", _DEFAULTS.sidecars, 0),
            min_instances=_integer(layers, "min_instances", _DEFAULTS.min_instances, 0),
            max_request_concurrency=_integer(
                layers, "max_request_concurrency", _DEFAULTS.max_request_concurrency, 1
            ),
            container_env=_environment(layers, "env"),
            sidecar_env=_environment(layers, "sidecar_env"),
            sidecar_args=_strings(layers, "sidecar_args"),
            cwd=_directory(layers, base_dir),
        )
    except StackError as error:
        raise ConfigError(f"{layers.where}: {error}") from None


def _command(layers: _Layers) -> list[str]:
    found = layers.find("command")
    if found is None:
        raise ConfigError(f"{layers.where}.command: required (a string or a list of strings)")
    value, where = found
    if isinstance(value, str):
        try:
            parts = shlex.split(value)
        except ValueError as error:
            raise ConfigError(
                f"{where}.command: {value!r} is not valid shell words: {error}"
            ) from None
    elif isinstance(value, list) and all(isinstance(part, str) for part in value):
        parts = list(value)
    else:
        raise ConfigError(f"{where}.command: {value!r} must be a string or a list of strings")
    if not parts or not parts[0]:
        raise ConfigError(f"{where}.command: must name a program")
    return parts


def _integer(
    layers: _Layers, key: str, default: int | None, minimum: int, maximum: int | None = None
) -> int:
    found = layers.find(key)
    if found is None:
        if default is None:
            raise ConfigError(f"{layers.where}.{key}: required (an integer)")
        return default
    value, where = found
    in_range = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    if not in_range or (maximum is not None and value > maximum):
        limits = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ConfigError(f"{where}.{key}: {value!r} must be an integer {limits}")
    return int(value)


def _endpoint(layers: _Layers) -> str:
    found, model = layers.find("health_endpoint"), layers.find("model")
    if found is not None and model is not None:
        raise ConfigError(f"{model[1]}.model: give either model or health_endpoint, not both")
    if model is not None:
        name, where = model
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"{where}.model: {name!r} is not a Triton model name")
        return f"/v2/models/{name}/ready"
    if found is None:
        return _DEFAULTS.health_endpoint
    value, where = found
    if not isinstance(value, str) or not _ENDPOINT.fullmatch(value):
        raise ConfigError(
            f"{where}.health_endpoint: {value!r} must start with '/' and hold no spaces "
            "or control characters"
        )
    return value


def _relative(value: object, where: str, base_dir: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: {value!r} must be a path (a string)")
    path = Path(value).expanduser()
    return path if base_dir is None else base_dir / path


def _directory(layers: _Layers, base_dir: Path | None) -> Path | None:
    """`cwd`, relative to the config file's directory; that directory itself by default."""
    found = layers.find("cwd")
    if found is None:
        return base_dir
    path = _relative(found[0], f"{found[1]}.cwd", base_dir)
    if not path.is_dir():
        raise ConfigError(f"{found[1]}.cwd: {found[0]!r} is not a directory ({path})")
    return path


def _secrets(layers: _Layers, base_dir: Path | None) -> Path | dict[str, Any] | None:
    """`secrets`: a JSON file (relative to the config file's directory) or an inline table."""
    found = layers.find("secrets")
    if found is None:
        return None
    value, where = found
    if isinstance(value, dict):
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.secrets: only JSON values (no dates)") from None
        return dict(value)
    path = _relative(value, f"{where}.secrets", base_dir)
    try:
        document = json.loads(path.read_bytes())
    except OSError as error:
        raise ConfigError(f"{where}.secrets: cannot read {path}: {error.strerror}") from None
    except ValueError as error:  # never echo the content: it holds secrets
        raise ConfigError(f"{where}.secrets: {path} is not UTF-8 JSON: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{where}.secrets: {path} must hold a JSON object")
    return path


def _environment(layers: _Layers, key: str) -> dict[str, str]:
    """The function's table updated by the version's (a version's value wins)."""
    merged: dict[str, str] = {}
    for table, where in reversed(layers.tables):
        if key not in table:
            continue
        value = table[key]
        if not isinstance(value, dict):
            raise ConfigError(f"{where}.{key}: must be a table of NAME = value")
        for name, item in value.items():
            if not _ENV_NAME.fullmatch(name):
                raise ConfigError(f"{where}.{key}: {name!r} is not a variable name")
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                raise ConfigError(f"{where}.{key}.{name}: {item!r} must be a string or a number")
            merged[name] = str(item)
    return merged


def _strings(layers: _Layers, key: str) -> tuple[str, ...]:
    found = layers.find(key)
    if found is None:
        return ()
    value, where = found
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{where}.{key}: {value!r} must be a list of strings")
    return tuple(value)


def catalog_toml(catalog: ImageCatalog) -> str:
    """`catalog` as an image catalog file, its paths absolute (the file may live anywhere)."""
    lines: list[str] = []
    for image in catalog.images:
        lines += ["[[images]]", f"image = {_string(image.image)}"]
        lines.append(f"command = [{', '.join(_string(part) for part in image.command)}]")
        if image.cwd is not None:
            lines.append(f"cwd = {_string(str(image.cwd.resolve()))}")
        if image.env:
            pairs = ", ".join(f"{name} = {_string(value)}" for name, value in image.env.items())
            lines.append(f"env = {{ {pairs} }}")
        if image.port is not None:
            lines.append(f"port = {image.port}")
        if image.sidecar_env:
            pairs = ", ".join(
                f"{name} = {_string(value)}" for name, value in image.sidecar_env.items()
            )
            lines.append(f"sidecar_env = {{ {pairs} }}")
        if image.sidecar_args:
            lines.append(f"sidecar_args = [{', '.join(_string(a) for a in image.sidecar_args)}]")
        lines.append("")
    for model in catalog.models:
        lines += [
            "[[models]]",
            f"name = {_string(model.name)}",
            f"version = {_string(model.version)}",
            f"path = {_string(str(model.path.resolve()))}",
            "",
        ]
    return "\n".join(lines)


def _string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)
