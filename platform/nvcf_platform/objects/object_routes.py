"""The presigned object routes: `PUT` and `GET`/`HEAD` `/v2/nvcf/objects/{assets|results}/...`.

They need no Authorization header (the URL is the key) and move bodies through the object store
in chunks, a PUT's into the bucket while it arrives, so memory stays bounded whatever the object
size; the store itself is `objects.py`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web
from nats.errors import Error as NatsError

from nvcf_platform.errors import (
    InvalidSignature,
    ObjectCorrupted,
    ObjectNotFound,
    ObjectTooLarge,
    PlatformError,
)
from nvcf_platform.invocation.attach import STREAM_ERRORS
from nvcf_platform.invocation.problems import abort_response, problem_response
from nvcf_platform.objects.objects import (
    DEFAULT_CONTENT_TYPE,
    OBJECTS_PREFIX,
    Bucket,
    ObjectStore,
    object_path,
)

__all__ = ["ObjectEndpoints"]

_CONTENT_TYPE: Final = "Content-Type"

_log = logging.getLogger(__name__)


class _BodyBrokeOff(PlatformError):
    """Reading the PUT body failed (a disconnect, broken framing): the client's fault, not NATS's."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"failed to read request body: {cause!r}")
        self.cause = cause


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    """The request body as it arrives, its read errors told apart from the store's."""
    chunks = request.content.iter_any()
    while True:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return
        except STREAM_ERRORS as error:
            raise _BodyBrokeOff(error) from error
        yield chunk


class ObjectEndpoints:
    """`PUT` and `GET`/`HEAD` `/v2/nvcf/objects/{assets|results}/<ncaId>/<id>`, presigned.

    403 problem for a missing, expired or mismatched signature (HEAD takes a GET signature),
    404 for a missing object, 413 over the size limit, 400 for a body that breaks off, 503 when
    NATS fails; a failed PUT stores nothing (an older object of that name stays).
    """

    PATH: Final = OBJECTS_PREFIX + "{bucket:assets|results}/{owner}/{object_id}"

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_put(self.PATH, self.put)
        router.add_get(self.PATH, self.get, allow_head=True)

    def _authorize(self, request: web.Request, method: str) -> tuple[Bucket, str]:
        bucket = Bucket(request.match_info["bucket"])
        name = f"{request.match_info['owner']}/{request.match_info['object_id']}"
        self._store.signer.verify(method, object_path(bucket, name), request.query)
        return bucket, name

    async def put(self, request: web.Request) -> web.StreamResponse:
        """Store the body; an asset keeps the content type and description it was created with."""
        try:
            bucket, name = self._authorize(request, "PUT")
        except InvalidSignature as error:
            return problem_response(403, str(error))
        limit = self._store.max_object_bytes
        if request.content_length is not None and request.content_length > limit:
            return problem_response(413, str(ObjectTooLarge(limit)))
        sent_type = request.headers.get(_CONTENT_TYPE, "").strip()
        extra = {"bucket": bucket.value, "object": name}
        try:
            description = None
            content_type = sent_type or DEFAULT_CONTENT_TYPE
            if bucket is Bucket.ASSETS:
                record = await self._store.stat(bucket, name)
                if sent_type and sent_type.lower() != record.content_type.lower():
                    detail = (
                        f"Content-Type {sent_type!r} is not the asset's {record.content_type!r}"
                    )
                    return problem_response(403, detail)
                content_type, description = record.content_type, record.description
            stored = await self._store.put_stream(
                bucket,
                name,
                _body(request),
                content_type=content_type,
                description=description,
            )
        except ObjectNotFound:
            return problem_response(404, "the asset was deleted or has expired")
        except ObjectTooLarge as error:
            _log.warning("object upload too large", extra=extra)
            return problem_response(413, str(error))
        except _BodyBrokeOff as error:
            _log.warning("object upload broke off", extra={**extra, "error": repr(error.cause)})
            return problem_response(400, str(error))
        except (NatsError, TimeoutError) as error:
            _log.error("object store unavailable", extra={**extra, "error": repr(error)})
            return problem_response(503, f"object store unavailable: {error!r}")
        _log.info("object stored", extra={**extra, "size": stored.size})
        return web.Response(status=200)

    async def get(self, request: web.Request) -> web.StreamResponse:
        """Stream the object with its stored Content-Type and exact Content-Length."""
        try:
            bucket, name = self._authorize(request, "GET")
        except InvalidSignature as error:
            return problem_response(403, str(error))
        extra = {"bucket": bucket.value, "object": name}
        try:
            stored = await self._store.stat(bucket, name)
        except (NatsError, TimeoutError) as error:
            _log.error("object store unavailable", extra={**extra, "error": repr(error)})
            return problem_response(503, f"object store unavailable: {error!r}")
        except ObjectNotFound:
            stored = None
        if stored is None or stored.pending:
            return problem_response(404, "no such object")
        response = web.StreamResponse(headers={_CONTENT_TYPE: stored.content_type})
        response.content_length = stored.size
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        try:
            async for chunk in self._store.read(stored):
                await response.write(chunk)
        except (ObjectNotFound, ObjectCorrupted, NatsError, TimeoutError) as error:
            _log.error("object read failed", extra={**extra, "error": repr(error)})
            abort_response(request)
            return response
        await response.write_eof()
        return response
