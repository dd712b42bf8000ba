"""`nvcf-sidecar function ...` against a fake NVCF API on loopback: calls, output, exit status.

The fake (conftest.py) answers the reference's shapes; a few tests run the installed script as
a subprocess, the rest call `nvcf_sidecar.cli.main` in a thread and read capsys.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from nvcf_platform.cli import CliState

CallCli = Callable[..., Awaitable[int]]
FID = "6f1f7f0e-3b0a-4d0b-9a57-3c1c2b9e0a11"


def fields(text: str) -> dict[str, str]:
    """`label  value` lines as a mapping (labels may hold single spaces)."""
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in text.splitlines())


async def test_create_prints_and_remembers_the_new_ids_for_the_next_command(
    fake_api: Any, run_cli: Any, cli_env: dict[str, str]
) -> None:
    created = await run_cli(
        "function", "create", "--base-url", fake_api.url, "--name", "echo",
        "--image", "echo:1", "--inference-url", "/echo",
    )  # fmt: skip
    assert created.status == 0, created.stderr
    (function,) = fake_api.versions.values()
    shown = fields(created.stdout)
    assert shown["function id"] == function["id"]
    assert shown["version id"] == function["versionId"]
    assert shown["status"] == "INACTIVE"
    state = CliState.load(Path(cli_env["NVCF_CLI_STATE"]))
    assert state == CliState(function["id"], function["versionId"])

    got = await run_cli("function", "--base-url", fake_api.url, "get", "--json")
    assert got.status == 0, got.stderr
    assert json.loads(got.stdout) == {"function": function}


async def test_create_with_function_id_adds_a_version(fake_api: Any, call_cli: CallCli) -> None:
    existing = fake_api.add_version()
    status = await call_cli(
        "function", "create", "--base-url", fake_api.url, "--function-id", existing["id"],
        "--name", "echo", "--models", "m:1:ngc://m:1", "--inference-url", "/echo",
    )  # fmt: skip
    assert status == 0
    ((_, path, body),) = fake_api.calls_of("POST")
    assert path == f"/v2/nvcf/functions/{existing['id']}/versions"
    assert body == {
        "name": "echo",
        "inferenceUrl": "/echo",
        "models": [{"name": "m", "version": "1", "uri": "ngc://m:1"}],
    }


async def test_a_refusal_prints_the_problem_detail_and_exits_1(fake_api: Any, run_cli: Any) -> None:
    refused = await run_cli(
        "function", "create", "--base-url", fake_api.url, "--name", "bad name",
        "--image", "x", "--inference-url", "/x",
    )  # fmt: skip
    assert refused.status == 1
    assert refused.stderr == (
        "error: 400 Bad Request: Invalid request: 'name' does not match the pattern\n"
    )
    assert refused.stdout == ""


async def test_an_unreachable_platform_is_named_and_exits_1(run_cli: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = await run_cli("function", "list", "--base-url", url)
    assert result.status == 1
    assert f"cannot reach the NVCF API at {url} (connection refused)" in result.stderr


async def test_missing_ids_with_nothing_remembered_exit_2(
    fake_api: Any, call_cli: CallCli, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await call_cli("function", "deploy", "get", "--base-url", fake_api.url) == 2
    assert "give --function-id and --version-id (none is remembered" in capsys.readouterr().err
    assert fake_api.calls == []


async def test_list_prints_a_table_or_the_raw_answer(
    fake_api: Any, call_cli: CallCli, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = fake_api.add_version("alpha"), fake_api.add_version("beta-function")
    assert await call_cli("function", "list", "--base-url", fake_api.url) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["FUNCTION", "ID", "VERSION", "ID", "NAME", "STATUS"]
    assert lines[1].split() == [first["id"], first["versionId"], "alpha", "INACTIVE"]
    assert lines[2].split() == [second["id"], second["versionId"], "beta-function", "INACTIVE"]
    assert lines[1].index("alpha") == lines[2].index("beta-function")  # aligned columns

    assert await call_cli("function", "list-versions", first["id"], "--base-url", fake_api.url) == 0
    assert first["versionId"] in capsys.readouterr().out
    assert await call_cli("function", "list", "--json", "--base-url", fake_api.url) == 0
    assert json.loads(capsys.readouterr().out) == {"functions": [first, second]}


async def test_deploy_create_fills_the_platforms_default_gpu_and_polls_to_active(
    fake_api: Any, run_cli: Any
) -> None:
    function = fake_api.add_version()
    fake_api.status_script = ["DEPLOYING", "DEPLOYING", "DEPLOYING", "ACTIVE"]
    deployed = await run_cli(
        "function", "deploy", "create", "--base-url", fake_api.url,
        "--function-id", function["id"], "--version-id", function["versionId"],
        "--max-instances", "2", "--poll-interval", "0.05",
    )  # fmt: skip
    assert deployed.status == 0, deployed.stderr
    assert deployed.stdout.splitlines() == ["DEPLOYING", "ACTIVE"]  # each status once
    assert "on L40S LOCAL.GPU.L40S_1x" in deployed.stderr
    ((_, path, body),) = fake_api.calls_of("POST")
    assert (
        path == f"/v2/nvcf/deployments/functions/{function['id']}/versions/{function['versionId']}"
    )
    assert body == {
        "deploymentSpecifications": [
            {
                "minInstances": 1,
                "maxInstances": 2,
                "gpu": "L40S",
                "instanceType": "LOCAL.GPU.L40S_1x",
            }
        ]
    }
    assert len(fake_api.calls_of("GET", "/v2/nvcf/clusterGroups")) == 1
    assert len(fake_api.calls_of("GET", "/v2/nvcf/functions/")) == 4


async def test_deploy_create_with_gpu_flags_asks_no_cluster_groups_and_no_wait_polls_nothing(
    fake_api: Any, call_cli: CallCli, capsys: pytest.CaptureFixture[str]
) -> None:
    function = fake_api.add_version()
    status = await call_cli(
        "function", "deploy", "create", "--base-url", fake_api.url, "--gpu", "CPU",
        "--instance-type", "LOCAL.CPU", "--function-id", function["id"],
        "--version-id", function["versionId"], "--no-wait",
    )  # fmt: skip
    assert status == 0
    assert capsys.readouterr().out == "DEPLOYING\n"
    assert [method for method, _, _ in fake_api.calls] == ["POST"]


async def test_deploy_create_that_ends_in_error_prints_health_info_and_exits_1(
    fake_api: Any, call_cli: CallCli, capsys: pytest.CaptureFixture[str]
) -> None:
    function = fake_api.add_version()
    fake_api.status_script = ["ERROR"]
    fake_api.health_info = [
        {"gpu": "L40S", "instanceType": "LOCAL.GPU.L40S_1x", "error": "image pull failed"}
    ]
    status = await call_cli(
        "function", "deploy", "create", "--base-url", fake_api.url, "--function-id",
        function["id"], "--version-id", function["versionId"], "--poll-interval", "0.05",
    )  # fmt: skip
    assert status == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == ["DEPLOYING", "ERROR"]
    assert "L40S LOCAL.GPU.L40S_1x: image pull failed" in err
    assert f"error: version {function['versionId']} of function {function['id']} is ERROR" in err


async def test_deploy_create_gives_up_at_the_timeout(
    fake_api: Any, call_cli: CallCli, capsys: pytest.CaptureFixture[str]
) -> None:
    function = fake_api.add_version()
    fake_api.status_script = ["DEPLOYING"]
    status = await call_cli(
        "function", "deploy", "create", "--base-url", fake_api.url, "--function-id",
        function["id"], "--version-id", function["versionId"], "--poll-interval", "0.05",
        "--timeout", "0.3",
    )  # fmt: skip
    assert status == 1
    assert "is still DEPLOYING after 0.3 s (--timeout)" in capsys.readouterr().err


async def test_deploy_get_prints_the_specifications_and_instance_counts(
    fake_api: Any, call_cli: CallCli, capsys: pytest.CaptureFixture[str]
) -> None:
    function = fake_api.add_version()
    fake_api.add_deployment(function, [{"gpu": "L40S", "instanceType": "T1", "minInstances": 1,
                                        "maxInstances": 3}])  # fmt: skip
    fake_api.instances = {"running": 1, "starting": 2}
    args = ("--base-url", fake_api.url, "--function-id", function["id"])
    assert (
        await call_cli("function", "deploy", "get", *args, "--version-id", function["versionId"])
        == 0
    )
    out = capsys.readouterr().out
    assert fields(out.split("\n\n")[0])["status"] == "ACTIVE"
    header, row = [line for line in out.splitlines() if "T1" in line or "GPU SPEC" in line]
    assert header.split()[-1] == "INSTANCES"
    assert row.split()[1:] == ["L40S", "T1", "1", "3", "1", "running", "1,", "starting", "2"]


async def test_deploy_update_patches_the_chosen_gpu_specification(
    fake_api: Any, call_cli: CallCli, capsys: pytest.CaptureFixture[str]
) -> None:
    function = fake_api.add_version()
    fake_api.add_deployment(
        function,
        [
            {"gpu": "L40S", "instanceType": "T1", "minInstances": 1, "maxInstances": 1},
            {"gpu": "L40S", "instanceType": "T2", "minInstances": 1, "maxInstances": 1},
        ],
    )
    deployment = fake_api.deployments[function["versionId"]]
    ids = ("--function-id", function["id"], "--version-id", function["versionId"])
    base = ("function", "deploy", "update", "--base-url", fake_api.url, *ids)
    assert await call_cli(*base, "--max-instances", "4") == 2  # two specs: which one?
    assert "choose one with --gpu and --instance-type" in capsys.readouterr().err

    assert await call_cli(*base, "--instance-type", "t2", "--max-instances", "4") == 0
    spec_id = deployment["deploymentSpecifications"][1]["gpuSpecificationId"]
    ((_, path, body),) = fake_api.calls_of("PATCH")
    assert path == f"/v2/nvcf/deployments/{deployment['deploymentId']}/gpu-specifications/{spec_id}"
    assert body == {"maxInstances": 4}
    assert spec_id in capsys.readouterr().out


async def test_deploy_remove_and_delete_deployment_only_undeploy(
    fake_api: Any, call_cli: CallCli, capsys: pytest.CaptureFixture[str]
) -> None:
    function = fake_api.add_version()
    ids = ("--base-url", fake_api.url, "--function-id", function["id"], "--version-id",
           function["versionId"])  # fmt: skip
    fake_api.add_deployment(function, [{"gpu": "L40S", "instanceType": "T1"}])
    assert await call_cli("function", "deploy", "remove", *ids, "--graceful") == 0
    assert capsys.readouterr().out == "INACTIVE\n"
    fake_api.add_deployment(function, [{"gpu": "L40S", "instanceType": "T1"}])
    assert await call_cli("function", "delete", *ids, "--deployment-only") == 0
    assert capsys.readouterr().out == "INACTIVE\n"
    deletes = [path for _, path, _ in fake_api.calls_of("DELETE")]
    assert [path.rsplit("?", 1)[1] for path in deletes] == ["graceful=true", "graceful=false"]
    assert function["versionId"] in fake_api.versions  # the version itself stays


async def test_delete_removes_the_version_and_forgets_it(
    fake_api: Any, call_cli: CallCli, cli_env: dict[str, str]
) -> None:
    function = fake_api.add_version()
    state = Path(cli_env["NVCF_CLI_STATE"])
    CliState(function["id"], function["versionId"]).save(state)
    assert await call_cli("function", "delete", "--base-url", fake_api.url) == 0
    assert fake_api.versions == {}
    assert CliState.load(state) == CliState(function["id"], None)
    # Deleting again: the API's 404, and the state no longer names a version.
    assert await call_cli("function", "delete", "--base-url", fake_api.url) == 2


async def test_update_puts_the_tags(fake_api: Any, call_cli: CallCli) -> None:
    function = fake_api.add_version()
    ids = ("--function-id", function["id"], "--version-id", function["versionId"])
    assert (
        await call_cli("function", "update", "--base-url", fake_api.url, *ids, "--tags", "a,b") == 0
    )
    assert fake_api.calls_of("PUT")[0][2] == {"tags": ["a", "b"]}


async def test_a_wrong_token_is_a_401_with_its_detail(
    fake_api: Any, call_cli: CallCli, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await call_cli("function", "list", "--base-url", fake_api.url, "--token", "x") == 1
    assert capsys.readouterr().err == "error: 401 Unauthorized: bad token\n"


async def test_list_versions_of_an_unknown_function_is_a_404(
    fake_api: Any, call_cli: CallCli, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await call_cli("function", "list-versions", FID, "--base-url", fake_api.url) == 1
    assert f"error: 404 Not Found: Function id '{FID}': Not found" in capsys.readouterr().err
