"""`ImageCatalog`: the local stand-in for a registry — parsing, every error naming file and key,
look-ups by image reference and by model name and version, merging."""

from __future__ import annotations

from pathlib import Path

import pytest

from nvcf_platform.backends import ImageCatalog, ImageNotFound, ModelNotFound
from nvcf_platform.backends.images import normalize_image_ref
from nvcf_platform.errors import ConfigError

GOOD = """
[[images]]
image = "nvcr.io/acme/echo:1.0"
command = ["python", "server.py", "--port", "{port}"]
cwd = "hello"
env = { MODEL = "small", THREADS = 2 }

[[images]]
image = "localhost:5000/acme/plain"
command = ["sleep", "1"]
port = 8000
sidecar_env = { NVCF_LOG_LEVEL = "debug" }
sidecar_args = ["--health-check-interval", "1s"]

[[models]]
name = "echo"
version = "1"
path = "models/echo"
"""


def write_catalog(tmp_path: Path, text: str) -> Path:
    (tmp_path / "hello").mkdir(exist_ok=True)
    (tmp_path / "models" / "echo").mkdir(parents=True, exist_ok=True)
    path = tmp_path / "images.toml"
    path.write_text(text)
    return path


def test_a_catalog_file_reads_images_and_models_relative_to_its_directory(tmp_path: Path) -> None:
    catalog = ImageCatalog.from_toml(write_catalog(tmp_path, GOOD))

    echo = catalog.image("nvcr.io/acme/echo:1.0")
    assert echo.command == ("python", "server.py", "--port", "{port}")
    assert echo.cwd == tmp_path / "hello"
    assert echo.env == {"MODEL": "small", "THREADS": "2"}
    assert catalog.model("echo", "1").path == tmp_path / "models" / "echo"
    assert catalog.image("localhost:5000/acme/plain").cwd is None
    assert echo.port is None  # each instance gets a free port, the command's {port}
    plain = catalog.image("localhost:5000/acme/plain")
    assert plain.port == 8000  # always listens there
    assert plain.sidecar_env == {"NVCF_LOG_LEVEL": "debug"}
    assert plain.sidecar_args == ("--health-check-interval", "1s")
    assert (echo.sidecar_env, echo.sidecar_args) == ({}, ())


def test_a_reference_without_tag_is_latest_on_both_sides(tmp_path: Path) -> None:
    catalog = ImageCatalog.from_toml(write_catalog(tmp_path, GOOD))

    assert catalog.image("localhost:5000/acme/plain:latest").command == ("sleep", "1")
    assert normalize_image_ref("localhost:5000/acme/plain") == "localhost:5000/acme/plain:latest"
    assert normalize_image_ref("a/b@sha256:00") == "a/b@sha256:00"
    with pytest.raises(ImageNotFound, match=r"'nvcr.io/acme/echo' is not in the local image"):
        catalog.image("nvcr.io/acme/echo")  # echo:latest is not echo:1.0


def test_unknown_images_and_models_are_named(tmp_path: Path) -> None:
    catalog = ImageCatalog.from_toml(write_catalog(tmp_path, GOOD))

    with pytest.raises(ImageNotFound, match=r"nvcr\.io/acme/other:1"):
        catalog.image("nvcr.io/acme/other:1")
    with pytest.raises(ModelNotFound, match="model 'echo' version '2'"):
        catalog.model("echo", "2")


def test_a_merged_catalog_prefers_the_second(tmp_path: Path) -> None:
    first = ImageCatalog.from_toml(write_catalog(tmp_path, GOOD))
    second = ImageCatalog.from_mapping(
        {"images": [{"image": "nvcr.io/acme/echo:1.0", "command": ["other"]}]},
        source="second.toml",
    )

    merged = first.merged(second)

    assert merged.image("nvcr.io/acme/echo:1.0").command == ("other",)
    assert merged.model("echo", "1").name == "echo"
    assert len(merged.images) == 2


def test_a_dev_config_may_hold_the_tables_beside_its_functions() -> None:
    data = {"functions": [], "images": [{"image": "a:1", "command": ["x"]}]}

    catalog = ImageCatalog.from_mapping(data, source="dev.toml", other_keys={"functions"})

    assert catalog.image("a:1").command == ("x",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("images = 3", "images.toml: images: must be an array of tables"),
        ("[nope]", "images.toml: unknown top-level keys ['nope']"),
        ("[[images]]\nimage = 'a:1'", "images.toml: images[0].command: must be a non-empty array"),
        (
            "[[images]]\nimage = 'a:1'\ncommand = []",
            "images.toml: images[0].command: must be a non-empty array of strings",
        ),
        (
            "[[images]]\nimage = 'a:1'\ncommand = ['x', 1]",
            "images.toml: images[0].command: must be a non-empty array of strings",
        ),
        ("[[images]]\ncommand = ['x']", "images.toml: images[0].image: required"),
        (
            "[[images]]\nimage = 'a:1'\ncommand = ['x']\ncolour = 1",
            "images.toml: images[0]: unknown keys ['colour']",
        ),
        (
            "[[images]]\nimage = 'a:1'\ncommand = ['x']\ncwd = 'missing'",
            "images.toml: images[0].cwd: 'missing' is not a directory",
        ),
        (
            "[[images]]\nimage = 'a:1'\ncommand = ['x']\nenv = { 'A-B' = '1' }",
            "images.toml: images[0].env: 'A-B' is not a variable name",
        ),
        (
            "[[images]]\nimage = 'a:1'\ncommand = ['x']\nenv = { A = true }",
            "images.toml: images[0].env.A: True must be a string or a number",
        ),
        *(
            (
                f"[[images]]\nimage = 'a:1'\ncommand = ['x']\nport = {port}",
                f"images.toml: images[0].port: {shown} must be a port number (1-65535)",
            )
            for port, shown in (("0", "0"), ("65536", "65536"), ("true", "True"), ("'80'", "'80'"))
        ),
        (
            "[[images]]\nimage = 'a:1'\ncommand = ['x']\nsidecar_env = { B = [1] }",
            "images.toml: images[0].sidecar_env.B: [1] must be a string or a number",
        ),
        (
            "[[images]]\nimage = 'a:1'\ncommand = ['x']\nsidecar_args = '--x'",
            "images.toml: images[0].sidecar_args: must be an array of strings",
        ),
        (
            "[[images]]\nimage = 'a'\ncommand = ['x']\n[[images]]\nimage = 'a:latest'\n"
            "command = ['y']",
            "images.toml: images[1]: image 'a:latest' is already given by images[0]",
        ),
        ("[[models]]\nversion = '1'\npath = 'm'", "images.toml: models[0].name: required"),
        ("[[models]]\nname = 'm'\npath = 'm'", "images.toml: models[0].version: required"),
        ("[[models]]\nname = 'm'\nversion = '1'", "images.toml: models[0].path: required"),
        (
            "[[models]]\nname = 'm'\nversion = 1\npath = 'nowhere'",
            "images.toml: models[0].path: 'nowhere' is not a directory",
        ),
        (
            "[[models]]\nname = 'm'\nversion = '1'\npath = 'm'\nuri = 'x'",
            "images.toml: models[0]: unknown keys ['uri']",
        ),
        (
            "[[models]]\nname = 'm'\nversion = '1'\npath = 'm'\n"
            "[[models]]\nname = 'm'\nversion = 1\npath = 'm'",
            "images.toml: models[1]: name and version 'm:1' is already given by models[0]",
        ),
    ],
)
def test_every_error_names_the_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "m").mkdir()
    path = tmp_path / "images.toml"
    path.write_text(text)

    with pytest.raises(ConfigError) as raised:
        ImageCatalog.from_toml(path)

    assert str(raised.value).startswith(f"{path}: ") or str(raised.value).startswith("cannot read")
    assert message.removeprefix("images.toml: ") in str(raised.value)


def test_an_unreadable_or_invalid_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read image catalog"):
        ImageCatalog.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[images]\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        ImageCatalog.from_toml(bad)
