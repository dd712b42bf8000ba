"""The Kubernetes backend against a real API server: only where one is given.

No cluster is reachable where this project's CI runs, so this module is skipped there; point it
at one with `NVCF_TEST_KUBECONFIG` (a kubeconfig file) and `NVCF_TEST_UTILS_IMAGE` (the utils
sidecar image, docker/sidecar.Dockerfile, pullable by the cluster). It creates one worker pod in
`NVCF_TEST_NAMESPACE` (default `nvcf-test`, which must exist), watches it, and deletes it.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest

from nvcf_platform.backends.instance import InstanceState
from nvcf_platform.backends.kubernetes.settings import KubernetesSettings

from .conftest import make_plan

pytestmark = [
    pytest.mark.skipif(
        not os.environ.get("NVCF_TEST_KUBECONFIG") or not os.environ.get("NVCF_TEST_UTILS_IMAGE"),
        reason="no Kubernetes API server here (set NVCF_TEST_KUBECONFIG and "
        "NVCF_TEST_UTILS_IMAGE to run against one)",
    ),
    pytest.mark.timeout(300),
]


async def wait_state(backend: Any, instance_id: str, states: set[InstanceState]) -> Any:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        [status] = [s for s in backend.instances() if s.instance_id == instance_id]
        if status.state in states:
            return status
        await asyncio.sleep(1)
    raise AssertionError(f"{instance_id} never reached {states}")


async def test_an_instance_is_a_pod_that_the_watch_follows_until_it_is_deleted() -> None:
    module = pytest.importorskip("nvcf_platform.backends.kubernetes.backend")
    settings = KubernetesSettings.from_mapping(
        {
            "namespace": os.environ.get("NVCF_TEST_NAMESPACE", "nvcf-test"),
            "utilsImage": os.environ["NVCF_TEST_UTILS_IMAGE"],
            "grpcUrl": "http://nvcf-platform.invalid:9090",
            "natsUrl": "nats://nvcf-nats.invalid:4222",
            "kubeconfig": os.environ["NVCF_TEST_KUBECONFIG"],
        }
    )
    plan = make_plan(
        {"containerImage": os.environ.get("NVCF_TEST_FUNCTION_IMAGE", "nginx:1.27")},
        gpu="CPU",
        instance_type="LOCAL.CPU",
    )
    async with module.KubernetesBackend(settings, region="test") as backend:
        started = await backend.start(plan)
        assert started.state is InstanceState.STARTING
        # The pod exists and the watch sees it; it cannot become ready (no platform to reach).
        await asyncio.sleep(5)
        [seen] = backend.instances(plan.function_version_id)
        assert seen.state in {InstanceState.STARTING, InstanceState.FAILED}
        await backend.stop(plan.instance_id, drain=False)
        ended = await wait_state(backend, plan.instance_id, {InstanceState.TERMINATED})
        assert ended.state is InstanceState.TERMINATED
