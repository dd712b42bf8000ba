"""What every backend checks of a plan before it runs one: the definition readable, no Helm
chart (no backend here installs charts), an image or models to run, ids that are UUIDs. Each
problem is the control plane's 400 naming the key, as NVCF answers a deployment it cannot run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import TypeVar

from nvcf_platform.backends.errors import BackendError
from nvcf_platform.backends.plan import InstancePlan, ModelRef
from nvcf_platform.control.problems import ControlError

__all__ = ["checked_definition", "read"]

_T = TypeVar("_T")


def read(plan: InstancePlan, reader: Callable[[], _T]) -> _T:
    """A definition reading, its BackendError as 400."""
    try:
        return reader()
    except BackendError as error:
        raise ControlError(400, f"function definition: {error}") from None


def checked_definition(plan: InstancePlan, backend: str) -> tuple[str | None, list[ModelRef]]:
    """The plan's `containerImage` and `models[]`, once everything a backend reads is checked."""
    chart = read(plan, lambda: plan.helm_chart)
    if chart is not None:
        raise ControlError(
            400, f"the {backend} backend cannot run Helm chart functions: {chart} (helmChart)"
        )
    image = read(plan, lambda: plan.container_image)
    models = read(plan, lambda: plan.models)
    read(plan, lambda: (plan.container_args, plan.container_environment, plan.secrets))
    read(plan, lambda: plan.health)
    if image is None and not models:
        raise ControlError(400, "the function names neither a containerImage nor models")
    for field, value in (
        ("function_id", plan.function_id),
        ("function_version_id", plan.function_version_id),
    ):
        try:
            uuid.UUID(value)
        except ValueError:
            raise ControlError(400, f"{field} {value!r} is not a UUID") from None
    return image, models
