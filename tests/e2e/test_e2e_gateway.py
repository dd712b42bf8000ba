"""The gateway form through the whole stack: a function named by header or Host, any method and path.

Caller -> platform (header / Host routing before the path router) -> JetStream -> sidecar ->
`servers/gateway_container.py` and back. One stack per module: function `alpha` with two versions,
function `beta` with one.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from yarl import URL

from harness.ports import free_port
from nvcf_platform.devstack.dev_output import EXAMPLE_BODY, ready_text
from nvcf_platform.devstack.stack import FunctionSpec, LocalStack

pytestmark = [pytest.mark.nats, pytest.mark.timeout(90)]

CONTAINER = Path(__file__).parent / "servers" / "gateway_container.py"
INVOCATION_PATH = "/invoke"


@dataclass(frozen=True)
class GatewayStack:
    stack: LocalStack
    alpha: str
    alpha_versions: tuple[str, str]
    beta: str


def spec(name: str, function_id: str) -> FunctionSpec:
    port = free_port()
    return FunctionSpec(
        command=[sys.executable, str(CONTAINER), str(port), name],
        inference_port=port,
        function_id=function_id,
        name=name,
        default_invocation_path=INVOCATION_PATH,
        max_request_concurrency=4,
    )


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStack]:
    directory = tmp_path_factory.mktemp("gateway-stack")
    alpha, beta = str(uuid.uuid4()), str(uuid.uuid4())
    specs = [spec("alpha", alpha), spec("alpha", alpha), spec("beta", beta)]
    stack = LocalStack(specs, work_dir=directory / "stack")
    stack.start(timeout=60)
    try:
        yield GatewayStack(stack, alpha, (specs[0].version_id, specs[1].version_id), beta)
    finally:
        stack.stop()
        for process in stack.processes():
            sys.stdout.write(f"\n----- {process.name} -----\n{process.log_tail(30)}\n")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=60), trust_env=False, auto_decompress=False
    ) as session:
        yield session


@dataclass
class Answer:
    status: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header_seen(self, name: str) -> list[str]:
        """The values of header `name` the container received (from its echo)."""
        return [value for key, value in self.json()["headers"] if key.lower() == name.lower()]


async def call(
    http: aiohttp.ClientSession,
    gateway: GatewayStack,
    method: str,
    target: str,
    headers: dict[str, str],
    *,
    body: bytes | None = None,
    auth: bool = True,
) -> Answer:
    """`method` on the platform's `target` (path and query sent verbatim)."""
    sent = {**(gateway.stack.auth_headers if auth else {}), **headers}
    url = URL(gateway.stack.base_url + target, encoded=True)
    async with http.request(method, url, headers=sent, data=body, allow_redirects=False) as r:
        return Answer(r.status, r.headers, await r.read())


async def test_get_with_a_query_reaches_the_container_with_path_and_query_intact(
    http: aiohttp.ClientSession, gateway: GatewayStack
) -> None:
    target = "/v1/models/list?x=1&y=a%20b&y=2&empty="
    answer = await call(http, gateway, "GET", target, {"function-id": gateway.alpha})
    assert answer.status == 200, answer.body
    seen = answer.json()
    assert (seen["name"], seen["method"], seen["target"]) == ("alpha", "GET", target)
    assert answer.headers["nvcf-status"] == "fulfilled"
    assert answer.header_seen("NVCF-REQID") == [answer.headers["nvcf-reqid"]]
    assert answer.header_seen("NVCF-FUNCTION-ID") == [gateway.alpha]
    assert answer.header_seen("Authorization") == []
    # The gateway form runs the worker in passthrough mode, as NVIDIA's TLB route does.
    assert answer.header_seen("Nvcf-Feature-Disable-Worker-Compatibility") == ["true"]


@pytest.mark.parametrize(
    ("method", "target", "body"),
    [
        ("PUT", "/items/42?replace=true", b'{"name": "x"}'),
        ("DELETE", "/items/42", None),
        ("PATCH", "/", b"plain text"),
        ("OPTIONS", "/anything", None),
    ],
)
async def test_any_method_on_any_path_reaches_the_container(
    http: aiohttp.ClientSession, gateway: GatewayStack, method: str, target: str, body: bytes | None
) -> None:
    answer = await call(http, gateway, method, target, {"function-id": gateway.beta}, body=body)
    assert answer.status == 200, answer.body
    seen = answer.json()
    assert (seen["name"], seen["method"], seen["target"]) == ("beta", method, target)
    assert seen["body"] == (body or b"").decode()
    assert "Access-Control-Allow-Origin" not in answer.headers  # OPTIONS is not CORS here


async def test_a_host_naming_a_function_routes_to_it(
    http: aiohttp.ClientSession, gateway: GatewayStack
) -> None:
    host = f"{gateway.beta}.invocation.localhost:8080"
    answer = await call(http, gateway, "POST", "/generate?n=2", {"Host": host}, body=b"{}")
    assert answer.status == 200, answer.body
    assert (answer.json()["name"], answer.json()["target"]) == ("beta", "/generate?n=2")


async def test_the_function_id_header_beats_the_host(
    http: aiohttp.ClientSession, gateway: GatewayStack
) -> None:
    headers = {"Host": f"{gateway.beta}.invocation.local", "function-id": gateway.alpha}
    answer = await call(http, gateway, "GET", "/who", headers)
    assert answer.status == 200, answer.body
    assert answer.json()["name"] == "alpha"


async def test_a_function_id_header_that_is_no_uuid_leaves_the_host_to_route(
    http: aiohttp.ClientSession, gateway: GatewayStack
) -> None:
    headers = {"Host": f"{gateway.beta}.invocation.local", "function-id": "not-a-uuid"}
    answer = await call(http, gateway, "GET", "/who", headers)
    assert answer.status == 200, answer.body
    assert answer.json()["name"] == "beta"


async def test_the_version_first_host_and_the_version_header_pick_that_version(
    http: aiohttp.ClientSession, gateway: GatewayStack
) -> None:
    for version in gateway.alpha_versions:
        host = {"Host": f"{version}.{gateway.alpha}.invocation.local"}
        header = {"function-id": gateway.alpha, "function-version-id": version}
        for headers in (host, header) * 2:
            answer = await call(http, gateway, "GET", "/version", headers)
            assert answer.status == 200, answer.body
            assert answer.header_seen("NVCF-FUNCTION-VERSION-ID") == [version]


async def test_server_sent_events_are_relayed_through_the_gateway(
    http: aiohttp.ClientSession, gateway: GatewayStack
) -> None:
    headers = {
        "function-id": gateway.alpha,
        "Accept": "text/event-stream",
        "X-Gw-Action": "sse",
        "X-Gw-Events": "4",
    }
    answer = await call(http, gateway, "GET", "/events?topic=a", headers)
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"] == "text/event-stream"
    assert "Content-Length" not in answer.headers
    events = [json.loads(line[6:]) for line in answer.body.decode().splitlines() if line]
    assert events == [{"i": i} for i in range(4)]


async def test_a_202_is_polled_at_the_pexec_status_route(
    http: aiohttp.ClientSession, gateway: GatewayStack
) -> None:
    headers = {"function-id": gateway.beta, "X-Gw-Action": "accepted", "X-Gw-Polls": "2"}
    first = await call(http, gateway, "POST", "/jobs?id=7", headers, body=b"{}")
    assert first.status == 202, first.body
    assert first.headers["nvcf-status"] == "in-progress"
    assert first.json() == {"left": 2}
    request_id = first.headers["nvcf-reqid"]
    poll = {"X-Gw-Action": "accepted", "X-Gw-Polls": "2"}
    status_path = f"/v2/nvcf/pexec/status/{request_id}"
    answers = [await call(http, gateway, "GET", status_path, poll) for _ in range(2)]
    assert [a.status for a in answers] == [202, 200], answers[-1].body
    assert answers[-1].json() == {"polled": 2, "target": "/jobs?id=7"}
    assert answers[-1].headers["nvcf-reqid"] == request_id
    gone = await call(http, gateway, "GET", status_path, poll)
    assert gone.status == 404


async def test_an_unknown_function_is_the_same_404_as_pexec(
    http: aiohttp.ClientSession, gateway: GatewayStack
) -> None:
    unknown = str(uuid.uuid4())
    answer = await call(http, gateway, "GET", "/x?y=1", {"function-id": unknown})
    pexec = await call(http, gateway, "POST", f"/v2/nvcf/pexec/functions/{unknown}", {}, body=b"{}")
    assert (answer.status, answer.body) == (404, pexec.body), answer.body
    assert answer.headers["Content-Type"] == pexec.headers["Content-Type"]
    by_host = await call(http, gateway, "GET", "/x", {"Host": f"{unknown}.{gateway.alpha}.local"})
    assert by_host.status == 404  # a version of alpha that does not exist


async def test_a_bad_or_missing_token_is_refused_as_pexec_refuses_it(
    http: aiohttp.ClientSession, gateway: GatewayStack
) -> None:
    bad = {"function-id": gateway.alpha, "Authorization": "Bearer wrong"}
    answer = await call(http, gateway, "GET", "/x", bad, auth=False)
    pexec_url = f"/v2/nvcf/pexec/functions/{gateway.alpha}"
    pexec = await call(
        http, gateway, "POST", pexec_url, {"Authorization": "Bearer wrong"}, auth=False
    )
    assert (answer.status, answer.body) == (401, pexec.body)
    missing = await call(
        http, gateway, "GET", "/health", {"function-id": gateway.alpha}, auth=False
    )
    assert missing.status == 401
    assert missing.body == b"Header of type `authorization` was missing"


async def test_the_path_router_is_unaffected_without_routing_headers(
    http: aiohttp.ClientSession, gateway: GatewayStack
) -> None:
    stack = gateway.stack
    health = await call(http, gateway, "GET", "/health", {}, auth=False)
    assert health.status == 200
    pexec = await call(
        http, gateway, "POST", f"/v2/nvcf/pexec/functions/{gateway.alpha}", {}, body=b"{}"
    )
    assert pexec.status == 200, pexec.body
    assert (pexec.json()["method"], pexec.json()["target"]) == ("POST", INVOCATION_PATH)
    functions = await call(http, gateway, "GET", "/v2/nvcf/functions", {})
    assert functions.status == 200, functions.body
    ids = {function["id"] for function in functions.json()["functions"]}
    assert {gateway.alpha, gateway.beta} <= ids
    unrouted = await call(http, gateway, "GET", "/no/such/path", {"Host": stack.base_url[7:]})
    assert unrouted.status == 404
    assert unrouted.headers["Content-Type"] == "application/problem+json"


INVOKE = [sys.executable, "-m", "nvcf_sidecar.cli", "invoke"]
_DROPPED_ENV = {"nvcf_url", "nvcf_api_key", "http_proxy", "https_proxy", "all_proxy"}


def run_invoke(gateway: GatewayStack, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`nvcf-sidecar invoke ARGS --url <stack> --api-key <key>` as a subprocess."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _DROPPED_ENV}
    stack = gateway.stack
    return subprocess.run(
        [*INVOKE, *args, "--url", stack.base_url, "--api-key", stack.api_key],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_invoke_gateway_sends_method_path_query_and_the_routing_headers(
    gateway: GatewayStack,
) -> None:
    version = gateway.alpha_versions[1]
    target = "/v1/items?x=1&y=a%20b"
    result = run_invoke(
        gateway,
        gateway.alpha,
        "--gateway",
        "--version",
        version,
        "--method",
        "get",
        "--path",
        target,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert (seen["name"], seen["method"], seen["target"], seen["body"]) == (
        "alpha",
        "GET",
        target,
        "",
    )
    headers = {name.lower(): value for name, value in seen["headers"]}
    assert headers["function-id"] == gateway.alpha
    assert headers["function-version-id"] == version
    assert headers["nvcf-function-version-id"] == version
    assert "content-type" in headers  # the sidecar's JSON default, not the CLI's


def test_invoke_gateway_posts_data_and_follows_202s(gateway: GatewayStack) -> None:
    result = run_invoke(
        gateway,
        gateway.beta,
        "--gateway",
        "--path",
        "/jobs?id=9",
        "--data",
        '{"n": 1}',
        "--header",
        "X-Gw-Action: accepted",
        "--header",
        "X-Gw-Polls: 2",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"polled": 2, "target": "/jobs?id=9"}
    assert "accepted (202); polling" in result.stderr.decode()


@pytest.mark.parametrize(
    "args",
    [["--path", "/x"], ["--method", "GET"], ["--gateway", "--path", "no-slash"]],
)
def test_invoke_gateway_flags_are_checked(gateway: GatewayStack, args: list[str]) -> None:
    result = run_invoke(gateway, gateway.beta, *args)
    assert result.returncode == 2, result.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_gateway_curl_line_dev_prints_reaches_the_function(gateway: GatewayStack) -> None:
    text = ready_text(gateway.stack, None, None)
    lines = [line.strip() for line in text.splitlines() if f"function-id: {gateway.beta}" in line]
    assert len(lines) == 1, text
    result = subprocess.run(shlex.split(lines[0]), capture_output=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert (seen["name"], seen["method"], seen["target"]) == ("beta", "POST", INVOCATION_PATH)
    assert json.loads(seen["body"]) == json.loads(EXAMPLE_BODY)
    assert f"invoke {gateway.beta} --gateway --path {INVOCATION_PATH}" in text
