"""The control plane's instance backends: what runs the instances of a deployed function version.

`LocalBackend` runs them as child processes of the platform (server + utils sidecar), with the
images and models of a local `ImageCatalog`; `InstancePlan` is what the control plane hands over.
"""

from nvcf_platform.backends.errors import (
    BackendError,
    ImageNotFound,
    InstanceNotFound,
    ModelNotFound,
)
from nvcf_platform.backends.images import ImageCatalog, ImageEntry, ModelEntry
from nvcf_platform.backends.instance import InstanceState, InstanceStatus
from nvcf_platform.backends.local import LocalBackend
from nvcf_platform.backends.plan import HealthCheck, InstancePlan, ModelRef

__all__ = [
    "BackendError",
    "HealthCheck",
    "ImageCatalog",
    "ImageEntry",
    "ImageNotFound",
    "InstanceNotFound",
    "InstancePlan",
    "InstanceState",
    "InstanceStatus",
    "LocalBackend",
    "ModelEntry",
    "ModelNotFound",
    "ModelRef",
]
