"""A JetStream cluster of real `nats-server` processes on loopback: N nodes routed to each other.

Owns the nodes' cluster ports and routes, start-up until the cluster has a JetStream meta leader,
stopping, killing and restarting single nodes, and finding who leads the cluster or a stream
(from each node's `/jsz` monitoring endpoint). Standard library only, like `nats_server`.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from nvcf_platform.devstack.nats_server import (
    DEFAULT_MAX_PAYLOAD,
    EmbeddedNatsServer,
    NatsServerError,
)

__all__ = ["EmbeddedNatsCluster"]

_HOST = "127.0.0.1"
_POLL_INTERVAL = 0.05
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port(avoid: set[int]) -> int:
    """A loopback port nothing listens on now (nor one of `avoid`); cluster ports must be known
    before any node starts, since every node names the others' in its routes."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((_HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in avoid:
            avoid.add(port)
            return port
    raise NatsServerError("no free loopback port for a cluster route")


class EmbeddedNatsCluster:
    """`size` nats-server nodes with JetStream, clustered as `cluster_name` on 127.0.0.1.

    Node `i` (1-based) is named `<name_prefix>-<i>`, keeps its store in `store_dir/<name>` and
    its log in `log_dir/<name>.log` (default: in its store), and routes to every other node.
    A node stopped or killed comes back with `restart(name)` on the same ports and store, so it
    rejoins and catches up. `start()` returns once the cluster has elected a JetStream meta
    leader that sees every other node current (streams can be created, and the group can elect
    again when a node dies); `stop()` stops every node. Use it as a context manager, or
    call `start()` and `stop()` yourself.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        store_dir: str | os.PathLike[str],
        log_dir: str | os.PathLike[str] | None = None,
        cluster_name: str = "nvcf-local",
        name_prefix: str = "nats",
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        executable: str | os.PathLike[str] | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        if size < 1:
            raise NatsServerError(f"a NATS cluster needs at least 1 node, not {size}")
        self._store_dir = Path(store_dir)
        self._start_timeout = start_timeout
        self._cluster_name = cluster_name
        taken: set[int] = set()
        cluster_ports = [_free_port(taken) for _ in range(size)]
        self._nodes: dict[str, EmbeddedNatsServer] = {}
        for index, cluster_port in enumerate(cluster_ports):
            name = f"{name_prefix}-{index + 1}"
            routes = ",".join(
                f"nats://{_HOST}:{port}" for port in cluster_ports if port != cluster_port
            )
            self._nodes[name] = EmbeddedNatsServer(
                store_dir=self._store_dir / name,
                log_file=None if log_dir is None else Path(log_dir) / f"{name}.log",
                server_name=name,
                max_payload=max_payload,
                executable=executable,
                start_timeout=start_timeout,
                extra_args=[
                    "--cluster",
                    f"nats://{_HOST}:{cluster_port}",
                    "--cluster_name",
                    cluster_name,
                    "--routes",
                    routes,
                ],
            )

    # -- the nodes ------------------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self._nodes)

    @property
    def names(self) -> list[str]:
        """The nodes' server names, in order."""
        return list(self._nodes)

    @property
    def nodes(self) -> dict[str, EmbeddedNatsServer]:
        """Every node by server name (a copy of the mapping; the servers themselves)."""
        return dict(self._nodes)

    def node(self, name: str) -> EmbeddedNatsServer:
        """The node called `name`; NatsServerError naming the known ones otherwise."""
        try:
            return self._nodes[name]
        except KeyError:
            raise NatsServerError(
                f"no node {name!r} in this cluster (nodes: {', '.join(self._nodes)})"
            ) from None

    @property
    def urls(self) -> list[str]:
        """The client URL of every node (known once started), in node order."""
        return [node.url for node in self._nodes.values()]

    @property
    def url(self) -> str:
        """The client URLs joined by commas: what `NVCF_FQDN_NATS` and `--nats` take."""
        return ",".join(self.urls)

    @property
    def running(self) -> list[str]:
        """The names of the nodes whose process is alive."""
        return [name for name, node in self._nodes.items() if node.running]

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Start every node, then wait until the cluster has a JetStream meta leader.

        Raises NatsServerError (with the failing node's log) when a node does not start or no
        leader is elected within `timeout` (default `start_timeout`) seconds; every node started
        is stopped first.
        """
        limit = timeout or self._start_timeout
        deadline = time.monotonic() + limit
        try:
            for node in self._nodes.values():
                node.start(timeout=max(1.0, deadline - time.monotonic()))
            self.wait_for_meta_leader(max(1.0, deadline - time.monotonic()), every_node=True)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every node (SIGTERM, then SIGKILL after `timeout` s); stores are kept."""
        errors: list[NatsServerError] = []
        for node in reversed(self._nodes.values()):
            try:
                node.stop(timeout=timeout)
            except NatsServerError as error:
                errors.append(error)
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Stop every node (stores are kept: `store_dir` belongs to the caller)."""
        self.stop()

    def __enter__(self) -> EmbeddedNatsCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedNatsCluster {self._cluster_name} running={self.running}>"

    def stop_node(self, name: str, timeout: float = 10.0) -> None:
        """Stop one node gracefully (SIGTERM; its leaderships move before it exits)."""
        self.node(name).stop(timeout=timeout)

    def kill_node(self, name: str) -> int | None:
        """SIGKILL one node, as a crash would; returns the pid it had (None: not running)."""
        node = self.node(name)
        pid = node.pid
        node.kill()
        return pid

    def restart_node(self, name: str, timeout: float | None = None) -> EmbeddedNatsServer:
        """Start a stopped or killed node again on its ports and store (stopping it first if it
        still runs); return once it answers its JetStream health check."""
        node = self.node(name)
        node.stop()
        node.start(timeout=timeout or self._start_timeout)
        return node

    # -- who leads ------------------------------------------------------------------------------

    def jsz(self, name: str, query: str = "") -> dict[str, Any]:
        """One node's `/jsz` document (`query`, e.g. `streams=true&consumers=true`)."""
        node = self.node(name)
        url = f"{node.monitor_url}/jsz" + (f"?{query}" if query else "")
        try:
            with _DIRECT.open(url, timeout=2.0) as response:
                document: dict[str, Any] = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as error:
            raise NatsServerError(f"cannot read {url}: {error}") from error
        return document

    def meta_leader(self, *, every_node: bool = False) -> str | None:
        """The node that leads the JetStream meta group now (as a running node reports it;
        the first that knows one), or None while there is none. With `every_node`, only a
        leader that sees every other node as a current follower counts: a group that has just
        formed may not know all its peers yet, and could not elect again without them."""
        for name in self.running:
            try:
                meta = self.jsz(name).get("meta_cluster") or {}
            except NatsServerError:
                continue
            leader = meta.get("leader")
            if not leader:
                continue
            if every_node:
                try:
                    meta = self.jsz(str(leader)).get("meta_cluster") or {}
                except NatsServerError:
                    continue
                current = [p for p in meta.get("replicas") or () if p.get("current")]
                if len(current) < self.size - 1:
                    continue
            return str(leader)
        return None

    def wait_for_meta_leader(self, timeout: float = 30.0, *, every_node: bool = False) -> str:
        """Wait until the cluster has a JetStream meta leader (with `every_node`: one that sees
        every other node current, as `start()` waits for) and return its name; raises
        NatsServerError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self.meta_leader(every_node=every_node)
            if leader is not None:
                return leader
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"the NATS cluster elected no JetStream meta leader within {timeout:g} s "
                    f"(running: {', '.join(self.running) or 'none'})"
                )
            time.sleep(_POLL_INTERVAL)

    def stream_leader(self, stream: str) -> str | None:
        """The node that leads `stream` now (as a running node hosting it reports it), or None
        while it has no leader or does not exist."""
        for name in self.running:
            try:
                document = self.jsz(name, "streams=true")
            except NatsServerError:
                continue
            for account in document.get("account_details") or ():
                for detail in account.get("stream_detail") or ():
                    if detail.get("name") != stream:
                        continue
                    leader = (detail.get("cluster") or {}).get("leader")
                    if leader:
                        return str(leader)
        return None

    def wait_for_stream_leader(
        self, stream: str, timeout: float = 30.0, *, other_than: str | None = None
    ) -> str:
        """Wait until `stream` has a leader (one that is not `other_than`, when given: a new
        election after that node died) and return its name; NatsServerError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            leader = self.stream_leader(stream)
            if leader is not None and leader != other_than and leader in self.running:
                return leader
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"stream {stream!r} has no leader{'' if other_than is None else ' but ' + other_than} "
                    f"after {timeout:g} s (running: {', '.join(self.running) or 'none'})"
                )
            time.sleep(_POLL_INTERVAL)
