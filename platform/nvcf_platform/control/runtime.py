"""`ControlRuntime`: the control plane's parts as one async resource inside `PlatformService`.

Opens, in order: the KV store (and loads the stored versions), the instance backend, the
reconcile loop; closes in reverse, so instances stop (drained) before the platform does.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client

from nvcf_platform.backends.images import ImageCatalog
from nvcf_platform.backends.kubernetes.settings import KubernetesSettings
from nvcf_platform.backends.local import LocalBackend
from nvcf_platform.backends.plan import InstancePlan
from nvcf_platform.control.autoscaler import Autoscaler
from nvcf_platform.control.catalog import Catalog, detect_catalog
from nvcf_platform.control.metrics import ControlMetrics
from nvcf_platform.control.plane import ControlPlane
from nvcf_platform.control.problems import ControlError
from nvcf_platform.control.reconciler import Reconciler
from nvcf_platform.control.records import VersionRecord
from nvcf_platform.control.registry import FunctionVersion, Registry
from nvcf_platform.control.store import ControlStore
from nvcf_platform.errors import ConfigError, PlatformError
from nvcf_platform.invocation.exchange import refused
from nvcf_platform.invocation.queues import QueueInspector
from nvcf_platform.invocation.workqueue import WorkQueue
from nvcf_platform.settings import PlatformSettings

if TYPE_CHECKING:
    from nvcf_platform.backends.kubernetes.backend import KubernetesBackend

__all__ = ["ControlRuntime", "instance_plan"]


def instance_plan(record: VersionRecord, spec: dict[str, Any], instance_id: str) -> InstancePlan:
    """What the backend needs to run one instance of `record` under GPU specification `spec`."""
    return InstancePlan(
        instance_id=instance_id,
        function_id=record.function_id,
        function_version_id=record.version_id,
        function_name=record.name,
        nca_id=record.nca_id,
        deployment_id="" if record.deployment is None else record.deployment.deployment_id,
        gpu_specification_id=str(spec.get("gpuSpecificationId", "")),
        gpu=str(spec.get("gpu", "")),
        instance_type=str(spec.get("instanceType", "")),
        definition=record.definition,
        max_request_concurrency=int(spec.get("maxRequestConcurrency", 1)),
        max_instances=int(spec.get("maxInstances", 1)),
    )


def kubernetes_backend(settings: KubernetesSettings, *, region: str) -> KubernetesBackend:
    """The Kubernetes backend; ConfigError if the client library (extra `kubernetes`) is not
    installed."""
    try:
        from nvcf_platform.backends.kubernetes.backend import KubernetesBackend
    except ImportError as error:
        raise ConfigError(
            f"--kubernetes needs kubernetes_asyncio: pip install 'nvcf-worker[kubernetes]' "
            f"({error})"
        ) from None
    return KubernetesBackend(settings, region=region)


class ControlRuntime:
    """`async with ControlRuntime(...)`: stored versions loaded, instances reconciled inside;
    leaving it stops the reconcile loop, then every instance (drained)."""

    def __init__(
        self,
        settings: PlatformSettings,
        registry: Registry,
        nc: Client,
        queue: WorkQueue,
        *,
        grpc_url: str,
        catalog: Catalog | None = None,
        images: ImageCatalog | None = None,
    ) -> None:
        if images is None:
            path = settings.images_path
            images = ImageCatalog() if path is None else ImageCatalog.from_toml(path)
        kube = None
        if settings.kubernetes_path is not None:
            kube = KubernetesSettings.from_file(settings.kubernetes_path)
            if catalog is None and kube.gpus:
                catalog = Catalog.from_mapping(kube.gpus, cluster_group_name=kube.cluster_group)
        self._settings = settings
        self._store = ControlStore(nc, replicas=settings.replicas)
        self._loaded = False
        self._own_work_dir = settings.instances_dir is None
        self._work_dir = settings.instances_dir or Path(tempfile.mkdtemp(prefix="nvcf-instances-"))
        self.plane = ControlPlane(
            registry,
            self._store,
            catalog or detect_catalog(),
            nca_id=settings.nca_id,
            provision=queue.provision,
        )
        backlog = QueueInspector(nc, region=settings.region).backlog
        self.backend: LocalBackend | KubernetesBackend = (
            LocalBackend(
                images,
                grpc_url=grpc_url,
                nats_url=settings.nats_url,
                work_dir=self._work_dir,
                region=settings.region,
                restart_budget=settings.instance_restarts,
            )
            if kube is None
            else kubernetes_backend(kube, region=settings.region)
        )
        self.reconciler = Reconciler(
            self.plane,
            self.backend,
            instance_plan,
            remove_queue=queue.remove,
            queue_backlog=backlog,
            interval=settings.reconcile_interval,
            deploy_timeout=settings.deploy_timeout,
            drain_timeout=settings.undeploy_drain_timeout,
            region=settings.region,
        )
        self.plane.attach(self.reconciler)
        self.metrics = ControlMetrics()
        self.autoscaler = Autoscaler(
            self.plane.records,
            backlog=backlog,
            live_instances=self.reconciler.live,
            ready_instances=self.reconciler.ready,
            on_change=self.reconciler.wake,
            metrics=self.metrics,
            interval=settings.autoscale_interval,
            scale_down_cooldown=settings.scale_down_cooldown,
            idle_timeout=settings.idle_timeout,
        )
        self.reconciler.autoscaler = self.autoscaler
        self.plane.on_invocation = self.autoscaler.note_invocation
        self._stack: AsyncExitStack | None = None

    @property
    def store(self) -> ControlStore:
        return self._store

    def invocation_resolver(self) -> Callable[[str, str | None], FunctionVersion]:
        """For pexec: the version an invocation reaches, or the invocation service's refusal
        (404 not deployed, 400 DEGRADED)."""
        plane = self.plane

        def resolve(function_id: str, version_id: str | None) -> FunctionVersion:
            try:
                return plane.resolve(function_id, version_id)
            except ControlError as error:
                raise refused(error.status, error.detail) from None

        return resolve

    async def provision(self) -> None:
        """Create the KV bucket unless it exists (start-up and after reconnects)."""
        await self._store.provision()

    async def load(self) -> None:
        """Provision the KV bucket and register the stored versions (idempotent): done before
        the platform listens, so that a restarted platform never answers a deployed function's
        call with 404 while it starts."""
        if self._loaded:
            return
        await self._store.provision()
        if self._settings.control_state:
            await self.plane.load()
        self._loaded = True

    async def __aenter__(self) -> ControlRuntime:
        if self._stack is not None:
            raise PlatformError("the control plane is already running")
        async with AsyncExitStack() as stack:
            if self._own_work_dir:
                stack.callback(shutil.rmtree, self._work_dir, ignore_errors=True)
            await self.load()
            await stack.enter_async_context(self.backend)
            await stack.enter_async_context(self.reconciler)
            await stack.enter_async_context(self.autoscaler)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
