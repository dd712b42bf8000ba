"""The Kubernetes backend: instances as worker pods (`backend.KubernetesBackend`, which needs the
`kubernetes` extra), built by `pod.instance_pod` from `settings.KubernetesSettings`.

The package imports no Kubernetes client itself, so the pod manifests can be built and checked
without one installed.
"""

from nvcf_platform.backends.kubernetes.pod import gpu_count, instance_pod, secrets_object
from nvcf_platform.backends.kubernetes.settings import KubernetesSettings
from nvcf_platform.backends.kubernetes.states import pod_state

__all__ = ["KubernetesSettings", "gpu_count", "instance_pod", "pod_state", "secrets_object"]
