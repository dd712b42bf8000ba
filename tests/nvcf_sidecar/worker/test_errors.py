"""One exception hierarchy: every exception class of the worker package derives from WorkerError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import nvcf_sidecar.worker
from nvcf_sidecar.worker.config import ConfigError
from nvcf_sidecar.worker.errors import WorkerError


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined (not imported) in a module of nvcf_sidecar.worker."""
    found: dict[str, type[BaseException]] = {}
    for module_info in pkgutil.walk_packages(
        nvcf_sidecar.worker.__path__, prefix=f"{nvcf_sidecar.worker.__name__}."
    ):
        module = importlib.import_module(module_info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_every_worker_exception_derives_from_worker_error() -> None:
    classes = _exception_classes()
    # The scan must see the package's errors, or the check below proves nothing.
    assert {
        "nvcf_sidecar.worker.errors.WorkerError",
        "nvcf_sidecar.worker.binding.BindFailed",
        "nvcf_sidecar.worker.pull.PullFailed",
        "nvcf_sidecar.worker.api_client.ApiError",
        "nvcf_sidecar.worker.attach.AttachError",
        "nvcf_sidecar.worker.config.ConfigError",
        "nvcf_sidecar.worker.forward.ContainerCallError",
        "nvcf_sidecar.worker.nats_connection.NatsUnavailable",
        "nvcf_sidecar.worker.sidecar.StartupError",
    } <= set(classes)
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, WorkerError))
    assert outside == []


def test_config_error_is_still_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, WorkerError)
