"""JetStream settings of the NVCF work queue, its durable consumer and the tracking stream (reference §2).

The platform creates streams and consumers from these; the worker only binds, never creates.
"""

from __future__ import annotations

from typing import Final

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    Placement,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamConsumerLimits,
)

from nvcf_sidecar.protocol.limits import MAX_MESSAGE_BYTES
from nvcf_sidecar.protocol.subjects import (
    consumer_name,
    request_stream_name,
    request_subject_filter,
    tracking_stream_name,
    tracking_subject_filter,
)

__all__ = [
    "ACK_WAIT_SECONDS",
    "DEFAULT_PLACEMENT_TAG_KEY",
    "DUPLICATE_WINDOW_SECONDS",
    "MAX_ACK_PENDING",
    "MAX_QUEUED_MESSAGES",
    "MAX_WAITING_PULLS",
    "QUEUE_LIMIT_MAX_BYTES",
    "TRACKING_MAX_AGE_SECONDS",
    "request_consumer_config",
    "request_stream_config",
    "tracking_stream_config",
]

MAX_QUEUED_MESSAGES: Final = 100_000
"""Max messages of a work-queue stream; a publish beyond it is rejected (the IS answers 429)."""
DUPLICATE_WINDOW_SECONDS: Final = 5.0
MAX_ACK_PENDING: Final = 100_000
"""Per consumer, and the stream-level consumer limit, as the NVCF API sets them."""
MAX_WAITING_PULLS: Final = 100_000
ACK_WAIT_SECONDS: Final = 30.0
"""Redelivery after this long without an ack or `+WPI` (the worker keeps alive every 10 s)."""
QUEUE_LIMIT_MAX_BYTES: Final = 1024 * 1024 * 1024
"""Max bytes the NVCF API puts on a work-queue stream when its queue-limit flag is on."""
TRACKING_MAX_AGE_SECONDS: Final = 3600.0
DEFAULT_PLACEMENT_TAG_KEY: Final = "aws-region"
"""NVIDIA's placement tag key; servers must carry `<key>:<region>` tags for placement to succeed."""


def _placement(region: str, tag_key: str | None) -> Placement | None:
    return None if tag_key is None else Placement(tags=[f"{tag_key}:{region}"])


def request_stream_config(
    region: str,
    function_version_id: str,
    *,
    replicas: int = 1,
    storage: StorageType = StorageType.MEMORY,
    max_messages: int = MAX_QUEUED_MESSAGES,
    max_bytes: int | None = None,
    placement_tag_key: str | None = None,
) -> StreamConfig:
    """The work-queue stream `rq_<region>_<fvid>` (reference §2.1).

    One message per subject with discard-new-per-subject makes a second publish of the same reqid
    fail instead of queueing twice. Placement is off by default because a tag nobody carries
    makes creation fail; pass `DEFAULT_PLACEMENT_TAG_KEY` to place like NVIDIA's clusters do.
    """
    return StreamConfig(
        name=request_stream_name(region, function_version_id),
        subjects=[request_subject_filter(region, function_version_id)],
        retention=RetentionPolicy.WORK_QUEUE,
        discard=DiscardPolicy.NEW,
        max_msgs=max_messages,
        max_bytes=max_bytes,
        max_msgs_per_subject=1,
        discard_new_per_subject=True,
        max_msg_size=MAX_MESSAGE_BYTES,
        allow_direct=True,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        storage=storage,
        num_replicas=replicas,
        placement=_placement(region, placement_tag_key),
        consumer_limits=StreamConsumerLimits(max_ack_pending=MAX_ACK_PENDING),
    )


def request_consumer_config(region: str, function_version_id: str) -> ConsumerConfig:
    """The durable pull consumer `rq_<region>_<fvid>_workers` as the NVCF API creates it (§2.2).

    Deliver-all, unlimited redelivery and no backoff are left to the server's defaults.
    """
    return ConsumerConfig(
        durable_name=consumer_name(region, function_version_id),
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_SECONDS,
        max_ack_pending=MAX_ACK_PENDING,
        max_waiting=MAX_WAITING_PULLS,
    )


def tracking_stream_config(
    region: str,
    *,
    replicas: int = 1,
    max_messages: int = MAX_QUEUED_MESSAGES,
) -> StreamConfig:
    """The IS's tracking stream `requestToFunctionVersion_<region>` (reference §2.4).

    One message per subject without discard-new-per-subject: a later 202 replaces the record.
    """
    return StreamConfig(
        name=tracking_stream_name(region),
        subjects=[tracking_subject_filter(region)],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW,
        max_msgs=max_messages,
        max_msgs_per_subject=1,
        max_age=TRACKING_MAX_AGE_SECONDS,
        allow_direct=True,
        duplicate_window=DUPLICATE_WINDOW_SECONDS,
        storage=StorageType.MEMORY,
        num_replicas=replicas,
    )
