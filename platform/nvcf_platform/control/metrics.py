"""The control plane's Prometheus metrics, in a registry of the platform's own (several platforms
may share a test process): desired and ready instances per version, scaling decisions."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from nvcf_platform.control.records import VersionRecord

__all__ = ["ControlMetrics"]

_LABELS = ("function_id", "function_version_id", "function_name")


class ControlMetrics:
    """`nvcf_platform_instances_desired`, `..._ready` and `nvcf_platform_scaling_decisions_total`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.desired = Gauge(
            "nvcf_platform_instances_desired",
            "Instances a deployed version should have now (minimum, or the autoscaler's count).",
            _LABELS,
            registry=self.registry,
        )
        self.ready = Gauge(
            "nvcf_platform_instances_ready",
            "Instances of a deployed version that are running (ready to serve).",
            _LABELS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "nvcf_platform_scaling_decisions",
            "Autoscaler decisions that changed a version's desired instances, by direction.",
            ("direction",),
            registry=self.registry,
        )
        self._labels: dict[str, tuple[str, str, str]] = {}

    def set_instances(self, record: VersionRecord, *, desired: int, ready: int) -> None:
        labels = (record.function_id, record.version_id, record.name)
        self._labels[record.version_id] = labels
        self.desired.labels(*labels).set(desired)
        self.ready.labels(*labels).set(ready)

    def forget(self, version_id: str) -> None:
        labels = self._labels.pop(version_id, None)
        if labels is not None:
            self.desired.remove(*labels)
            self.ready.remove(*labels)

    def exposition(self) -> bytes:
        """The text format a Prometheus scrape reads."""
        return generate_latest(self.registry)
