"""An instance's state from its pod, as the control plane counts instances (reference §5, §7.2):
RUNNING once the pod is Ready (the utils container's readiness: the function answers its health
check and the worker is connected), FAILED when Kubernetes cannot run it or it keeps crashing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from nvcf_platform.backends.instance import InstanceState

__all__ = ["CRASH_RESTARTS", "pod_state"]

CRASH_RESTARTS: Final = 3
"""Restarts of a container in CrashLoopBackOff before the instance counts as FAILED (the
local backend's restart budget)."""
# A container waiting for one of these will not start without a change to the function.
_HOPELESS: Final = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def pod_state(pod: Mapping[str, Any]) -> tuple[InstanceState, str | None]:
    """(state, why FAILED) of an instance from its pod object (as the API returns it)."""
    metadata = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if metadata.get("deletionTimestamp"):
        return InstanceState.STOPPING, None
    phase = status.get("phase")
    if phase in ("Failed", "Succeeded"):
        reason = status.get("reason") or phase
        message = status.get("message") or "the pod ended"
        return InstanceState.FAILED, f"pod {phase}: {reason}: {message}"
    for container in status.get("containerStatuses") or ():
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        restarts = int(container.get("restartCount") or 0)
        crash_loop = reason == "CrashLoopBackOff" and restarts >= CRASH_RESTARTS
        if reason in _HOPELESS or crash_loop:
            detail = waiting.get("message") or _last_exit(container)
            text = f"container {container.get('name')}: {reason}"
            return InstanceState.FAILED, f"{text}: {detail}" if detail else text
    for condition in status.get("conditions") or ():
        if condition.get("type") == "Ready" and condition.get("status") == "True":
            return InstanceState.RUNNING, None
    unschedulable = _unschedulable(status)
    if unschedulable is not None:
        return InstanceState.STARTING, unschedulable
    return InstanceState.STARTING, None


def _last_exit(container: Mapping[str, Any]) -> str:
    ended = (container.get("lastState") or {}).get("terminated") or {}
    if not ended:
        return ""
    return f"last exit {ended.get('exitCode')} ({ended.get('reason') or 'no reason'})"


def _unschedulable(status: Mapping[str, Any]) -> str | None:
    """Why the scheduler has not placed the pod yet (kept as a note, not a failure: a node may
    come, e.g. from a cluster autoscaler)."""
    for condition in status.get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"not scheduled: {condition.get('reason')}: {condition.get('message')}"
    return None
