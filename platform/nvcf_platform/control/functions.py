"""Function-version status and NVCF's function listing routes (`GET /v2/nvcf/functions...`).

`FunctionStates` derives each version's NVCF status from its instances' readiness probes and the
workers that connected; `FunctionEndpoints` answers in the NVCF API's shapes (ListFunctionsResponse).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final

import aiohttp
import orjson
from aiohttp import web

from nvcf_platform.control.records import FunctionStatus
from nvcf_platform.control.registry import Function, FunctionVersion, Registry
from nvcf_platform.errors import FunctionNotFound, FunctionVersionNotFound, PlatformError
from nvcf_platform.invocation.invocation import CallerIdentity
from nvcf_platform.invocation.problems import UNAUTHORIZED_CLIENT, problem_response
from nvcf_platform.invocation.worker_api import WORKER_TOKEN_LIFETIME_SECONDS
from nvcf_sidecar.protocol import parse_bearer

__all__ = [
    "FUNCTIONS_PATH",
    "FUNCTION_VERSIONS_PATH",
    "FUNCTION_VERSION_PATH",
    "ConnectedInstance",
    "FunctionEndpoints",
    "FunctionStates",
    "FunctionStatus",
    "next_status",
    "not_found_detail",
]

FUNCTIONS_PATH: Final = "/v2/nvcf/functions"
FUNCTION_VERSIONS_PATH: Final = FUNCTIONS_PATH + "/{function_id}/versions"
FUNCTION_VERSION_PATH: Final = FUNCTION_VERSIONS_PATH + "/{function_version_id}"
PROBE_TIMEOUT: Final = 1.0
"""Bound on one readiness GET (never longer than the probe interval)."""

_log = logging.getLogger(__name__)


_WAS_ACTIVE: Final = frozenset(
    {FunctionStatus.ACTIVE, FunctionStatus.DEGRADING, FunctionStatus.DEGRADED}
)


def next_status(
    current: FunctionStatus,
    *,
    ready: int,
    min_instances: int,
    deploying_for: float,
    deploy_timeout: float,
) -> FunctionStatus:
    """The status of a probed version after a round found `ready` instances ready.

    NVCF's life cycle: ACTIVE once `ready >= min_instances` (always, with a minimum of 0); a
    version that was ACTIVE is DEGRADING below the minimum and DEGRADED with none ready; one that
    never was stays DEPLOYING until `deploying_for` reaches `deploy_timeout`, then ERROR.
    """
    if ready >= min_instances:
        return FunctionStatus.ACTIVE
    if current in _WAS_ACTIVE:
        return FunctionStatus.DEGRADED if ready == 0 else FunctionStatus.DEGRADING
    if current is FunctionStatus.ERROR or deploying_for >= deploy_timeout:
        return FunctionStatus.ERROR
    return FunctionStatus.DEPLOYING


@dataclass(frozen=True, slots=True)
class ConnectedInstance:
    """A worker that called ConnectOnce (NVCF's InstanceDto, as far as the platform knows it)."""

    instance_id: str
    function_id: str
    function_version_id: str
    connected_at: float
    """Unix time of its latest ConnectOnce."""

    def to_json(self, nca_id: str, region: str) -> dict[str, Any]:
        return {
            "instanceId": self.instance_id,
            "functionId": self.function_id,
            "functionVersionId": self.function_version_id,
            "instanceStatus": "ACTIVE",
            "ncaId": nca_id,
            "location": region,
            "instanceCreatedAt": _instant(self.connected_at),
        }


@dataclass(slots=True)
class _Probed:
    status: FunctionStatus = FunctionStatus.DEPLOYING
    ready: int = 0


class FunctionStates:
    """The status of every configured version: `async with states:` runs the readiness prober.

    A version with `instance_health_urls` is probed every `probe_interval` seconds (GET, 200 =
    ready, anything else or no answer within 1 s = not ready) and moves as `next_status` says,
    starting DEPLOYING when the prober starts. A version without them is ACTIVE while a worker's
    ConnectOnce token is valid (3 h; workers refresh it every 20-30 min), else INACTIVE.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        probe_interval: float = 2.0,
        deploy_timeout: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._interval = probe_interval
        self._deploy_timeout = deploy_timeout
        self._clock = clock
        self._deploy_start = clock()
        self._managed: Callable[[str], FunctionStatus | None] | None = None
        self._created_at = _instant(time.time())
        self._probed = {
            version.function_version_id: _Probed()
            for version in registry.versions
            if version.instance_health_urls
        }
        self._connected: dict[str, dict[str, ConnectedInstance]] = {}
        self._rounds = 0
        self._round_done = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        for version in registry.versions:
            urls = len(version.instance_health_urls)
            if 0 < urls < version.min_instances:
                _log.warning(
                    "min_instances exceeds the instance health URLs: the version cannot be ACTIVE",
                    extra={**_fields(version), "instance_health_urls": urls},
                )

    @property
    def created_at(self) -> str:
        """When the platform took the registry (NVCF's `createdAt` of every version)."""
        return self._created_at

    def record_connection(self, version: FunctionVersion, instance_id: str) -> None:
        """Note a worker's ConnectOnce (the `WorkerApi` hook); forgets expired ones."""
        now = time.time()
        known = self._connected.get(version.function_version_id, {})
        instances = {
            key: item
            for key, item in known.items()
            if item.connected_at > now - WORKER_TOKEN_LIFETIME_SECONDS
        }
        instances[instance_id] = ConnectedInstance(
            instance_id, version.function_id, version.function_version_id, now
        )
        self._connected[version.function_version_id] = instances

    def instances(self, version: FunctionVersion) -> list[ConnectedInstance]:
        """The version's workers whose latest ConnectOnce token is still valid, oldest first."""
        oldest = time.time() - WORKER_TOKEN_LIFETIME_SECONDS
        known = self._connected.get(version.function_version_id, {})
        return sorted(
            (item for item in known.values() if item.connected_at > oldest),
            key=lambda item: item.connected_at,
        )

    def follow(self, managed: Callable[[str], FunctionStatus | None]) -> None:
        """Take the status of versions the control plane manages from `managed` (a version id
        to its status, None for the registry file's versions)."""
        self._managed = managed

    def status(self, version: FunctionVersion) -> FunctionStatus:
        """The version's NVCF status now."""
        if self._managed is not None:
            status = self._managed(version.function_version_id)
            if status is not None:
                return status
        probed = self._probed.get(version.function_version_id)
        if probed is not None:
            return probed.status
        return FunctionStatus.ACTIVE if self.instances(version) else FunctionStatus.INACTIVE

    def ready_instances(self, version: FunctionVersion) -> int | None:
        """Instances ready at the latest probe; None for a version without health URLs."""
        probed = self._probed.get(version.function_version_id)
        return None if probed is None else probed.ready

    async def probe(self) -> None:
        """One probe round over every version with health URLs (the prober calls it)."""
        session = self._session
        if session is None:
            raise PlatformError("the function-state prober is not running")
        versions = [v for v in self._registry.versions if v.instance_health_urls]
        counts = await asyncio.gather(*(self._count_ready(session, v) for v in versions))
        deploying_for = self._clock() - self._deploy_start
        for version, ready in zip(versions, counts, strict=True):
            self._update(version, ready, deploying_for)
        async with self._round_done:
            self._rounds += 1
            self._round_done.notify_all()

    async def wait_rounds(self, count: int = 1) -> None:
        """Wait until `count` more probe rounds have ended (the first may have begun earlier).

        Rounds run only inside `async with` and when some version has health URLs.
        """
        async with self._round_done:
            target = self._rounds + count
            await self._round_done.wait_for(lambda: self._rounds >= target)

    async def _count_ready(self, session: aiohttp.ClientSession, version: FunctionVersion) -> int:
        answers = await asyncio.gather(
            *(_is_ready(session, url, version) for url in version.instance_health_urls)
        )
        return sum(answers)

    def _update(self, version: FunctionVersion, ready: int, deploying_for: float) -> None:
        probed = self._probed[version.function_version_id]
        status = next_status(
            probed.status,
            ready=ready,
            min_instances=version.min_instances,
            deploying_for=deploying_for,
            deploy_timeout=self._deploy_timeout,
        )
        previous, probed.status, probed.ready = probed.status, status, ready
        if status is not previous:
            level = logging.INFO if status is FunctionStatus.ACTIVE else logging.WARNING
            _log.log(
                level,
                "function version status changed",
                extra={
                    **_fields(version),
                    "status": str(status),
                    "previous_status": str(previous),
                    "ready_instances": ready,
                    "min_instances": version.min_instances,
                },
            )

    async def _run(self) -> None:
        while True:
            try:
                await self.probe()
            except Exception as error:  # the prober must outlive any one bad round
                _log.error("readiness probe round failed", extra={"error": repr(error)})
            await asyncio.sleep(self._interval)

    async def __aenter__(self) -> FunctionStates:
        if self._session is not None:
            raise PlatformError("the function-state prober is already running")
        timeout = aiohttp.ClientTimeout(total=min(PROBE_TIMEOUT, self._interval))
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._deploy_start = self._clock()
        if self._probed:
            self._task = asyncio.create_task(self._run(), name="nvcf-platform-prober")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _is_ready(session: aiohttp.ClientSession, url: str, version: FunctionVersion) -> bool:
    try:
        async with session.get(url, allow_redirects=False) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError) as error:
        _log.debug(
            "instance not reachable", extra={**_fields(version), "url": url, "error": repr(error)}
        )
        return False


def _fields(version: FunctionVersion) -> dict[str, str]:
    return {
        "function_id": version.function_id,
        "function_version_id": version.function_version_id,
    }


def _instant(unix_time: float) -> str:
    """A Unix time as Java's Instant prints it (UTC, `Z`, milliseconds)."""
    moment = datetime.fromtimestamp(unix_time, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FunctionEndpoints:
    """NVCF's function listing for the platform's caller (bearer auth as pexec).

    `GET /v2/nvcf/functions`: every version of every function; `.../{fid}/versions`: those of one
    function; `.../{fid}/versions/{fvid}`: `{"function": {...}}`. 401 problem for a bearer that is
    not an accepted key; 404 problem for an unknown (or non-UUID) function or version.
    """

    def __init__(
        self, registry: Registry, callers: CallerIdentity, states: FunctionStates, *, region: str
    ) -> None:
        self._registry = registry
        self._callers = callers
        self._states = states
        self._region = region

    @property
    def registry(self) -> Registry:
        return self._registry

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_get(FUNCTIONS_PATH, self.list_functions, allow_head=False)
        router.add_get(FUNCTION_VERSIONS_PATH, self.list_versions, allow_head=False)
        router.add_get(FUNCTION_VERSION_PATH, self.show_version, allow_head=False)

    def version_json(self, version: FunctionVersion) -> dict[str, Any]:
        """One version as NVCF's FunctionDto (the fields the platform knows) plus `minInstances`."""
        body: dict[str, Any] = {
            "id": version.function_id,
            "ncaId": self._callers.nca_id,
            "versionId": version.function_version_id,
            "name": version.function_name,
            "status": str(self._states.status(version)),
            "inferenceUrl": version.invocation_path or "/",
            "functionType": "DEFAULT",
            "createdAt": self._states.created_at,
            "minInstances": version.min_instances,
        }
        instances = self._states.instances(version)
        if instances:
            body["activeInstances"] = [
                item.to_json(self._callers.nca_id, self._region) for item in instances
            ]
        return body

    async def list_functions(self, request: web.Request) -> web.StreamResponse:
        """`{"functions": [...]}`: one entry per version, in registry order."""
        if self._denied(request):
            return problem_response(401, UNAUTHORIZED_CLIENT)
        return _json({"functions": [self.version_json(v) for v in self._registry.versions]})

    async def list_versions(self, request: web.Request) -> web.StreamResponse:
        """`{"functions": [...]}` of one function's versions, or 404."""
        if self._denied(request):
            return problem_response(401, UNAUTHORIZED_CLIENT)
        function = self._function(request.match_info["function_id"])
        if function is None:
            return self._not_found(request.match_info["function_id"])
        return _json({"functions": [self.version_json(v) for v in function.versions]})

    async def show_version(self, request: web.Request) -> web.StreamResponse:
        """`{"function": {...}}` of one version, or 404."""
        if self._denied(request):
            return problem_response(401, UNAUTHORIZED_CLIENT)
        function_id = request.match_info["function_id"]
        version_id = request.match_info["function_version_id"]
        try:
            version = self._registry.version(function_id, version_id)
        except FunctionNotFound:
            return self._not_found(function_id)
        except FunctionVersionNotFound:
            return self._not_found(function_id, version_id)
        return _json({"function": self.version_json(version)})

    def _function(self, function_id: str) -> Function | None:
        try:
            return self._registry.function(function_id)
        except FunctionNotFound:
            return None

    def _not_found(self, function_id: str, version_id: str | None = None) -> web.Response:
        return problem_response(
            404, not_found_detail(function_id, version_id, self._callers.nca_id)
        )

    def _denied(self, request: web.Request) -> bool:
        return not self._callers.accepts(parse_bearer(request.headers.get("Authorization")))


def not_found_detail(function_id: str, version_id: str | None, nca_id: str) -> str:
    """The NVCF API's text for an unknown function or version of an account."""
    if version_id is None:
        return f"Function id '{function_id}': Not found in account '{nca_id}'"
    return f"Function id '{function_id}', version '{version_id}': Not found in account '{nca_id}'"


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")
