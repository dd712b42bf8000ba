"""The platform's object store: input assets and large responses in NATS Object Store buckets.

Owns the two buckets and their objects, stored and read back with bounded memory (S3's part in
NVIDIA's NVCF). Presigned URLs are `presign.py`, the `/v2/nvcf/objects/...` routes serving them
`object_routes.py`, and the asset catalog on top of the assets bucket `assets.py`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from nats.aio.client import Client
from nats.js.api import ObjectInfo, ObjectStoreConfig, StorageType
from nats.js.errors import APIError, NotFoundError
from nats.js.object_store import ObjectStore as NatsObjectStore

from nvcf_platform.control.registry import canonical_uuid
from nvcf_platform.errors import (
    InvalidObjectName,
    ObjectCorrupted,
    ObjectNotFound,
    PlatformError,
)
from nvcf_platform.objects.object_writer import DIGEST_PREFIX, ObjectWriter
from nvcf_platform.objects.presign import URL_LIFETIME_SECONDS, UrlSigner

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "MAX_OBJECT_BYTES",
    "OBJECTS_PREFIX",
    "Bucket",
    "ObjectStore",
    "StoredObject",
    "check_nca_id",
    "object_name",
    "object_path",
]

OBJECTS_PREFIX: Final = "/v2/nvcf/objects/"
"""Path prefix of the presigned routes; they need no Authorization header (the URL is the key)."""
ASSET_TTL_SECONDS: Final = 24 * 3600
RESULT_TTL_SECONDS: Final = 3600
MAX_OBJECT_BYTES: Final = 5 * 1024**3
"""Default largest accepted PUT body (S3's single-PUT limit)."""
CHUNK_BYTES: Final = 256 * 1024
"""Chunk size of stored objects; a GET holds one chunk at a time, a PUT a window of them."""
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"
"""The Content-Type of an object stored without one."""
NATS_TIMEOUT: Final = 10.0

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,127}")
_PENDING: Final = "Nvcf-Pending-Upload"
_CONTENT_TYPE: Final = "Content-Type"
_STREAM_NAME_IN_USE: Final = 10058

_log = logging.getLogger(__name__)


class Bucket(StrEnum):
    """The two kinds of objects, as they appear in presigned URLs."""

    ASSETS = "assets"
    RESULTS = "results"


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What the store knows of one object (its NATS meta record)."""

    bucket: Bucket
    name: str
    """`<ncaId>/<assetId or requestId>`."""
    size: int
    content_type: str
    description: str | None
    pending: bool
    """An asset created but not uploaded yet: a placeholder, not an object."""
    modified: str | None
    nuid: str
    chunks: int
    digest: str | None


def object_path(bucket: Bucket, name: str) -> str:
    """The presigned route's path of an object: `/v2/nvcf/objects/<bucket>/<name>`."""
    return f"{OBJECTS_PREFIX}{bucket.value}/{name}"


def object_name(nca_id: str, object_id: str) -> str:
    """`<ncaId>/<objectId>`, both checked to be safe in NATS names and URL paths."""
    _check_name("NCA id", nca_id)
    _check_name("object id", object_id)
    return f"{nca_id}/{object_id}"


def check_nca_id(nca_id: str) -> str:
    """`nca_id` if it can own objects; `InvalidObjectName` otherwise (check it at start-up)."""
    _check_name("NCA id", nca_id)
    return nca_id


def _check_name(what: str, value: str) -> None:
    if not _NAME.fullmatch(value):
        raise InvalidObjectName(
            f"{what} {value!r} is not 1-128 of [A-Za-z0-9._=-] starting alphanumeric"
        )


class ObjectStore:
    """Assets (`<ncaId>/<assetId>`, 24 h) and large responses (`<ncaId>/<requestId>`, 1 h).

    `await provision()` creates both buckets (idempotent). A PUT's body is written into the
    bucket chunk by chunk while it arrives (`object_writer.py`) and a GET streams it chunk by
    chunk, so memory stays bounded whatever the object size.
    """

    def __init__(
        self,
        nc: Client,
        *,
        signer: UrlSigner,
        base_url: str,
        storage: StorageType = StorageType.FILE,
        replicas: int = 1,
        url_lifetime: float = URL_LIFETIME_SECONDS,
        asset_ttl: float = ASSET_TTL_SECONDS,
        result_ttl: float = RESULT_TTL_SECONDS,
        max_object_bytes: int = MAX_OBJECT_BYTES,
        bucket_names: Mapping[Bucket, str] | None = None,
    ) -> None:
        self._js = nc.jetstream(timeout=NATS_TIMEOUT)
        self.signer = signer
        self.base_url = base_url
        self.max_object_bytes = max_object_bytes
        self._storage = storage
        self._replicas = replicas
        self._url_lifetime = url_lifetime
        self._ttl = {Bucket.ASSETS: asset_ttl, Bucket.RESULTS: result_ttl}
        names = {Bucket.ASSETS: "nvcf_assets", Bucket.RESULTS: "nvcf_results"}
        self._names = {**names, **(bucket_names or {})}
        self._buckets: dict[Bucket, NatsObjectStore] = {}
        self._writers = {
            bucket: ObjectWriter(nc, name, chunk_bytes=CHUNK_BYTES, timeout=NATS_TIMEOUT)
            for bucket, name in self._names.items()
        }

    async def provision(self) -> None:
        """Create the two buckets unless they exist (an existing one is kept as it is)."""
        for bucket, name in self._names.items():
            config = ObjectStoreConfig(
                ttl=self._ttl[bucket], storage=self._storage, replicas=self._replicas
            )
            try:
                self._buckets[bucket] = await self._js.create_object_store(name, config=config)
            except APIError as error:
                if error.err_code != _STREAM_NAME_IN_USE:
                    raise
                _log.warning("object bucket exists with other settings", extra={"bucket": name})
                self._buckets[bucket] = await self._js.object_store(name)

    def _bucket(self, bucket: Bucket) -> NatsObjectStore:
        try:
            return self._buckets[bucket]
        except KeyError:
            raise PlatformError("the object store is not provisioned") from None

    # -- presigned URLs --------------------------------------------------------------------------

    def presign(self, method: str, bucket: Bucket, name: str) -> str:
        return self.signer.presign(
            method, self.base_url, object_path(bucket, name), lifetime=self._url_lifetime
        )

    def large_response_upload_url(self, nca_id: str, request_id: str) -> str:
        """Presigned PUT of the zipped large response of one request (results bucket)."""
        return self.presign("PUT", Bucket.RESULTS, object_name(nca_id, _request_key(request_id)))

    def large_response_download_url(self, nca_id: str, request_id: str) -> str:
        """Presigned GET of the large response of one request (the 302 Location)."""
        return self.presign("GET", Bucket.RESULTS, object_name(nca_id, _request_key(request_id)))

    # -- objects ---------------------------------------------------------------------------------

    async def stat(self, bucket: Bucket, name: str) -> StoredObject:
        """The object's record (asset placeholders included); `ObjectNotFound` when absent."""
        try:
            info = await self._bucket(bucket).get_info(name)
        except NotFoundError:  # ObjectNotFoundError derives from it
            raise ObjectNotFound(bucket, name) from None
        return _stored(bucket, info)

    async def put_stream(
        self,
        bucket: Bucket,
        name: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str,
        description: str | None = None,
    ) -> StoredObject:
        """Store the bytes of `chunks` under `name`, written into the bucket as they arrive.

        Raises `ObjectTooLarge` past `max_object_bytes`, and passes on what reading `chunks` or
        NATS raises; nothing is stored then (an older object of that name stays as it was).
        """
        return await self._write(bucket, name, chunks, content_type, description, pending=False)

    async def put(
        self,
        bucket: Bucket,
        name: str,
        data: bytes,
        content_type: str,
        description: str | None,
        *,
        pending: bool = False,
    ) -> StoredObject:
        """Store `data` as it is; `pending` marks an asset placeholder."""

        async def whole() -> AsyncIterator[bytes]:
            yield data

        return await self._write(bucket, name, whole(), content_type, description, pending=pending)

    async def _write(
        self,
        bucket: Bucket,
        name: str,
        chunks: AsyncIterable[bytes],
        content_type: str,
        description: str | None,
        *,
        pending: bool,
    ) -> StoredObject:
        self._bucket(bucket)  # provisioned
        headers = {_CONTENT_TYPE: [content_type]}
        if pending:
            headers[_PENDING] = ["true"]
        info = await self._writers[bucket].write(
            name,
            chunks,
            headers=headers,
            description=description,
            max_bytes=self.max_object_bytes,
        )
        return _stored(bucket, info)

    async def read(self, stored: StoredObject) -> AsyncIterator[bytes]:
        """The object's bytes, one chunk per direct get.

        Size and SHA-256 are checked before the last chunk is handed out, so a reader never gets
        a corrupted object whole: `ObjectCorrupted` instead. An object replaced or expired while
        it is read ends in `ObjectNotFound`.
        """
        self._bucket(stored.bucket)  # provisioned
        bucket_name = self._names[stored.bucket]
        stream, subject = f"OBJ_{bucket_name}", f"$O.{bucket_name}.C.{stored.nuid}"
        digest, size, sequence = hashlib.sha256(), 0, 1
        for index in range(stored.chunks):
            try:
                message = await self._js.get_msg(
                    stream, seq=sequence, subject=subject, direct=True, next=True
                )
            except NotFoundError:
                raise ObjectNotFound(stored.bucket, stored.name) from None
            assert message.seq is not None
            sequence = message.seq + 1
            data = message.data or b""
            digest.update(data)
            size += len(data)
            if index == stored.chunks - 1 or size > stored.size:
                _check_digest(stored, size, digest.digest())
            yield data
        if not stored.chunks:
            _check_digest(stored, size, digest.digest())

    async def delete(self, bucket: Bucket, name: str) -> None:
        """Delete an object (its chunks are purged at once); `ObjectNotFound` when absent."""
        try:
            await self._bucket(bucket).delete(name)
        except NotFoundError:
            raise ObjectNotFound(bucket, name) from None

    async def list_objects(self, bucket: Bucket, nca_id: str) -> list[StoredObject]:
        """Every object of `nca_id` in `bucket` (asset placeholders included), oldest first."""
        prefix = f"{check_nca_id(nca_id)}/"
        try:
            async with asyncio.timeout(NATS_TIMEOUT):
                infos = await self._bucket(bucket).list(ignore_deletes=True)
        except NotFoundError:  # nats-py's answer for an empty bucket
            return []
        return [_stored(bucket, info) for info in infos if info.name.startswith(prefix)]


def _request_key(request_id: str) -> str:
    canonical = canonical_uuid(request_id)
    if canonical is None:
        raise InvalidObjectName(f"request id {request_id!r} is not a UUID")
    return canonical


def _stored(bucket: Bucket, info: ObjectInfo) -> StoredObject:
    headers: dict[str, list[str]] = info.headers or {}
    content_type = (headers.get(_CONTENT_TYPE) or [DEFAULT_CONTENT_TYPE])[0]
    return StoredObject(
        bucket=bucket,
        name=info.name,
        size=info.size or 0,
        content_type=content_type,
        description=info.description,
        pending=bool(headers.get(_PENDING)),
        modified=info.mtime or None,
        nuid=info.nuid,
        chunks=info.chunks or 0,
        digest=info.digest,
    )


def _check_digest(stored: StoredObject, size: int, actual: bytes) -> None:
    recorded = stored.digest or ""
    encoded = recorded[len(DIGEST_PREFIX) :]
    try:
        expected = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except ValueError:
        expected = b""
    matches = recorded.upper().startswith(DIGEST_PREFIX) and hmac.compare_digest(actual, expected)
    if size != stored.size or not matches:
        raise ObjectCorrupted(
            f"object {stored.name!r} reads as {size} bytes not matching its size and digest"
        )
