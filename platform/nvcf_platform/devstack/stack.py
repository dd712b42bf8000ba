"""The whole local NVCF stack as child processes on loopback: NATS, platform, servers, sidecars.

`LocalStack` starts them in dependency order (NATS is one server, or a JetStream cluster of
several), waits until every sidecar is ready and stops them in reverse; it is what
`nvcf-sidecar dev`, the benchmarks and the end-to-end tests run on. Its state lives in the work
directory (NATS store, file-backed streams, the URL-signing secret), so a restarted nats-server
or platform finds it again. The per-request directories live on /dev/shm when it has room
(`scratch.py`).
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, TextIO

from nvcf_platform.devstack.nats_cluster import EmbeddedNatsCluster
from nvcf_platform.devstack.nats_server import EmbeddedNatsServer, NatsServerError
from nvcf_platform.devstack.scratch import Scratch
from nvcf_platform.devstack.stack_platform import (
    PLATFORM_RESTART_TIMEOUT,
    PlatformEndpoints,
    PlatformPlan,
    listening_socket,
    wait_listening,
)
from nvcf_platform.devstack.stack_process import (
    ChildExited,
    StackError,
    StackProcess,
    stop_in_order,
)
from nvcf_platform.devstack.stack_readiness import wait_all_ready
from nvcf_platform.devstack.stack_spec import (
    HOST,
    FunctionSpec,
    choose_ports,
    free_port,
    process_labels,
    registry_toml,
    server_environment,
    sidecar_environment,
    sidecar_executable,
)
from nvcf_platform.errors import ConfigError

__all__ = [
    "HOST",
    "NATS_NAME",
    "ChildExited",
    "FunctionSpec",
    "LocalStack",
    "StackError",
    "StackProcess",
]

NATS_RESTART_TIMEOUT: Final = 30.0
"""How long a restarted nats-server may take to be healthy (JetStream recovers its store)."""
NATS_NAME: Final = "nats-server"
"""The name of the one nats-server of a stack without a cluster (cluster nodes: `nats-<n>`)."""


def _quiet(text: str) -> None:
    """The default progress sink: says nothing."""


class LocalStack:
    """NATS (JetStream), `nvcf-sidecar platform`, inference servers and sidecars on 127.0.0.1.

    Every child runs in its own process group with its output in `work_dir/logs/<name>.log`
    (copied to `log_stream` as `[name] line` when one is given; `stream_lock` serialises the
    writers, so a caller that also writes there can share it). `progress` is told, in plain
    sentences, what `start()` does and waits for. Use it as a context manager, or call `start()`
    and `stop()`. Not thread-safe: drive it from one thread.

    The platform listens on `platform_port` (0: a free port) for callers, on a free gRPC port
    for the sidecars and, with `attach_listener` (the default), on a free port for the workers'
    attach calls (its lean attach listener, `--attach-port`); all are chosen once, so
    `restart_platform` brings it back on them.
    `platform_args` are appended to its command line. With no function it is given no registry
    file: a platform for the control-plane API, which runs the versions deployed through it
    from the `images` catalog (none: an empty one) in `work_dir/instances`.

    With `nats_cluster` of 2 or more, NATS is a JetStream cluster of that many nodes
    (`EmbeddedNatsCluster`, named `nats-1` ...): the platform gets every node's URL and
    `--replicas` as many as the nodes (at most 3, JetStream's usual R3), the sidecars the URLs
    comma-separated in `NVCF_FQDN_NATS`.
    """

    def __init__(
        self,
        functions: Sequence[FunctionSpec],
        *,
        work_dir: Path,
        api_key: str = "nvcf-local-key",
        platform_port: int = 0,
        platform_args: Sequence[str] = (),
        images: Path | None = None,
        log_stream: TextIO | None = None,
        stream_lock: threading.Lock | None = None,
        progress: Callable[[str], None] = _quiet,
        nats_cluster: int = 1,
        attach_listener: bool = True,
    ) -> None:
        if nats_cluster < 1:
            raise StackError(f"nats_cluster: {nats_cluster} nodes; at least 1")
        versions = [spec.version_id for spec in functions]
        if len(set(versions)) != len(versions):
            raise StackError("two functions share a version id")
        self.functions: tuple[FunctionSpec, ...] = tuple(functions)
        self.work_dir = Path(work_dir)
        self.api_key = api_key
        self._platform_port = platform_port
        self._platform_args = list(platform_args)
        self._attach_listener = attach_listener
        self.images = images
        self._log_stream = log_stream
        self._stream_lock = stream_lock or threading.Lock()
        self._progress = progress
        self._labels = process_labels(self.functions)
        self._nats: EmbeddedNatsServer | None = None
        self._scratch: Scratch | None = None
        self._cluster_size = nats_cluster
        self._cluster: EmbeddedNatsCluster | None = None
        self._platform: StackProcess | None = None
        self._platform_ports = (0, 0, 0)  # (HTTP, gRPC, attach), chosen by start()
        self._platform_plan: PlatformPlan | None = None
        self._http_listener: socket.socket | None = None
        """The platform's HTTP listening socket, owned here so that it outlives a restart."""
        self._endpoints: dict[str, str] = {}
        self._containers: dict[str, StackProcess] = {}
        self._sidecars: dict[str, list[StackProcess]] = {v: [] for v in versions}
        self._health_ports: dict[str, list[int]] = {v: [] for v in versions}

    # -- addresses ------------------------------------------------------------------------------

    def _endpoint(self, key: str) -> str:
        if key not in self._endpoints:
            raise StackError("the stack has not been started")
        return self._endpoints[key]

    @property
    def base_url(self) -> str:
        """The platform's caller API, `http://127.0.0.1:<port>`."""
        return self._endpoint("base_url")

    @property
    def attach_url(self) -> str:
        """Where the workers attach: the lean attach listener, or `base_url` without it."""
        return self._endpoint("attach_url")

    @property
    def instances_dir(self) -> Path:
        """The platform's `--instances-dir`, where it runs the versions deployed through it."""
        return self.work_dir / "instances"

    @property
    def grpc_url(self) -> str:
        """The `nvcf.Worker` gRPC stand-in the sidecars connect to."""
        return self._endpoint("grpc_url")

    @property
    def has_grpc_proxy(self) -> bool:
        """Whether the platform runs NVCF's gRPC entry point."""
        return "grpc_proxy_address" in self._endpoints

    @property
    def grpc_proxy_address(self) -> str:
        """`host:port` of NVCF's gRPC entry point (the platform runs with `--grpc-proxy-port`)."""
        return self._endpoint("grpc_proxy_address")

    @property
    def nats_url(self) -> str:
        """The embedded NATS server's URL, or every cluster node's, comma-separated."""
        return self._endpoint("nats_url")

    @property
    def replicas(self) -> int:
        """Replicas of the platform's streams and buckets: 1, or 3 on a cluster of 3 or more."""
        return min(3, self._cluster_size)

    @property
    def url_signing_secret_file(self) -> Path:
        """The platform's presigned-URL secret (0600), kept across platform restarts."""
        return self.work_dir / "secrets" / "url-signing.key"

    @property
    def auth_headers(self) -> dict[str, str]:
        """`{"Authorization": "Bearer <api_key>"}` for callers."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def invoke_url(self, function_id: str, version_id: str | None = None) -> str:
        """The pexec URL of a function (any version) or of one version."""
        url = f"{self.base_url}/v2/nvcf/pexec/functions/{function_id}"
        return url if version_id is None else f"{url}/versions/{version_id}"

    def instance_health_urls(self, version_id: str) -> list[str]:
        """The readiness URLs of the version's sidecars started with the stack (one per
        `FunctionSpec.sidecars`, chosen before the registry file is written), as the platform
        knows them; a restarted sidecar keeps its URL."""
        spec = self._spec(version_id)
        ports = self._health_ports[spec.version_id]
        return [f"http://{HOST}:{port}/v1/health/ready" for port in ports]

    def response_dir(self, version_id: str) -> Path:
        """`BASE_RESPONSE_DIR` of the version's sidecars (on /dev/shm when it has room:
        `scratch.py`)."""
        return self._requests_dir(version_id) / "response"

    def asset_dir(self, version_id: str) -> Path:
        """`BASE_ASSET_DIR` of the version's sidecars."""
        return self._requests_dir(version_id) / "assets"

    def _version_dir(self, version_id: str) -> Path:
        """What the version keeps under the work directory (its secrets file)."""
        return self.work_dir / "functions" / self._spec(version_id).version_id

    def _requests_dir(self, version_id: str) -> Path:
        """The parent of the version's per-request directories."""
        root = self.work_dir if self._scratch is None else self._scratch.root
        return root / "functions" / self._spec(version_id).version_id

    # -- processes ------------------------------------------------------------------------------

    @property
    def nats(self) -> EmbeddedNatsServer:
        """The embedded NATS server (for inspecting streams in tests); the first node of a
        cluster."""
        if self._nats is None:
            raise StackError("the stack has not been started")
        return self._nats

    @property
    def nats_nodes(self) -> dict[str, EmbeddedNatsServer]:
        """Every nats-server by name: `nats-server` alone, or the cluster's `nats-1` ..."""
        if self._cluster is not None:
            return self._cluster.nodes
        return {NATS_NAME: self.nats}

    @property
    def nats_cluster(self) -> EmbeddedNatsCluster | None:
        """The JetStream cluster, when the stack runs on one (who leads, kill a node ...)."""
        return self._cluster

    @property
    def platform(self) -> StackProcess:
        """The `nvcf-sidecar platform` process."""
        if self._platform is None:
            raise StackError("the stack has not been started")
        return self._platform

    def container(self, version_id: str) -> StackProcess:
        """The inference server of a version (the latest one after `restart_container`)."""
        spec = self._spec(version_id)
        if spec.version_id not in self._containers:
            raise StackError(f"no inference server started for version {version_id}")
        return self._containers[spec.version_id]

    def sidecars(self, version_id: str) -> list[StackProcess]:
        """Every sidecar started for a version, in start order (exited ones included; a
        restarted one is replaced by its new process)."""
        return list(self._sidecars[self._spec(version_id).version_id])

    def processes(self) -> list[StackProcess]:
        """The platform, every inference server and every sidecar started so far."""
        found = [] if self._platform is None else [self._platform]
        found += self._containers.values()
        return found + [sidecar for group in self._sidecars.values() for sidecar in group]

    def _spec(self, version_id: str) -> FunctionSpec:
        for spec in self.functions:
            if spec.version_id == version_id.lower():
                return spec
        raise StackError(f"no function version {version_id!r} in this stack")

    # -- lifetime -------------------------------------------------------------------------------

    def __enter__(self) -> LocalStack:
        if self._nats is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 90.0) -> None:
        """Start NATS, the platform, every inference server, every sidecar; return once each
        sidecar (of a spec with `wait_ready`) answers `/v1/health/ready` with 200. The sidecars'
        health ports are chosen first, so that the registry file can name them.

        Raises ChildExited naming a child that exits meanwhile (status and log tail), or
        StackError when `timeout` seconds pass; everything started is stopped first.
        """
        if self._nats is not None:
            raise StackError("the stack was already started")
        deadline = time.monotonic() + timeout
        try:
            # Chosen once: the registry names the health ports, a restarted platform reuses its.
            health, self._platform_ports = choose_ports(self.functions, self._platform_port)
            self._health_ports.update(health)
            try:
                self._scratch = Scratch.open(self.work_dir)
            except ConfigError as error:
                raise StackError(str(error)) from None
            self._start_nats(deadline)
            self._start_platform(deadline)
            for spec in self.functions:
                container = self._start_container(spec)
                self._progress(f"started {container.name} (pid {container.pid})")
            for spec in self.functions:
                for _ in range(spec.sidecars):
                    sidecar = self._start_sidecar(spec)
                    self._progress(f"started {sidecar.name} (pid {sidecar.pid})")
            waited = [
                s for f in self.functions if f.wait_ready for s in self.sidecars(f.version_id)
            ]
            self._wait_ready(waited, deadline, timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sidecars, inference servers, the platform, then NATS; idempotent.

        Each group gets SIGTERM and `timeout` seconds (a sidecar drains its requests), then
        SIGKILL; whole process groups are waited for, so no child is left behind.
        """
        groups = [
            [sidecar for group in self._sidecars.values() for sidecar in group],
            list(self._containers.values()),
            [] if self._platform is None else [self._platform],
        ]
        errors = stop_in_order(groups, timeout)
        if self._scratch is not None:
            self._scratch.close()
        if self._http_listener is not None:
            self._http_listener.close()
            self._http_listener = None
        try:
            if self._cluster is not None:
                self._cluster.close()
            elif self._nats is not None:
                self._nats.close()
        except NatsServerError as error:
            errors.append(StackError(str(error)))
        if errors:
            raise errors[0]

    def add_sidecar(
        self, version_id: str, *, wait: bool = True, timeout: float = 60.0
    ) -> StackProcess:
        """Start one more sidecar for a version; with `wait`, return once it is ready."""
        sidecar = self._start_sidecar(self._spec(version_id))
        if wait:
            self._wait_ready([sidecar], time.monotonic() + timeout, timeout)
        return sidecar

    def restart_nats(
        self, name: str = NATS_NAME, timeout: float = NATS_RESTART_TIMEOUT
    ) -> EmbeddedNatsServer:
        """Stop nats-server `name` (if anything of it still runs) and start it again on the
        same port and store directory: file-backed queue and tracking streams, consumers and
        object buckets survive (a cluster node catches up with the others), and the platform
        and sidecars reconnect by themselves. Raises StackError when it does not come back
        within `timeout` seconds, or when the stack has no nats-server `name`."""
        nodes = self.nats_nodes
        if name not in nodes:
            raise StackError(f"no nats-server {name!r} in this stack (it has {', '.join(nodes)})")
        nats = nodes[name]
        nats.stop()
        try:
            nats.start(timeout=timeout)
        except NatsServerError as error:
            raise StackError(str(error)) from error
        return nats

    def restart_platform(self, timeout: float = PLATFORM_RESTART_TIMEOUT) -> StackProcess:
        """Stop the platform (all of its group) and start the same command again; return once it
        listens at the same HTTP, gRPC and attach URLs, with the same registry, NATS, file-backed
        streams and URL-signing secret (the sidecars keep serving). Attach tokens lived in the old
        process only. ChildExited if it exits while starting, StackError after `timeout` s."""
        old, plan = self.platform, self._platform_plan
        assert plan is not None  # set with `_platform`
        old.stop()
        plan.ready_file.unlink(missing_ok=True)  # a killed platform leaves its file behind
        fresh = old.respawn()
        self._platform = fresh
        before = PlatformEndpoints(self.base_url, self.grpc_url, self.attach_url)
        wait_listening(fresh, plan.ready_file, time.monotonic() + timeout, expected=before)
        return fresh

    def restart_container(
        self, version_id: str, *, wait: bool = True, timeout: float = 60.0
    ) -> StackProcess:
        """Stop the version's inference server (if still running) and start it again; with
        `wait`, return once its health endpoint answers 200."""
        return self.restart(self.container(version_id), wait=wait, timeout=timeout)

    def restart(
        self, process: StackProcess, *, wait: bool = False, timeout: float = 60.0
    ) -> StackProcess:
        """Stop an inference server or sidecar of this stack (its whole group, if anything of it
        still runs) and start the same command in its place: same name, environment, log file
        and health URL (a sidecar keeps its HEALTH_PORT). With `wait`, return once it is ready.
        """
        put = self._slot_of(process)
        process.stop()
        fresh = process.respawn()
        put(fresh)
        if wait:
            fresh.wait_ready(timeout)
        return fresh

    def _slot_of(self, process: StackProcess) -> Callable[[StackProcess], None]:
        """A setter for the place `process` holds (it must be a current server or sidecar)."""
        for version_id, container in self._containers.items():
            if container is process:
                return functools.partial(self._containers.__setitem__, version_id)
        for group in self._sidecars.values():
            for index, sidecar in enumerate(group):
                if sidecar is process:
                    return functools.partial(group.__setitem__, index)
        raise StackError(f"{process.name} is not a current server or sidecar of this stack")

    # -- internals ------------------------------------------------------------------------------

    def _start_nats(self, deadline: float) -> None:
        if self._cluster_size > 1:
            self._start_nats_cluster(deadline)
            return
        self._progress("starting nats-server (JetStream)")
        self._nats = EmbeddedNatsServer(
            store_dir=self.work_dir / "nats",
            log_file=self.work_dir / "logs" / "nats-server.log",
            server_name="nvcf-local",
            start_timeout=max(1.0, deadline - time.monotonic()),
        )
        try:
            self._nats.start()
        except NatsServerError as error:
            raise StackError(str(error)) from error
        self._endpoints["nats_url"] = self._nats.url
        self._progress(f"nats-server ready: {self._nats.url} (pid {self._nats.pid})")

    def _start_nats_cluster(self, deadline: float) -> None:
        size = self._cluster_size
        self._progress(f"starting a NATS cluster of {size} nats-servers (JetStream)")
        cluster = EmbeddedNatsCluster(
            size,
            store_dir=self.work_dir / "nats",
            log_dir=self.work_dir / "logs",
            cluster_name="nvcf-local",
            start_timeout=max(1.0, deadline - time.monotonic()),
        )
        self._cluster = cluster
        try:
            cluster.start()
        except NatsServerError as error:
            raise StackError(str(error)) from error
        self._nats = cluster.node(cluster.names[0])
        self._endpoints["nats_url"] = cluster.url
        for name, node in cluster.nodes.items():
            self._progress(f"{name} ready: {node.url} (pid {node.pid})")
        self._progress(
            f"NATS cluster ready: {size} nodes, JetStream meta leader {cluster.meta_leader()}, "
            f"streams and buckets with {self.replicas} replicas"
        )

    def _start_platform(self, deadline: float) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        urls = {
            spec.version_id: self.instance_health_urls(spec.version_id) for spec in self.functions
        }
        registry = self.work_dir / "functions.toml" if self.functions else None
        if registry is not None:
            registry.write_text(registry_toml(self.functions, urls))
        http_port, grpc_port, attach_port = self._platform_ports
        if self._http_listener is None:
            self._http_listener = listening_socket(HOST, http_port)
        plan = PlatformPlan(
            registry=registry,
            ready_file=self.work_dir / "platform-ready.json",
            nats_url=self.nats_url,
            http_port=http_port,
            grpc_port=grpc_port,
            attach_port=attach_port if self._attach_listener else None,
            api_key=self.api_key,
            url_signing_secret_file=self.url_signing_secret_file,
            images=self.images,
            instances_dir=self.instances_dir,
            replicas=self.replicas,
            extra_args=tuple(self._platform_args),
            http_fd=self._http_listener.fileno(),
        )
        self._platform_plan = plan
        plan.ready_file.unlink(missing_ok=True)
        # Its instances are its own to stop (sidecars drained before their servers).
        self._platform = self._spawn(
            "platform",
            plan.command(),
            os.environ,
            pass_fds=(self._http_listener.fileno(),),
            graceful_descendants=False,
        )
        self._progress(
            f"started the platform (pid {self._platform.pid}); waiting for its listeners"
        )
        endpoints = wait_listening(self._platform, plan.ready_file, deadline)
        self._endpoints.update(
            base_url=endpoints.base_url,
            grpc_url=endpoints.grpc_url,
            attach_url=endpoints.attach_url,
        )
        if endpoints.grpc_proxy_address is not None:
            self._endpoints["grpc_proxy_address"] = endpoints.grpc_proxy_address
        self._progress(f"platform ready: {self.base_url} (nvcf.Worker gRPC at {self.grpc_url})")

    def _start_container(self, spec: FunctionSpec) -> StackProcess:
        env = server_environment(spec, os.environ, self._version_dir(spec.version_id))
        name = f"server-{self._labels[spec.version_id]}"
        container = self._spawn(name, spec.command, env, cwd=spec.cwd)
        container.health_url = f"http://{HOST}:{spec.inference_port}{spec.health_endpoint}"
        self._containers[spec.version_id] = container
        return container

    def _start_sidecar(self, spec: FunctionSpec) -> StackProcess:
        number = len(self._sidecars[spec.version_id]) + 1
        name = f"sidecar-{self._labels[spec.version_id]}-{number}"
        chosen = self._health_ports[spec.version_id]
        health_port = chosen[number - 1] if number <= len(chosen) else free_port()
        env = sidecar_environment(
            spec,
            os.environ,
            instance=name,
            health_port=health_port,
            grpc_url=self.grpc_url,
            nats_url=self.nats_url,
            version_dir=self._requests_dir(spec.version_id),
            shared_dir=self.work_dir / "shared" / name,
        )
        command = [*sidecar_executable(), "run", "--health-host", HOST, *spec.sidecar_args]
        sidecar = self._spawn(name, command, env)
        sidecar.health_url = f"http://{HOST}:{health_port}/v1/health/ready"
        sidecar.metrics_url = f"http://{HOST}:{health_port}/metrics"
        self._sidecars[spec.version_id].append(sidecar)
        return sidecar

    def _spawn(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        cwd: Path | None = None,
        pass_fds: Sequence[int] = (),
        graceful_descendants: bool = True,
    ) -> StackProcess:
        process = StackProcess(
            name,
            command,
            env=env,
            log_path=self.work_dir / "logs" / f"{name}.log",
            log_stream=self._log_stream,
            stream_lock=self._stream_lock,
            cwd=cwd,
            pass_fds=pass_fds,
            graceful_descendants=graceful_descendants,
        )
        return process.start()

    def _wait_ready(
        self, sidecars: Sequence[StackProcess], deadline: float, timeout: float
    ) -> None:
        """Poll the sidecars' readiness (and their servers' health, to tell `progress`); fail
        fast when one of them, an inference server they serve, the platform or NATS exits."""
        servers = [
            self._containers[v]
            for v, group in self._sidecars.items()
            if any(s in sidecars for s in group) and v in self._containers
        ]
        watched = [self.platform, *sidecars, *servers]

        def check_alive() -> None:
            for process in watched:
                process.check_running()
            for name, nats in self.nats_nodes.items():
                if not nats.running:
                    raise StackError(f"{name} exited; log ends with:\n{nats.log_tail()}")

        wait_all_ready(
            sidecars,
            also_report=servers,
            check_alive=check_alive,
            deadline=deadline,
            timeout=timeout,
            progress=self._progress,
        )
