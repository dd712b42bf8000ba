"""The environment NVCF gives an instance's two containers, from its plan (reference §7.1, §7.2):
what the function container sees of the platform, and NVIDIA's utils-container variables.

Every backend sets these the same way; the addresses (NATS, gRPC, health port, directories)
are each backend's own.
"""

from __future__ import annotations

import shlex

from nvcf_platform.backends.plan import InstancePlan

__all__ = ["platform_variables", "utils_variables"]


def platform_variables(
    plan: InstancePlan, *, region: str, backend: str, environment: str
) -> dict[str, str]:
    """What NVCA's downward API gives the inference container (these win over the function's
    own `containerEnvironment`)."""
    return {
        "NVCF_REGION": region,
        "NVCF_INSTANCETYPE": plan.instance_type,
        "NVCF_INSTANCETYPE_VALUE": plan.instance_type,
        "NVCF_BACKEND": backend,
        "NVCF_ENV": environment,
        "NVCF_NCA_ID": plan.nca_id,
        "NVCF_FUNCTION_ID": plan.function_id,
        "NVCF_FUNCTION_VERSION_ID": plan.function_version_id,
        "NVCF_FUNCTION_NAME": plan.function_name,
    }


def utils_variables(plan: InstancePlan, image: str | None) -> dict[str, str]:
    """NVIDIA's utils-container variables that follow from the function definition and the
    placement: ids, instance type, the inference container and its health check. `image` is the
    function's containerImage (None: a models-only function, served by Triton)."""
    health = plan.health
    grpc_health = health.protocol.upper() == "GRPC"
    env = {
        "NCA_ID": plan.nca_id,
        "NVCF_INSTANCE_ID": plan.instance_id,
        "INSTANCE_TYPE": plan.instance_type,
        "GPU_NAME": plan.gpu,
        "INFERENCE_CONTAINER": image or "tritonserver",
        "INFERENCE_CONTAINER_ARGS": shlex.join(plan.container_args),
        "INFERENCE_URL": plan.inference_url,
        "INFERENCE_HEALTH_PROTOCOL": "gRPC" if grpc_health else "HTTP",
        "INFERENCE_PROTOCOL": "GRPC" if grpc_health else "REST",
    }
    if health.timeout:
        env["INFERENCE_HEALTH_TIMEOUT"] = health.timeout
    if health.expected_status_code:
        env["INFERENCE_HEALTH_EXPECTED_RESPONSE_CODE"] = str(health.expected_status_code)
    return env
