"""`KubernetesBackend`: a deployment's instances as worker pods in a Kubernetes namespace.

The control plane's reconciler decides how many instances each version needs (its min/max and
the autoscaler) and calls `start`/`stop` per instance, as with the local backend; this backend
creates and deletes one pod per instance (`pod.instance_pod`) and follows every pod it made with
one watch, so `instances()` answers from memory. Pods outlive the platform: after a restart the
first list adopts them (their plan read back from labels and annotations), as NVCA keeps
instances when the API restarts.

Needs `kubernetes_asyncio` (extra `kubernetes`) and, in the namespace, the pod and secret verbs
of the Helm chart's Role (deploy/helm/nvcf).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from types import TracebackType
from typing import Any, Final

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from nvcf_platform.backends.checks import checked_definition
from nvcf_platform.backends.errors import BackendError, InstanceNotFound
from nvcf_platform.backends.instance import InstanceState, InstanceStatus
from nvcf_platform.backends.kubernetes.pod import (
    BACKEND_NAME,
    MANAGED_SELECTOR,
    instance_pod,
    plan_of_pod,
    secrets_object,
)
from nvcf_platform.backends.kubernetes.settings import KubernetesSettings
from nvcf_platform.backends.kubernetes.states import pod_state
from nvcf_platform.backends.plan import InstancePlan
from nvcf_platform.control.problems import ControlError

__all__ = ["KubernetesBackend"]

_log = logging.getLogger(__name__)

_WATCH_SECONDS: Final = 300
"""One watch request's length; the next starts from the last resource version seen."""
_RETRY_INITIAL: Final = 1.0
_RETRY_MAX: Final = 30.0
_STOP_MARGIN: Final = 30.0
"""Beyond the pod's grace period, how long `stop` waits for the pod to be gone."""
_KEPT_TERMINATED: Final = 50


class KubernetesBackend:
    """`async with KubernetesBackend(settings, region=...)`: pods listed and watched inside."""

    name = BACKEND_NAME

    def __init__(self, settings: KubernetesSettings, *, region: str) -> None:
        self.settings = settings
        self.region = region
        self._statuses: dict[str, InstanceStatus] = {}
        self._gone: dict[str, asyncio.Event] = {}
        self._api: client.ApiClient | None = None
        self._core: client.CoreV1Api | None = None
        self._watcher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<KubernetesBackend namespace={self.settings.namespace} pods={len(self._statuses)}>"

    async def __aenter__(self) -> KubernetesBackend:
        """Connect, list the pods of earlier runs (adopted), start the watch. BackendError when
        the API cannot be reached or refuses the list."""
        try:
            self._api = await _api_client(self.settings)
        except (config.ConfigException, OSError) as error:
            raise BackendError(f"no Kubernetes configuration: {error}") from None
        self._core = client.CoreV1Api(self._api)
        try:
            version = await self._resync()
        except (ApiException, OSError, aiohttp.ClientError) as error:
            await self._api.close()
            self._api = self._core = None
            raise BackendError(
                f"cannot list pods in namespace {self.settings.namespace!r}: {error}"
            ) from None
        except BaseException:
            await self._api.close()
            raise
        self._watcher = asyncio.create_task(self._watch(version), name="nvcf-kubernetes-watch")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Stop watching; the pods keep running (a restarted platform adopts them)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        api, self._api, self._core = self._api, None, None
        if api is not None:
            await api.close()

    # -- the backend API ---------------------------------------------------------------------

    def check(self, plan: InstancePlan) -> None:
        """Raise `ControlError(400, ...)` if this backend cannot run `plan`."""
        image, models = checked_definition(plan, self.name)
        if models:
            raise ControlError(
                400,
                "the kubernetes backend cannot fetch models[] into a pod yet "
                "(use the local backend, or an image that holds its models)",
            )
        if image is None:
            raise ControlError(400, "the function names no containerImage")

    async def start(self, plan: InstancePlan) -> InstanceStatus:
        """Create the instance's pod (and its secrets); returns at once, STARTING."""
        core = self._running()
        self.check(plan)
        if plan.instance_id in self._statuses:
            raise ControlError(409, f"instance {plan.instance_id!r} already exists")
        manifest = instance_pod(plan, self.settings, region=self.region)
        namespace = self.settings.namespace
        status = InstanceStatus(plan.instance_id, plan, InstanceState.STARTING)
        self._statuses[plan.instance_id] = status
        self._gone[plan.instance_id] = asyncio.Event()
        try:
            # The client sends a dict body as it is (its stubs only name the model classes).
            created = await core.create_namespaced_pod(namespace, manifest)  # type: ignore[arg-type]
            secret = secrets_object(plan, self.settings, pod_uid=created.metadata.uid)
            if secret is not None:
                await core.create_namespaced_secret(namespace, secret)  # type: ignore[arg-type]
        except (ApiException, aiohttp.ClientError, OSError) as error:
            why = _api_error("create", error) if isinstance(error, ApiException) else repr(error)
            self._set(plan.instance_id, InstanceState.FAILED, f"pod not created: {why}")
            _log.error(
                "instance pod not created", extra={"instance_id": plan.instance_id, "error": why}
            )
            return dataclasses.replace(self._statuses[plan.instance_id])
        _log.info(
            "instance pod created",
            extra={
                "instance_id": plan.instance_id,
                "function_version_id": plan.function_version_id,
                "namespace": namespace,
            },
        )
        return dataclasses.replace(status)

    async def stop(
        self,
        instance_id: str,
        *,
        drain: bool = True,
        timeout: float = 30.0,  # noqa: ASYNC109 - the drain's budget, not a call timeout
    ) -> None:
        """Delete the instance's pod: with `drain`, its grace period lets the utils sidecar
        finish the requests it holds (it drains on SIGTERM); without, 1 s. Returns once the
        pod is gone (or `timeout` plus the grace period passed); the instance is TERMINATED."""
        core = self._running()
        if instance_id not in self._statuses:
            raise InstanceNotFound(instance_id)
        grace = self.settings.termination_grace_period_seconds if drain else 1
        self._set(instance_id, InstanceState.STOPPING)
        try:
            await core.delete_namespaced_pod(
                instance_id, self.settings.namespace, grace_period_seconds=grace
            )
        except ApiException as error:
            if error.status != 404:
                raise BackendError(_api_error("delete", error)) from None
            self._ended(instance_id)
            return
        gone = self._gone.setdefault(instance_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(timeout, grace) + _STOP_MARGIN):
                await gone.wait()
        self._ended(instance_id)

    def instances(self, function_version_id: str | None = None) -> list[InstanceStatus]:
        """The status of every pod (of one version) this backend knows, in start order;
        TERMINATED ones stay listed for a while."""
        return [
            dataclasses.replace(status)
            for status in self._statuses.values()
            if function_version_id is None or status.plan.function_version_id == function_version_id
        ]

    # -- following the pods --------------------------------------------------------------------

    def observe(self, kind: str, pod: dict[str, Any]) -> None:
        """One pod as the API shows it (`kind`: ADDED, MODIFIED or DELETED), as a dict with the
        API's camelCase keys: the instance's state follows it."""
        metadata = pod.get("metadata") or {}
        instance_id = metadata.get("name")
        if not isinstance(instance_id, str):
            return
        if kind == "DELETED":
            if instance_id in self._statuses:
                self._ended(instance_id)
            return
        if instance_id not in self._statuses:  # made before a restart: adopt it
            self._statuses[instance_id] = InstanceStatus(
                instance_id, plan_of_pod(pod), InstanceState.STARTING
            )
            _log.info("instance pod adopted", extra={"instance_id": instance_id})
        current = self._statuses[instance_id]
        if current.state in (InstanceState.STOPPING, InstanceState.TERMINATED):
            return
        state, note = pod_state(pod)
        self._set(instance_id, state, note if state is InstanceState.FAILED else None)

    async def _resync(self) -> str:
        """List every pod of this backend; pods that vanished meanwhile end. Returns the list's
        resource version, where the next watch starts."""
        core = self._running()
        listed = await core.list_namespaced_pod(
            self.settings.namespace, label_selector=MANAGED_SELECTOR
        )
        api = self._api
        assert api is not None
        seen = set()
        for pod in listed.items:
            document = api.sanitize_for_serialization(pod)
            seen.add(document["metadata"]["name"])
            self.observe("MODIFIED", document)
        # A FAILED one stays until the reconciler has seen it (and stops it).
        keep = (InstanceState.TERMINATED, InstanceState.FAILED)
        for instance_id, status in list(self._statuses.items()):
            if instance_id not in seen and status.state not in keep:
                self._ended(instance_id)
        return str(listed.metadata.resource_version or "")

    async def _watch(self, version: str) -> None:
        """Follow the pods from `version` on, for good: a watch that ends starts again, an
        expired version (410) or an error lists again first."""
        core = self._running()
        api = self._api
        assert api is not None
        pause = _RETRY_INITIAL
        while True:
            try:
                async with watch.Watch().stream(
                    core.list_namespaced_pod,
                    self.settings.namespace,
                    label_selector=MANAGED_SELECTOR,
                    resource_version=version,
                    timeout_seconds=_WATCH_SECONDS,
                ) as events:
                    async for event in events:
                        if event["type"] == "ERROR":  # a Status, e.g. 410: version expired
                            raw = event.get("raw_object") or {}
                            code = raw.get("code", 500) if isinstance(raw, dict) else 500
                            raise ApiException(status=code, reason=str(raw)[:200])
                        pod = event["object"]
                        document = api.sanitize_for_serialization(pod)
                        version = document["metadata"].get("resourceVersion") or version
                        self.observe(str(event["type"]), document)
                        pause = _RETRY_INITIAL
            except asyncio.CancelledError:
                raise
            except Exception as error:
                expired = isinstance(error, ApiException) and error.status == 410
                if not expired:
                    _log.warning("pod watch failed; listing again", extra={"error": repr(error)})
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, _RETRY_MAX)
                try:
                    version = await self._resync()
                except Exception as failure:
                    _log.warning("pod list failed", extra={"error": repr(failure)})

    # -- bookkeeping ---------------------------------------------------------------------------

    def _running(self) -> client.CoreV1Api:
        if self._core is None:
            raise BackendError("the kubernetes backend is not running (use `async with`)")
        return self._core

    def _set(self, instance_id: str, state: InstanceState, error: str | None = None) -> None:
        status = self._statuses[instance_id]
        if status.state is state and status.error == error:
            return
        if state is InstanceState.FAILED and status.state is not InstanceState.FAILED:
            _log.warning("instance failed", extra={"instance_id": instance_id, "error": error})
        status.state, status.error, status.updated_at = state, error, time.time()

    def _ended(self, instance_id: str) -> None:
        self._set(instance_id, InstanceState.TERMINATED)
        self._gone.pop(instance_id, asyncio.Event()).set()
        ended = [k for k, s in self._statuses.items() if s.state is InstanceState.TERMINATED]
        for key in ended[: max(0, len(ended) - _KEPT_TERMINATED)]:
            del self._statuses[key]


async def _api_client(settings: KubernetesSettings) -> client.ApiClient:
    """An API client: the kubeconfig named in the settings, else the pod's service account,
    else the default kubeconfig."""
    if settings.kubeconfig is not None:
        await config.load_kube_config(config_file=str(settings.kubeconfig))
    else:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except config.ConfigException:
            await config.load_kube_config()
    return client.ApiClient()


def _api_error(action: str, error: ApiException) -> str:
    body = error.body or ""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    return f"{action} failed: {error.status} {error.reason}: {text[:500]}"
