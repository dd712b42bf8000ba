"""NATS names and JetStream settings of the queue, polling, cancel and tracking paths."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from nats.js.api import AckPolicy, DiscardPolicy, RetentionPolicy, StorageType

from nvcf_sidecar.protocol import (
    DEFAULT_PLACEMENT_TAG_KEY,
    InvalidSubjectToken,
    cancel_subject,
    consumer_name,
    polling_subject,
    request_consumer_config,
    request_stream_config,
    request_stream_name,
    request_subject,
    request_subject_filter,
    tracking_stream_config,
    tracking_stream_name,
    tracking_subject,
    tracking_subject_filter,
)

REGION = "us-east-1"
FVID = "0b6d7a7e-9c3f-4a55-8a57-3c0e4e0f6a11"
REQID = "4f1c9a2e-7b7d-4b8e-9a0c-2d3e4f5a6b7c"


def test_queue_names() -> None:
    assert request_stream_name(REGION, FVID) == f"rq_us-east-1_{FVID}"
    assert request_subject_filter(REGION, FVID) == f"rq.us-east-1.{FVID}.>"
    assert request_subject(REGION, FVID, REQID) == f"rq.us-east-1.{FVID}.{REQID}"
    assert consumer_name(REGION, FVID) == f"rq_us-east-1_{FVID}_workers"


def test_core_nats_subjects() -> None:
    assert polling_subject(REQID) == f"rq_polling.{REQID}"
    assert cancel_subject(FVID) == f"nvcf.cancel.{FVID}"


def test_tracking_names() -> None:
    assert tracking_stream_name(REGION) == "requestToFunctionVersion_us-east-1"
    assert tracking_subject_filter(REGION) == "requestToFunctionVersion.us-east-1.>"
    assert tracking_subject(REGION, REQID) == f"requestToFunctionVersion.us-east-1.{REQID}"


BAD_TOKENS = ["", "a.b", "a*", ">", "a b", "a\tb", "a\nb", "\u00a0x", "a\x00b"]


@pytest.mark.parametrize("bad", BAD_TOKENS)
@pytest.mark.parametrize(
    "build",
    [
        lambda bad: request_stream_name(bad, FVID),
        lambda bad: request_stream_name(REGION, bad),
        lambda bad: request_subject(REGION, FVID, bad),
        lambda bad: request_subject_filter(bad, FVID),
        lambda bad: consumer_name(REGION, bad),
        lambda bad: polling_subject(bad),
        lambda bad: cancel_subject(bad),
        lambda bad: tracking_subject(REGION, bad),
        lambda bad: tracking_stream_name(bad),
    ],
)
def test_tokens_that_would_change_a_subject_are_refused(
    build: Callable[[str], str], bad: str
) -> None:
    with pytest.raises(InvalidSubjectToken) as caught:
        build(bad)
    assert caught.value.value == bad
    assert repr(bad) in str(caught.value)


@pytest.mark.parametrize("bad", ["a/b", "a\\b"])
def test_path_separators_are_refused_in_names_but_fine_in_request_ids(bad: str) -> None:
    with pytest.raises(InvalidSubjectToken, match="region"):
        request_stream_name(bad, FVID)
    with pytest.raises(InvalidSubjectToken, match="function version id"):
        consumer_name(REGION, bad)
    assert polling_subject(bad) == f"rq_polling.{bad}"


def test_request_stream_config_matches_the_api() -> None:
    config = request_stream_config(REGION, FVID)

    assert config.name == f"rq_us-east-1_{FVID}"
    assert config.subjects == [f"rq.us-east-1.{FVID}.>"]
    assert config.retention is RetentionPolicy.WORK_QUEUE
    assert config.discard is DiscardPolicy.NEW
    assert config.max_msgs == 100_000
    assert config.max_msgs_per_subject == 1
    assert config.discard_new_per_subject is True
    assert config.max_msg_size == 6 * 1024 * 1024
    assert config.allow_direct is True
    assert config.duplicate_window == 5.0
    assert config.storage is StorageType.MEMORY
    assert config.num_replicas == 1
    assert config.placement is None
    assert config.consumer_limits is not None
    assert config.consumer_limits.max_ack_pending == 100_000
    wire = config.as_dict()
    assert wire["duplicate_window"] == 5_000_000_000  # nanoseconds on the JetStream API


def test_request_stream_placement_and_overrides() -> None:
    config = request_stream_config(
        REGION,
        FVID,
        replicas=3,
        storage=StorageType.FILE,
        max_messages=10,
        max_bytes=1 << 30,
        placement_tag_key=DEFAULT_PLACEMENT_TAG_KEY,
    )
    assert config.placement is not None
    assert config.placement.tags == ["aws-region:us-east-1"]
    assert (config.num_replicas, config.storage, config.max_msgs, config.max_bytes) == (
        3,
        StorageType.FILE,
        10,
        1 << 30,
    )


def test_request_consumer_config_matches_the_api() -> None:
    config = request_consumer_config(REGION, FVID)
    assert config.durable_name == f"rq_us-east-1_{FVID}_workers"
    assert config.ack_policy is AckPolicy.EXPLICIT
    assert config.ack_wait == 30.0
    assert config.max_ack_pending == 100_000
    assert config.max_waiting == 100_000
    assert config.as_dict()["ack_wait"] == 30_000_000_000


def test_tracking_stream_config() -> None:
    config = tracking_stream_config(REGION)
    assert config.name == "requestToFunctionVersion_us-east-1"
    assert config.subjects == ["requestToFunctionVersion.us-east-1.>"]
    assert config.retention is RetentionPolicy.LIMITS
    assert config.discard is DiscardPolicy.NEW
    assert config.max_msgs_per_subject == 1
    assert config.discard_new_per_subject is False  # a later 202 replaces the record
    assert config.max_age == 3600.0
    assert config.storage is StorageType.MEMORY
    assert config.allow_direct is True
