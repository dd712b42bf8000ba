"""The local image and model catalog: what a function's `containerImage` and `models[]` mean on
this machine, read from a TOML file (`--images`), the stand-in for a container registry and NGC.

    [[images]]
    image = "nvcr.io/acme/echo:1.0"        # what a function's containerImage names
    command = ["python", "server.py", "--port", "{port}"]   # the image's ENTRYPOINT + CMD
    cwd = "examples/byoc/hello"            # optional, relative to the file
    env = { MODEL = "small" }              # optional
    # port = 8000                          # optional: a server that always listens there
    # sidecar_env = { NVCF_LOG_LEVEL = "debug" }   # optional: its sidecars' environment ...
    # sidecar_args = ["--health-check-interval", "1s"]   # ... and `nvcf-sidecar run` flags

    [[models]]
    name = "echo"                          # a function's models[] entry: name and version
    version = "1"
    path = "model_repository/echo"         # a Triton model directory, relative to the file
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from nvcf_platform.backends.errors import ImageNotFound, ModelNotFound
from nvcf_platform.errors import ConfigError

__all__ = ["ImageCatalog", "ImageEntry", "ModelEntry", "normalize_image_ref"]

_IMAGE_KEYS: Final = frozenset(
    {"image", "command", "cwd", "env", "port", "sidecar_env", "sidecar_args"}
)
_MODEL_KEYS: Final = frozenset({"name", "version", "path"})
_TOP_KEYS: Final = frozenset({"images", "models"})
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_IMAGE_REF: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")


def normalize_image_ref(ref: str) -> str:
    """`ref` with `:latest` added when it names neither a tag nor a digest (Docker's rule: a
    colon before the last `/` is a registry port, not a tag)."""
    last = ref.rsplit("/", 1)[-1]
    if "@" in last or ":" in last:
        return ref
    return f"{ref}:latest"


@dataclass(frozen=True)
class ImageEntry:
    """How to run one image locally: its command, working directory and environment."""

    image: str
    command: tuple[str, ...]
    """ENTRYPOINT + CMD; `{port}` becomes the instance's inference port."""
    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    port: int | None = None
    """The port its server always listens on (a command that cannot be given one, as an image
    built to listen on 8000); None: each instance gets a free port, the command's `{port}`.
    With a fixed port, one instance of it runs on this machine at a time."""
    sidecar_env: Mapping[str, str] = field(default_factory=dict)
    """Extra environment (NVIDIA's names) of the sidecar beside each instance; wins."""
    sidecar_args: tuple[str, ...] = ()
    """Extra `nvcf-sidecar run` flags of that sidecar."""


@dataclass(frozen=True)
class ModelEntry:
    """One model version: a Triton model directory (`config.pbtxt`, `1/model.py`, ...)."""

    name: str
    version: str
    path: Path


class ImageCatalog:
    """Images by reference and models by (name, version); immutable."""

    def __init__(self, images: Iterable[ImageEntry] = (), models: Iterable[ModelEntry] = ()):
        self._images = {normalize_image_ref(entry.image): entry for entry in images}
        self._models = {(entry.name, entry.version): entry for entry in models}

    def __repr__(self) -> str:
        return f"<ImageCatalog images={len(self._images)} models={len(self._models)}>"

    @classmethod
    def from_toml(cls, path: str | Path) -> ImageCatalog:
        """Read a catalog file; paths in it are relative to its directory. Every problem raises
        `ConfigError` naming the file and key."""
        source = Path(path)
        try:
            with source.open("rb") as file:
                data = tomllib.load(file)
        except OSError as error:
            raise ConfigError(f"cannot read image catalog {source}: {error.strerror}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{source}: not valid TOML: {error}") from None
        return cls.from_mapping(data, source=str(source), base_dir=source.resolve().parent)

    @classmethod
    def from_mapping(
        cls,
        data: Mapping[str, Any],
        *,
        source: str = "image catalog",
        base_dir: Path | None = None,
        other_keys: Collection[str] = (),
    ) -> ImageCatalog:
        """The catalog of a parsed document's `[[images]]` and `[[models]]` tables.

        `other_keys` are top-level keys that belong to a surrounding file (a dev config's
        `functions`) and are left alone; any other unknown key is an error. Relative paths are
        resolved against `base_dir` (None: the current directory)."""
        unknown = set(data) - _TOP_KEYS - set(other_keys)
        if unknown:
            raise ConfigError(
                f"{source}: unknown top-level keys {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}"
            )
        images = [
            _image(entry, f"{source}: images[{index}]", base_dir)
            for index, entry in enumerate(_array(data, "images", source))
        ]
        models = [
            _model(entry, f"{source}: models[{index}]", base_dir)
            for index, entry in enumerate(_array(data, "models", source))
        ]
        _unique([normalize_image_ref(entry.image) for entry in images], source, "images", "image")
        _unique([f"{m.name}:{m.version}" for m in models], source, "models", "name and version")
        return cls(images, models)

    @property
    def images(self) -> tuple[ImageEntry, ...]:
        return tuple(self._images.values())

    @property
    def models(self) -> tuple[ModelEntry, ...]:
        return tuple(self._models.values())

    def image(self, ref: str) -> ImageEntry:
        """The entry of image `ref` (a ref without tag is `:latest`); ImageNotFound if none."""
        entry = self._images.get(normalize_image_ref(ref.strip()))
        if entry is None:
            raise ImageNotFound(ref)
        return entry

    def model(self, name: str, version: str) -> ModelEntry:
        """The entry of model `name` version `version`; ModelNotFound if none."""
        entry = self._models.get((name, str(version)))
        if entry is None:
            raise ModelNotFound(name, str(version))
        return entry

    def merged(self, other: ImageCatalog) -> ImageCatalog:
        """A catalog of both; `other`'s entry wins where both name the same image or model."""
        return ImageCatalog([*self.images, *other.images], [*self.models, *other.models])


def _array(data: Mapping[str, Any], key: str, source: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{source}: {key}: must be an array of tables ([[{key}]])")
    return value


def _table(value: object, where: str, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: must be a table, not {type(value).__name__}")
    unknown = set(value) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
    return value


def _unique(keys: list[str], source: str, array: str, what: str) -> None:
    seen: dict[str, int] = {}
    for index, key in enumerate(keys):
        first = seen.setdefault(key, index)
        if first != index:
            raise ConfigError(
                f"{source}: {array}[{index}]: {what} {key!r} is already given by {array}[{first}]"
            )


def _relative(value: str, base_dir: Path | None) -> Path:
    path = Path(value).expanduser()
    return path if base_dir is None or path.is_absolute() else base_dir / path


def _directory(table: Mapping[str, Any], key: str, where: str, base_dir: Path | None) -> Path:
    value = table[key]
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key}: {value!r} must be a path (a non-empty string)")
    path = _relative(value, base_dir)
    if not path.is_dir():
        raise ConfigError(f"{where}.{key}: {value!r} is not a directory ({path})")
    return path


def _image(entry: object, where: str, base_dir: Path | None) -> ImageEntry:
    table = _table(entry, where, _IMAGE_KEYS)
    image = table.get("image")
    if not isinstance(image, str) or not _IMAGE_REF.fullmatch(image):
        raise ConfigError(f"{where}.image: required, an image reference, not {image!r}")
    command = table.get("command")
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(part, str) for part in command)
        or not command[0]
    ):
        raise ConfigError(f"{where}.command: must be a non-empty array of strings")
    cwd = _directory(table, "cwd", where, base_dir) if "cwd" in table else None
    port = table.get("port")
    if port is not None and (
        isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536
    ):
        raise ConfigError(f"{where}.port: {port!r} must be a port number (1-65535)")
    env = _environment(table.get("env", {}), where)
    sidecar_env = _environment(table.get("sidecar_env", {}), where, "sidecar_env")
    sidecar_args = table.get("sidecar_args", [])
    if not isinstance(sidecar_args, list) or not all(isinstance(a, str) for a in sidecar_args):
        raise ConfigError(f"{where}.sidecar_args: must be an array of strings")
    return ImageEntry(image, tuple(command), cwd, env, port, sidecar_env, tuple(sidecar_args))


def _environment(value: object, where: str, key: str = "env") -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}.{key}: must be a table of NAME = value")
    env: dict[str, str] = {}
    for name, item in value.items():
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"{where}.{key}: {name!r} is not a variable name")
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise ConfigError(f"{where}.{key}.{name}: {item!r} must be a string or a number")
        env[name] = str(item)
    return env


def _model(entry: object, where: str, base_dir: Path | None) -> ModelEntry:
    table = _table(entry, where, _MODEL_KEYS)
    name = table.get("name")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{where}.name: required, a model name (no '/'), not {name!r}")
    version = table.get("version")
    if isinstance(version, bool) or not isinstance(version, str | int) or str(version) == "":
        raise ConfigError(f"{where}.version: required, a string or an integer, not {version!r}")
    if "path" not in table:
        raise ConfigError(f"{where}.path: required, the model's directory")
    return ModelEntry(name, str(version), _directory(table, "path", where, base_dir))
