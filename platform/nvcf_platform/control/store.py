"""The control plane's durable state: one JetStream KV entry per function version.

Bucket `nvcf_control`, file storage, history 1 (replicated as the platform's `--replicas`), key `versions.<versionId>` holding the record as
JSON. The platform reads every entry at start-up and writes through on every change, so a
restarted platform finds its functions, versions and deployments again.
"""

from __future__ import annotations

import logging
from typing import Final

import orjson
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from nvcf_platform.control.records import VersionRecord
from nvcf_platform.errors import NatsUnavailable, PlatformError

__all__ = ["CONTROL_BUCKET", "ControlStore"]

CONTROL_BUCKET: Final = "nvcf_control"
_PREFIX: Final = "versions."
_TIMEOUT: Final = 5.0

_log = logging.getLogger(__name__)


class ControlStore:
    """Reads and writes `VersionRecord`s in the `nvcf_control` KV bucket."""

    __slots__ = ("_kv", "_nc", "_replicas")

    def __init__(self, nc: Client, *, replicas: int = 1) -> None:
        self._nc = nc
        self._replicas = replicas
        self._kv: KeyValue | None = None

    async def provision(self) -> None:
        """Create the bucket unless it exists (idempotent; at start-up and after reconnects)."""
        js = self._nc.jetstream(timeout=_TIMEOUT)
        config = KeyValueConfig(
            bucket=CONTROL_BUCKET, history=1, storage=StorageType.FILE, replicas=self._replicas
        )
        self._kv = await js.create_key_value(config)

    def _bucket(self) -> KeyValue:
        if self._kv is None:
            raise PlatformError("the control store is not provisioned")
        if not self._nc.is_connected:
            raise NatsUnavailable("NATS is not connected")  # at once, not after a timeout
        return self._kv

    async def load(self) -> list[VersionRecord]:
        """Every stored record; an entry that cannot be read is logged and skipped."""
        kv = self._bucket()
        try:
            keys = await kv.keys()
        except NoKeysError:
            return []
        records = []
        for key in keys:
            if not key.startswith(_PREFIX):
                continue
            try:
                entry = await kv.get(key)
                records.append(VersionRecord.from_json(orjson.loads(entry.value or b"")))
            except KeyNotFoundError:
                continue  # deleted meanwhile
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                _log.error(
                    "unreadable control record skipped", extra={"key": key, "error": repr(error)}
                )
        return records

    async def save(self, record: VersionRecord) -> None:
        await self._bucket().put(_PREFIX + record.version_id, orjson.dumps(record.to_json()))

    async def remove(self, version_id: str) -> None:
        await self._bucket().purge(_PREFIX + version_id)
