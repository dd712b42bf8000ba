"""An instance's state from its pod, as the API shows it (pure logic: pod documents in, states
out), and the backend's bookkeeping of the watch's events."""

from __future__ import annotations

from typing import Any

import pytest

from nvcf_platform.backends.instance import InstanceState
from nvcf_platform.backends.kubernetes.pod import instance_pod
from nvcf_platform.backends.kubernetes.states import pod_state
from nvcf_platform.control.problems import ControlError

from .conftest import make_plan, make_settings


def pod(
    phase: str = "Running",
    *,
    ready: bool = False,
    waiting: str | None = None,
    restarts: int = 0,
    deleting: bool = False,
    scheduled: bool = True,
    reason: str | None = None,
) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    if not scheduled:
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        )
    state: dict[str, Any] = {"running": {}}
    if waiting is not None:
        state = {"waiting": {"reason": waiting, "message": f"{waiting} happened"}}
    document: dict[str, Any] = {
        "metadata": {"name": "0c1d2e3f-a1b2c3d4e5f6"},
        "status": {
            "phase": phase,
            "conditions": conditions,
            "containerStatuses": [
                {"name": "utils", "restartCount": 0, "state": {"running": {}}},
                {"name": "inference", "restartCount": restarts, "state": state},
            ],
        },
    }
    if deleting:
        document["metadata"]["deletionTimestamp"] = "2026-12-06T07:00:00Z"
    if reason is not None:
        document["status"]["reason"] = reason
    return document


@pytest.mark.parametrize(
    ("document", "state", "error"),
    [
        (
            pod("Pending", scheduled=False),
            InstanceState.STARTING,
            "not scheduled: Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
        ),
        (pod("Pending", waiting="ContainerCreating"), InstanceState.STARTING, None),
        (pod(ready=False), InstanceState.STARTING, None),
        (pod(ready=True), InstanceState.RUNNING, None),
        (
            pod("Pending", waiting="ImagePullBackOff"),
            InstanceState.FAILED,
            "container inference: ImagePullBackOff: ImagePullBackOff happened",
        ),
        (
            pod("Pending", waiting="CreateContainerConfigError"),
            InstanceState.FAILED,
            "container inference: CreateContainerConfigError: CreateContainerConfigError happened",
        ),
        (pod(waiting="CrashLoopBackOff", restarts=2), InstanceState.STARTING, None),
        (
            pod(waiting="CrashLoopBackOff", restarts=3),
            InstanceState.FAILED,
            "container inference: CrashLoopBackOff: CrashLoopBackOff happened",
        ),
        (pod(ready=True, deleting=True), InstanceState.STOPPING, None),
        (
            pod("Failed", reason="Evicted"),
            InstanceState.FAILED,
            "pod Failed: Evicted: the pod ended",
        ),
    ],
)
def test_the_state_of_an_instance_follows_its_pod(
    document: dict[str, Any], state: InstanceState, error: str | None
) -> None:
    found, why = pod_state(document)
    assert found is state
    if state is InstanceState.FAILED:
        assert why == error
    elif state is InstanceState.STARTING and not document["status"]["conditions"][-1].get("reason"):
        assert why is None


def test_an_unscheduled_pod_is_starting_with_the_schedulers_reason() -> None:
    state, why = pod_state(pod("Pending", scheduled=False))
    assert state is InstanceState.STARTING
    assert why == (
        "not scheduled: Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    )


@pytest.fixture
def backend() -> Any:
    module = pytest.importorskip("nvcf_platform.backends.kubernetes.backend")
    return module.KubernetesBackend(make_settings(), region="local")


def test_the_backend_follows_the_watch_adopts_old_pods_and_ends_deleted_ones(
    backend: Any,
) -> None:
    plan = make_plan()
    made = instance_pod(plan, make_settings(), region="local")
    made["status"] = pod()["status"]
    backend.observe("ADDED", made)  # a pod made before a restart: adopted
    [status] = backend.instances(plan.function_version_id)
    assert status.instance_id == plan.instance_id
    assert status.state is InstanceState.STARTING
    assert status.plan.gpu_specification_id == plan.gpu_specification_id
    assert backend.instances("another-version") == []

    made["status"] = pod(ready=True)["status"]
    backend.observe("MODIFIED", made)
    assert backend.instances()[0].state is InstanceState.RUNNING
    made["status"] = pod(waiting="ImagePullBackOff")["status"]
    backend.observe("MODIFIED", made)
    [failed] = backend.instances()
    assert failed.state is InstanceState.FAILED
    assert failed.error is not None
    assert "ImagePullBackOff" in failed.error
    backend.observe("DELETED", made)
    assert backend.instances()[0].state is InstanceState.TERMINATED
    backend.observe("MODIFIED", {"metadata": {}})  # no name: ignored


def test_the_backend_refuses_what_it_cannot_run_with_a_400_naming_it(backend: Any) -> None:
    backend.check(make_plan())
    cases: list[tuple[dict[str, Any], str]] = [
        ({"helmChart": "https://helm.ngc.nvidia.com/acme/charts/echo-1.0.tgz"}, "Helm chart"),
        ({"models": [{"name": "echo", "version": "1"}]}, "models[]"),
        ({"containerImage": None}, "neither a containerImage nor models"),
        ({"containerArgs": "'unclosed"}, "containerArgs"),
    ]
    for definition, words in cases:
        with pytest.raises(ControlError) as refused:
            backend.check(make_plan(definition))
        assert refused.value.status == 400
        assert words in refused.value.detail
