"""The function registry file and the platform settings: parsing, validation, precedence."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import StorageType

from nvcf_platform.control.registry import Registry
from nvcf_platform.errors import ConfigError, FunctionNotFound, FunctionVersionNotFound
from nvcf_platform.invocation.invocation import CallerIdentity
from nvcf_platform.settings import ENV_VARIABLES, PlatformSettings

FID = "6f1f7f0e-3b0a-4d0b-9a57-3c1c2b9e0a11"
FVID = "0b5e4c0f-8a3d-4b8e-9f6a-1d2c3b4a5e61"
FVID2 = "0b5e4c0f-8a3d-4b8e-9f6a-1d2c3b4a5e62"


def registry_of(text: str) -> Registry:
    return Registry.from_mapping(tomllib.loads(text), source="f.toml")


def one_function(function: str = "", version: str = "") -> str:
    return (
        f'[[functions]]\nid = "{FID}"\nname = "echo"\n{function}\n'
        f'[[functions.versions]]\nid = "{FVID}"\n{version}\n'
    )


# --- registry ------------------------------------------------------------------------------------


def test_registry_file_with_path_override_and_min_instances(tmp_path: Path, ids: Any) -> None:
    path = tmp_path / "functions.toml"
    path.write_text(ids.registry_toml)
    registry = Registry.from_toml(path)
    assert [f.name for f in registry.functions] == ["echo", "two-versions"]
    assert len(registry.versions) == 3
    echo = registry.version(ids.function_id, ids.version_id)
    assert (echo.function_name, echo.invocation_path, echo.min_instances) == ("echo", "/v2/echo", 0)
    first, second = registry.function(ids.other_function_id).versions
    assert first.invocation_path == "/first"  # the version's own path
    assert second.invocation_path == ""  # the function has none: "/" on the container


def test_version_path_overrides_the_functions() -> None:
    registry = registry_of(
        one_function('default_invocation_path = "/fn"', 'default_invocation_path = "/ver"')
    )
    assert registry.version(FID, FVID).invocation_path == "/ver"
    registry = registry_of(one_function('default_invocation_path = "/fn"', "min_instances = 2"))
    version = registry.version(FID, FVID)
    assert (version.invocation_path, version.min_instances) == ("/fn", 2)


def test_lookups_accept_any_uuid_spelling_and_name_what_is_missing() -> None:
    registry = registry_of(one_function())
    assert registry.version(FID.upper(), FVID.replace("-", "")).function_version_id == FVID
    assert registry.resolve(FID, None).function_version_id == FVID
    with pytest.raises(FunctionNotFound, match="not-a-uuid"):
        registry.resolve("not-a-uuid", None)
    with pytest.raises(FunctionVersionNotFound, match=FVID2):
        registry.resolve(FID, FVID2)


def test_resolve_without_version_picks_among_all_versions() -> None:
    registry = registry_of(one_function() + f'[[functions.versions]]\nid = "{FVID2}"\n')
    picked = {registry.resolve(FID, None).function_version_id for _ in range(200)}
    assert picked == {FVID, FVID2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[functions]]\nid = "nope"\nname = "x"\n', r"functions\[0\]\.id: 'nope' is not a UUID"),
        (f'[[functions]]\nid = "{FID}"\nname = "x"\n', r"functions\[0\]\.versions: at least one"),
        (f'[[functions]]\nid = "{FID}"\nname = ""\n', r"functions\[0\]\.name"),
        (one_function("colour = 1"), r"functions\[0\]: unknown keys \['colour'\]"),
        (one_function(version="path = '/x'"), r"versions\[0\]: unknown keys \['path'\]"),
        (one_function(version='default_invocation_path = "x"'), "must be empty or start with '/'"),
        (one_function(version='default_invocation_path = "/a b"'), "no spaces"),
        (one_function(version="min_instances = -1"), r"min_instances: -1"),
        (one_function() + one_function(), f"function id {FID} is configured twice"),
        ("functions = 3\n", "must be an array of tables"),
        ("other = 1\n", r"unknown top-level keys \['other'\]"),
    ],
)
def test_invalid_registry_entries_raise_config_error_naming_the_key(
    text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        registry_of(text)


def test_version_ids_are_unique_across_functions() -> None:
    other = one_function().replace(FID, "9c2d9d6a-0e64-4b43-a4f0-5a0b7d9e8c21")
    with pytest.raises(ConfigError, match=f"function version id {FVID} is configured twice"):
        registry_of(one_function() + other)


def test_unreadable_or_invalid_toml_files_raise_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read function registry"):
        Registry.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[functions]\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Registry.from_toml(bad)


# --- settings ------------------------------------------------------------------------------------


def test_settings_defaults() -> None:
    settings = PlatformSettings.from_env({})
    assert settings.nats_url == "nats://127.0.0.1:4222"
    assert (settings.host, settings.port, settings.grpc_port) == ("127.0.0.1", 8080, 9090)
    assert settings.region == "local"
    assert settings.api_keys == ()
    assert settings.stream_max_messages == 100_000
    assert settings.consumer_ack_wait == 30.0
    assert settings.storage_type == StorageType.MEMORY


def test_flags_beat_environment_variables_which_beat_defaults() -> None:
    environ = {
        "NVCF_PLATFORM_PORT": "0",
        "NVCF_PLATFORM_REGION": "env-region",
        "NVCF_PLATFORM_API_KEYS": "a, b,,",
        "NVCF_PLATFORM_CONSUMER_ACK_WAIT": "1.5",
        "NVCF_PLATFORM_STREAM_STORAGE": "FILE",
        "NVCF_PLATFORM_CONFIG": "functions.toml",
        "NVCF_PLATFORM_GRPC_PORT": "",
    }
    settings = PlatformSettings.from_env(environ, region="flag-region", port=None)
    assert settings.port == 0
    assert settings.grpc_port == 9090
    assert settings.region == "flag-region"
    assert settings.api_keys == ("a", "b")
    assert settings.consumer_ack_wait == 1.5
    assert settings.storage_type == StorageType.FILE
    assert settings.config_path == Path("functions.toml")


def test_several_nats_urls_and_replicas_come_from_flags_or_variables() -> None:
    environ = {
        "NVCF_PLATFORM_NATS_URL": "nats://a:4222, nats://b:4222,nats://c:4222",
        "NVCF_PLATFORM_REPLICAS": "3",
    }
    settings = PlatformSettings.from_env(environ)
    assert settings.nats_servers == ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
    assert settings.replicas == 3
    assert PlatformSettings.from_env({}).replicas == 1
    assert PlatformSettings.from_env({}).nats_servers == ["nats://127.0.0.1:4222"]
    assert PlatformSettings.from_env(environ, replicas=1).replicas == 1


def test_every_setting_has_an_environment_variable() -> None:
    fields = set(PlatformSettings.__dataclass_fields__)
    assert set(ENV_VARIABLES) == fields
    assert all(name.startswith("NVCF_PLATFORM_") for name, _ in ENV_VARIABLES.values())


@pytest.mark.parametrize(
    ("environ", "overrides", "message"),
    [
        ({"NVCF_PLATFORM_PORT": "http"}, {}, "NVCF_PLATFORM_PORT='http': not an integer"),
        ({}, {"port": 70000}, "port: 70000 is not a TCP port"),
        ({}, {"region": "a.b"}, "region: invalid region"),
        ({}, {"nats_url": "http://x"}, "is not a nats:// URL"),
        ({}, {"nats_url": "nats://a:1,,nats://b:1"}, "'' is not a nats:// URL"),
        ({}, {"nats_url": "nats://a:1,http://b:1"}, "'http://b:1' is not a nats:// URL"),
        ({}, {"nats_url": "nats://a:1,ws://b:1"}, "mixes websocket and nats:// URLs"),
        ({"NVCF_PLATFORM_REPLICAS": "three"}, {}, "NVCF_PLATFORM_REPLICAS='three'"),
        ({}, {"replicas": 0}, "replicas: 0 must be between 1 and 5"),
        ({}, {"replicas": 6}, "replicas: 6 must be between 1 and 5"),
        ({}, {"api_keys": ("",)}, "api_keys"),
        ({}, {"public_url": "http://h:1/path"}, "must not have a path"),
        ({}, {"attach_port": 65536}, "attach_port: 65536 is not a TCP port"),
        ({}, {"attach_port": 1, "public_attach_url": "ftp://h"}, "public_attach_url: 'ftp://h'"),
        ({}, {"public_attach_url": "http://h:2"}, "set attach_port too"),
        ({}, {"attach_port": 2, "public_url": "http://h:1"}, "set public_attach_url too"),
        ({}, {"stream_max_messages": 0}, "stream_max_messages: 0"),
        ({}, {"instance_restarts": -1}, "instance_restarts: -1 must be >= 0"),
        ({}, {"consumer_ack_wait": 0.0}, "consumer_ack_wait"),
        ({"NVCF_PLATFORM_STREAM_STORAGE": "disk"}, {}, "stream_storage: 'disk'"),
        ({}, {"drain_grace": 0.0}, "drain_grace: 0.0 must be > 0"),
        ({"NVCF_PLATFORM_HTTP_FD": "three"}, {}, "NVCF_PLATFORM_HTTP_FD='three': not an integer"),
        ({}, {"http_fd": -1}, "http_fd: -1 is not a file descriptor"),
    ],
)
def test_invalid_settings_raise_config_error_naming_the_input(
    environ: dict[str, str], overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        PlatformSettings.from_env(environ, **overrides)


def test_unknown_override_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="no setting 'colour'"):
        PlatformSettings.from_env({}, colour="blue")


def test_caller_identity_accepts_configured_keys_or_any_bearer_when_none() -> None:
    keys = CallerIdentity(("k1", "k2"), "nca", "subject")
    assert keys.accepts("k2")
    assert not keys.accepts("k3")
    assert not keys.accepts(None)
    anyone = CallerIdentity((), "nca", "subject")
    assert anyone.accepts("whatever")
    assert not anyone.accepts(None)
