"""`nvcf-sidecar platform` flags of the control plane (`--images`, `--instances-dir`, ...) and a
platform without `--config`: an empty registry, every function through the API."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from harness.processes import StartProcess
from nvcf_platform.devstack.nats_server import EmbeddedNatsServer
from nvcf_platform.errors import ConfigError
from nvcf_platform.main import add_arguments, load_registry, settings_from_args

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "examples" / "images.toml"
COMMAND = [sys.executable, "-m", "nvcf_sidecar.cli", "platform"]


def parse(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(flags)


def test_control_plane_flags_become_settings_and_beat_their_variables() -> None:
    args = parse(
        "--images", "catalog.toml", "--instances-dir", "instances",
        "--reconcile-interval", "0.25", "--undeploy-drain-timeout", "3", "--deploy-timeout", "30",
    )  # fmt: skip
    settings = settings_from_args(args, {"NVCF_PLATFORM_IMAGES": "other.toml"})
    assert settings.images_path == Path("catalog.toml")
    assert settings.instances_dir == Path("instances")
    assert settings.reconcile_interval == 0.25
    assert settings.undeploy_drain_timeout == 3.0
    assert settings.deploy_timeout == 30.0
    assert settings.config_path is None

    environ = {
        "NVCF_PLATFORM_IMAGES": "env.toml",
        "NVCF_PLATFORM_INSTANCES_DIR": "env-instances",
        "NVCF_PLATFORM_DEPLOY_TIMEOUT": "12",
    }
    from_env = settings_from_args(parse(), environ)
    assert from_env.images_path == Path("env.toml")
    assert from_env.instances_dir == Path("env-instances")
    assert from_env.deploy_timeout == 12.0
    assert from_env.reconcile_interval == 1.0


def test_attach_listener_flags_become_settings_and_beat_their_variables() -> None:
    assert settings_from_args(parse(), {}).attach_port is None  # off: attach on the HTTP port
    environ = {"NVCF_PLATFORM_ATTACH_PORT": "7000"}
    assert settings_from_args(parse(), environ).attach_port == 7000
    args = parse("--attach-port", "0", "--public-url", "http://is:8080")
    args.public_attach_url = "http://is:8081"
    settings = settings_from_args(args, environ)
    assert (settings.attach_port, settings.public_attach_url) == (0, "http://is:8081")
    flags = ("--attach-port", "1", "--public-attach-url", "http://is:1")
    assert settings_from_args(parse(*flags), {}).public_attach_url == "http://is:1"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--reconcile-interval", "0"), "reconcile_interval: 0.0 must be > 0"),
        (("--undeploy-drain-timeout", "-1"), "undeploy_drain_timeout: -1.0 must be > 0"),
        (("--deploy-timeout", "0"), "deploy_timeout: 0.0 must be > 0"),
    ],
)
def test_bad_control_plane_flags_are_config_errors(flags: tuple[str, ...], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from_args(parse(*flags), {})


def test_no_registry_file_is_an_empty_registry_and_the_catalog_is_checked(tmp_path: Path) -> None:
    registry = load_registry(settings_from_args(parse("--images", str(IMAGES)), {}))
    assert registry.functions == ()
    bad = tmp_path / "images.toml"
    bad.write_text("[[images]]\nimage = 'x:1'\n")
    with pytest.raises(ConfigError, match=r"images\[0\]\.command"):
        load_registry(settings_from_args(parse("--images", str(bad)), {}))


def test_a_bad_catalog_exits_2_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "images.toml"
    bad.write_text("[[images]]\nimage = 'x:1'\ncommand = []\n")
    result = subprocess.run(
        [*COMMAND, "--images", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"{bad}: images[0].command: must be a non-empty array" in result.stderr


def test_an_unknown_event_loop_exits_2_naming_it() -> None:
    result = subprocess.run(
        COMMAND,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "NVCF_EVENT_LOOP": "trio"},
    )
    assert result.returncode == 2
    assert "NVCF_EVENT_LOOP='trio': expected one of auto, uvloop, asyncio" in result.stderr


@pytest.mark.nats
def test_platform_without_config_serves_an_empty_registry_until_sigterm(
    start_process: StartProcess, nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    ready = tmp_path / "platform.json"
    process = start_process(
        [
            *COMMAND, "--images", str(IMAGES), "--instances-dir", str(tmp_path / "instances"),
            "--reconcile-interval", "0.2", "--nats", nats_server.url, "--port", "0",
            "--grpc-port", "0", "--ready-file", str(ready),
        ],
        name="platform",
    )  # fmt: skip
    process.wait_for(ready.exists, timeout=30, what="the ready file")
    base_url = json.loads(ready.read_text())["base_url"]
    request = urllib.request.Request(
        f"{base_url}/v2/nvcf/functions", headers={"Authorization": "Bearer any"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert json.loads(response.read()) == {"functions": []}
    assert process.stop() == 0


def test_a_bad_kubernetes_settings_file_exits_2_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "kubernetes.json"
    bad.write_text(json.dumps({"utilsImage": "x/sidecar:1", "grpcUrl": "http://p:9090"}))
    result = subprocess.run(
        [*COMMAND, "--kubernetes", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"{bad}: natsUrl is required" in result.stderr


@pytest.mark.nats
def test_a_platform_that_cannot_reach_kubernetes_stops_at_once_saying_why(
    nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    settings = tmp_path / "kubernetes.json"
    settings.write_text(
        json.dumps(
            {
                "utilsImage": "x/sidecar:1",
                "grpcUrl": "http://p:9090",
                "natsUrl": "nats://n:4222",
                "kubeconfig": str(tmp_path / "missing-kubeconfig"),
            }
        )
    )
    result = subprocess.run(
        [
            *COMMAND, "--kubernetes", str(settings), "--nats", nats_server.url,
            "--port", "0", "--grpc-port", "0",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "no Kubernetes configuration" in result.stderr + result.stdout
