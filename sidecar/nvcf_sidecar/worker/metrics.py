"""Prometheus metrics of one sidecar process, in a registry of its own.

Served at `/metrics` on `HEALTH_PORT`; names start with `nvcf_worker_`. Each request ends in
exactly one `Outcome`, counted once.
"""

from __future__ import annotations

import enum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["Outcome", "WorkerMetrics"]

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)


class Outcome(enum.StrEnum):
    """How one invocation ended, from the sidecar's point of view."""

    #: The container answered (any status) and the answer reached the platform.
    DELIVERED = "delivered"
    #: The container could not be reached or failed before a response head; a 500 was sent.
    CONTAINER_ERROR = "container_error"
    #: The sidecar failed before calling the container (directories, assets); a 500 was sent.
    WORKER_ERROR = "worker_error"
    #: The platform refused or lost the attach call; nothing more can be delivered.
    ATTACH_ERROR = "attach_error"
    #: The platform cancelled the request (`nvcf.cancel.<fvid>`) or the caller went away.
    CANCELLED = "cancelled"
    #: The message could not be decoded; it was terminated, never redelivered.
    MALFORMED = "malformed"
    #: Its answer could no longer be delivered (deadline passed, attach token gone, cancelled
    #: before it started): acked without calling the container.
    EXPIRED = "expired"


class WorkerMetrics:
    """The sidecar's metrics; one instance per process (or per test), never global."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "nvcf_worker_requests",
            "Invocations handled, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in Outcome:
            self.requests.labels(outcome.value)  # export zeros so dashboards see every series
        self.in_flight = Gauge(
            "nvcf_worker_requests_in_flight",
            "Invocations holding a concurrency slot.",
            registry=self.registry,
        )
        self.queue_wait = Histogram(
            "nvcf_worker_queue_wait_seconds",
            "From the platform accepting a request (requestTime) to the sidecar starting it.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.container_latency = Histogram(
            "nvcf_worker_container_latency_seconds",
            "From calling the container to its response head.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.attach_errors = Counter(
            "nvcf_worker_attach_errors",
            "Failed attach calls to the platform, by direction (get = request body, post = response).",
            ["direction"],
            registry=self.registry,
        )
        self.naks = Counter(
            "nvcf_worker_naks",
            "Messages handed back for immediate redelivery, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.cancels = Counter(
            "nvcf_worker_cancels",
            "Cancel broadcasts received, by whether they matched an in-flight request.",
            ["matched"],
            registry=self.registry,
        )

        self.container_refusals = Counter(
            "nvcf_worker_container_refusals",
            "Container calls refused (nothing sent) and held until the container was back.",
            registry=self.registry,
        )
        self.container_hold = Histogram(
            "nvcf_worker_container_hold_seconds",
            "How long a refused container call was held before the container took it.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.expired = Counter(
            "nvcf_worker_expired",
            "Work items acked without calling the container, by why their answer could not be "
            "delivered (deadline, token_gone, cancelled).",
            ["reason"],
            registry=self.registry,
        )

        self.health_checks = Counter(
            "nvcf_worker_health_checks",
            "Container health checks, by result (success or failure).",
            ["result"],
            registry=self.registry,
        )
        self.container_healthy = Gauge(
            "nvcf_worker_container_healthy",
            "1 while the last container health check passed, else 0.",
            registry=self.registry,
        )
        self.fetch_errors = Counter(
            "nvcf_worker_fetch_errors",
            "Failed pull requests on the work queue, by region.",
            ["region"],
            registry=self.registry,
        )
        self.keepalive_failures = Counter(
            "nvcf_worker_keepalive_failures",
            "In-progress (+WPI) acknowledgements that could not be sent.",
            registry=self.registry,
        )

        # Compatibility mode: progress, polls, large responses, input assets.
        self.progress_updates = Counter(
            "nvcf_worker_progress_updates",
            "Progress files relayed to the platform as 202 answers.",
            registry=self.registry,
        )
        self.progress_rejected = Counter(
            "nvcf_worker_progress_rejected",
            "Progress files not relayed, by reason (too_large, malformed, unreadable, unknown_request).",
            ["reason"],
            registry=self.registry,
        )
        self.polls = Counter(
            "nvcf_worker_polls",
            "Status polls received on rq_polling.<reqid>, by result (taken, repeated, malformed, "
            "reply_failed).",
            ["result"],
            registry=self.registry,
        )
        self.accepted = Counter(
            "nvcf_worker_accepted_answers",
            "202 answers sent to the platform, by source (progress, generated, container).",
            ["source"],
            registry=self.registry,
        )
        self.large_responses = Counter(
            "nvcf_worker_large_responses",
            "Large responses (zip + 302), by result (uploaded, failed).",
            ["result"],
            registry=self.registry,
        )
        self.large_response_bytes = Counter(
            "nvcf_worker_large_response_bytes",
            "Bytes of zip archives uploaded for large responses.",
            registry=self.registry,
        )
        self.artifacts_refused = Counter(
            "nvcf_worker_artifacts_refused",
            "Files in an output directory left out of a large response, by reason "
            "(partial, symlink, special, outside, unreadable).",
            ["reason"],
            registry=self.registry,
        )
        self.asset_downloads = Counter(
            "nvcf_worker_asset_downloads",
            "Input asset downloads, by result (success, failure).",
            ["result"],
            registry=self.registry,
        )
        self.asset_bytes = Counter(
            "nvcf_worker_asset_bytes",
            "Bytes of input assets downloaded.",
            registry=self.registry,
        )

    def count(self, outcome: Outcome) -> None:
        """Record the end of one invocation."""
        self.requests.labels(outcome.value).inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
