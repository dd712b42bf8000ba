"""The errors of the instance backends: what cannot be found in the local catalogs, and what
cannot be run.
"""

from __future__ import annotations

from nvcf_platform.errors import PlatformError

__all__ = ["BackendError", "ImageNotFound", "InstanceNotFound", "ModelNotFound"]


class BackendError(PlatformError):
    """Base class of the errors an instance backend raises on purpose."""


class ImageNotFound(BackendError, LookupError):
    """A function's `containerImage` is not in the local image catalog."""

    def __init__(self, image: str) -> None:
        self.image = image
        super().__init__(f"image {image!r} is not in the local image catalog (--images)")


class ModelNotFound(BackendError, LookupError):
    """A function's model (name and version) is not in the local model catalog."""

    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version
        super().__init__(
            f"model {name!r} version {version!r} is not in the local model catalog (--images)"
        )


class InstanceNotFound(BackendError, LookupError):
    """No instance with this id was started by the backend."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(f"no instance {instance_id!r}")
