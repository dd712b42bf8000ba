"""The `dev --config` file: versions inherit their function's keys, ids and defaults, and every
mistake is a `ConfigError` naming the file and the key."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from nvcf_platform.backends.images import ImageCatalog
from nvcf_platform.control.registry import Registry
from nvcf_platform.devstack.dev_config import (
    catalog_toml,
    load_dev_config,
    load_dev_file,
    specs_from_mapping,
)
from nvcf_platform.devstack.stack_spec import registry_toml
from nvcf_platform.errors import ConfigError

FUNCTION_ID = "6F1F7F0E-3B0A-4D0B-9A57-3C1C2B9E0A11"
VERSION_ID = "0b5e4c0f-8a3d-4b8e-9f6a-1d2c3b4a5e61"

CONFIG = f"""
[[functions]]
name = "hello"
command = "python server.py --port 8001 --greeting 'hi there'"
inference_port = 8001

[[functions]]
name = "echo"
id = "{FUNCTION_ID}"
default_invocation_path = "/echo"
health_endpoint = "/health"
max_request_concurrency = 4
env = {{ SHARED = "function", LEVEL = "function" }}
sidecar_env = {{ NVCF_LOG_LEVEL = "DEBUG" }}

[[functions.versions]]
id = "{VERSION_ID}"
command = ["python", "echo.py", "8002"]
inference_port = 8002
env = {{ LEVEL = "version", WORKERS = 2 }}

[[functions.versions]]
command = ["python", "echo.py", "8003"]
inference_port = 8003
default_invocation_path = "/v2/echo"
sidecars = 2
min_instances = 2
sidecar_args = ["--health-check-interval", "1s"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "functions.toml"
    path.write_text(text)
    return path


def test_versions_take_their_functions_keys_unless_they_set_their_own(tmp_path: Path) -> None:
    hello, first, second = load_dev_config(write(tmp_path, CONFIG))

    assert hello.name == "hello"
    assert hello.command == ["python", "server.py", "--port", "8001", "--greeting", "hi there"]
    assert hello.inference_port == 8001
    assert (hello.default_invocation_path, hello.health_endpoint) == ("/", "/v2/health/ready")
    assert (hello.sidecars, hello.min_instances, hello.max_request_concurrency) == (1, 1, 1)
    assert hello.function_id != first.function_id
    uuid.UUID(hello.function_id)
    uuid.UUID(hello.version_id)
    assert hello.cwd == tmp_path.resolve()  # servers run next to the file

    assert first.function_id == second.function_id == FUNCTION_ID.lower()
    assert first.version_id == VERSION_ID
    assert second.version_id not in (VERSION_ID, hello.version_id)
    assert first.command == ["python", "echo.py", "8002"]
    assert first.default_invocation_path == "/echo"
    assert second.default_invocation_path == "/v2/echo"
    assert first.health_endpoint == second.health_endpoint == "/health"
    assert first.max_request_concurrency == second.max_request_concurrency == 4
    # env tables merge, the version's values winning; numbers become strings.
    assert first.container_env == {"SHARED": "function", "LEVEL": "version", "WORKERS": "2"}
    assert second.container_env == {"SHARED": "function", "LEVEL": "function"}
    assert first.sidecar_env == second.sidecar_env == {"NVCF_LOG_LEVEL": "DEBUG"}
    assert (second.sidecars, second.min_instances) == (2, 2)
    assert second.sidecar_args == ("--health-check-interval", "1s")
    assert first.sidecar_args == ()


def test_the_stacks_registry_file_of_the_specs_is_one_the_platform_reads(tmp_path: Path) -> None:
    specs = load_dev_config(write(tmp_path, CONFIG))
    urls = {specs[2].version_id: ["http://127.0.0.1:1/v1/health/ready"] * 2}
    registry_file = tmp_path / "registry.toml"
    registry_file.write_text(registry_toml(specs, urls))
    registry = Registry.from_toml(registry_file)
    assert [f.name for f in registry.functions] == ["hello", "echo"]
    versions = {v.function_version_id: v for v in registry.versions}
    second = versions[specs[2].version_id]
    assert second.function_id == FUNCTION_ID.lower()
    assert second.invocation_path == "/v2/echo"
    assert second.min_instances == 2
    assert second.instance_health_urls == ("http://127.0.0.1:1/v1/health/ready",) * 2
    assert versions[specs[0].version_id].instance_health_urls == ()


def test_a_function_without_versions_is_its_own_single_version() -> None:
    [spec] = specs_from_mapping(
        {"functions": [{"name": "solo", "command": ["srv"], "inference_port": 9000}]}
    )
    assert (spec.name, spec.command, spec.inference_port, spec.cwd) == ("solo", ["srv"], 9000, None)


VALID = 'name = "f"\ncommand = "srv"\ninference_port = 9000\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "functions.toml: at least one [[functions]] table is required"),
        ("port = 1\n[[functions]]\n" + VALID, "unknown top-level keys ['port']"),
        ("functions = 3", "at least one [[functions]] table is required"),
        ("[[functions]]\n" + VALID + "image = 'x'", "functions[0]: unknown keys ['image']"),
        ("[[functions]]\ncommand = 'srv'\ninference_port = 1", "functions[0].name: required"),
        ("[[functions]]\n" + VALID.replace('"f"', '"a/b"'), "functions[0].name: function name"),
        ("[[functions]]\nname = 'f'\ninference_port = 9000", "functions[0].command: required"),
        ("[[functions]]\n" + VALID.replace('"srv"', "[]"), "functions[0].command: must name"),
        ("[[functions]]\n" + VALID.replace('"srv"', '"srv \'x"'), "not valid shell words"),
        ("[[functions]]\n" + VALID.replace('"srv"', "[1]"), "must be a string or a list of"),
        ("[[functions]]\nname = 'f'\ncommand = 'srv'", "functions[0].inference_port: required"),
        (
            "[[functions]]\n" + VALID.replace("9000", "70000"),
            "70000 must be an integer in 1..65535",
        ),
        ("[[functions]]\n" + VALID.replace("9000", "true"), "inference_port: True must be"),
        ("[[functions]]\n" + VALID + "id = 'abc'", "functions[0].id: 'abc' is not a UUID"),
        ("[[functions]]\n" + VALID + "sidecars = -1", "functions[0].sidecars: -1 must be"),
        ("[[functions]]\n" + VALID + "min_instances = -1", "min_instances: -1 must be"),
        ("[[functions]]\n" + VALID + "max_request_concurrency = 0", "concurrency: 0 must be"),
        ("[[functions]]\n" + VALID + "default_invocation_path = 'x'", "default_invocation_path"),
        ("[[functions]]\n" + VALID + "health_endpoint = 'health'", "health_endpoint: 'health'"),
        ("[[functions]]\n" + VALID + "env = 'A=1'", "functions[0].env: must be a table"),
        ("[[functions]]\n" + VALID + "env = { 1A = 'x' }", "env: '1A' is not a variable name"),
        ("[[functions]]\n" + VALID + "sidecar_env = { A = true }", "sidecar_env.A: True must"),
        ("[[functions]]\n" + VALID + "sidecar_args = '--x'", "sidecar_args: '--x' must be a list"),
        ("[[functions]]\n" + VALID + "versions = []", "functions[0].versions: must be an array"),
        (
            "[[functions]]\n" + VALID + "[[functions.versions]]\nname = 'v'",
            "functions[0].versions[0]: unknown keys ['name']",
        ),
        (
            # Both versions inherit the function's port.
            "[[functions]]\n" + VALID + "[[functions.versions]]\n[[functions.versions]]\n",
            "functions[0].versions[1].inference_port: 9000 is already used by "
            "functions[0].versions[0]",
        ),
        (
            f"[[functions]]\n{VALID}id = '{FUNCTION_ID}'\n"
            f"[[functions]]\n{VALID.replace('9000', '9001')}id = '{FUNCTION_ID}'\n",
            f"functions[1].id: {FUNCTION_ID.lower()} is already used by functions[0]",
        ),
        (
            f"[[functions]]\n{VALID}[[functions.versions]]\nid = '{VERSION_ID}'\n"
            f"[[functions]]\n{VALID}[[functions.versions]]\nid = '{VERSION_ID}'\n"
            "inference_port = 9001",
            f"functions[1].versions[0].id: {VERSION_ID} is already used by "
            "functions[0].versions[0]",
        ),
        ("[[functions]\n", "functions.toml: not valid TOML"),
    ],
)
def test_mistakes_are_config_errors_naming_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as failure:
        load_dev_config(path)
    assert message in str(failure.value)
    assert str(failure.value).startswith(str(path))


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read dev config .*absent\.toml"):
        load_dev_config(tmp_path / "absent.toml")


IMAGES = """
[[images]]
image = "nvcr.io/acme/echo:1.0"
command = ["python", "server.py", "--port", "{port}"]
cwd = "srv"
env = { MODEL = "small", SIZE = 2 }

[[images]]
image = "nvcr.io/acme/fixed:1.0"
command = ["python", "server.py"]
port = 8000
sidecar_env = { NVCF_LOG_LEVEL = "debug", "A_B" = 2 }
sidecar_args = ["--health-check-interval", "1s"]

[[models]]
name = "scale_sum"
version = 1
path = "models/scale_sum"
"""


def test_images_and_models_of_a_config_are_its_catalog_relative_to_the_file(
    tmp_path: Path,
) -> None:
    (tmp_path / "srv").mkdir()
    (tmp_path / "models" / "scale_sum").mkdir(parents=True)
    config = load_dev_file(write(tmp_path, CONFIG + IMAGES))
    assert [spec.name for spec in config.functions] == ["hello", "echo", "echo"]
    image, fixed = config.catalog.images
    assert image.cwd == tmp_path.resolve() / "srv"
    assert (image.port, fixed.port) == (None, 8000)
    assert dict(image.env) == {"MODEL": "small", "SIZE": "2"}
    (model,) = config.catalog.models
    assert (model.name, model.version, model.path) == (
        "scale_sum",
        "1",
        tmp_path.resolve() / "models" / "scale_sum",
    )
    only = load_dev_file(write(tmp_path, IMAGES))  # no function: a platform for the API
    assert only.functions == ()
    assert len(only.catalog.images) == 2
    assert load_dev_file(write(tmp_path, CONFIG)).catalog.images == ()


def test_the_catalog_written_for_the_platform_reads_back_the_same_anywhere(
    tmp_path: Path,
) -> None:
    (tmp_path / "srv").mkdir()
    (tmp_path / "models" / "scale_sum").mkdir(parents=True)
    catalog = load_dev_file(write(tmp_path, IMAGES)).catalog
    elsewhere = tmp_path / "work" / "images.toml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(catalog_toml(catalog))
    again = ImageCatalog.from_toml(elsewhere)
    assert again.images == catalog.images
    assert again.models == catalog.models
    assert catalog_toml(ImageCatalog()) == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[images]]\nimage = 'x:1'\n", "functions.toml: images[0].command: must be"),
        ("[[models]]\nname = 'm'\nversion = 1\n", "functions.toml: models[0].path: required"),
        ("[[images]]\nimage = 'x:1'\ncommand = ['a']\ncwd = 'absent'\n", "images[0].cwd"),
        ("shared = 1\n[[images]]\n", "unknown top-level keys ['shared']"),
    ],
)
def test_catalog_mistakes_in_a_config_name_file_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_dev_file(write(tmp_path, text))
