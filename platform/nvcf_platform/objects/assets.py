"""Input assets: the catalog over the assets bucket, the caller's asset header, the assets API.

An asset exists once its bytes are uploaded to the presigned URL `POST /v2/nvcf/assets` hands out,
as in NVIDIA's NVCF (where it is an S3 object); invocations name assets by id (reference §5.1).
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import orjson
from aiohttp import web
from nats.errors import Error as NatsError

from nvcf_platform.control.registry import canonical_uuid
from nvcf_platform.errors import (
    AssetNotFound,
    ConfigError,
    InvalidObjectName,
    ObjectNotFound,
)
from nvcf_platform.invocation.invocation import CallerIdentity
from nvcf_platform.invocation.problems import UNAUTHORIZED_CLIENT, problem_response
from nvcf_platform.objects.objects import (
    Bucket,
    ObjectStore,
    StoredObject,
    check_nca_id,
    object_name,
)
from nvcf_sidecar.protocol import InputAssetReference, parse_bearer

__all__ = [
    "ASSETS_PATH",
    "DEFAULT_ASSET_DESCRIPTION",
    "Asset",
    "AssetCatalog",
    "AssetEndpoints",
    "InvocationLinks",
]

ASSETS_PATH: Final = "/v2/nvcf/assets"
DEFAULT_ASSET_DESCRIPTION: Final = "Description not available"
"""What NVIDIA's API shows for an asset stored without a description."""

_CONTENT_TYPE = re.compile(r"\w+/[-+.\w]+", re.ASCII)  # NVIDIA's API takes only type/subtype
_JSON_TYPES: Final = frozenset({"application/json", "application/octet-stream"})

_T = TypeVar("_T")
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Asset:
    """An input asset of one NCA (NVCF's AssetDto); `upload_url` only when just created."""

    asset_id: str
    content_type: str
    description: str
    created_at: str | None = None
    upload_url: str | None = None

    def to_json(self) -> dict[str, str]:
        """The asset as NVCF's API answers it (the upload URL only on creation)."""
        body = {
            "assetId": self.asset_id,
            "contentType": self.content_type,
            "description": self.description,
        }
        if self.created_at is not None:
            body["createdAt"] = self.created_at
        if self.upload_url is not None:
            body["uploadUrl"] = self.upload_url
        return body


class AssetCatalog:
    """The assets of each NCA in the store's assets bucket (`<ncaId>/<assetId>`).

    `create_asset` records a placeholder carrying the content type and description; the asset
    is listed, shown, deletable and referable only once its bytes are uploaded.
    """

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    async def create_asset(self, nca_id: str, content_type: str, description: str) -> Asset:
        """A new asset id and its presigned upload URL (PUT, valid 34 min)."""
        asset_id = str(uuid.uuid4())
        name = object_name(nca_id, asset_id)
        await self._store.put(Bucket.ASSETS, name, b"", content_type, description, pending=True)
        _log.info("asset created", extra={"nca_id": nca_id, "asset_id": asset_id})
        return Asset(
            asset_id=asset_id,
            content_type=content_type,
            description=description,
            upload_url=self._store.presign("PUT", Bucket.ASSETS, name),
        )

    async def list_assets(self, nca_id: str) -> list[Asset]:
        """The uploaded assets of `nca_id`, oldest first."""
        stored = await self._store.list_objects(Bucket.ASSETS, nca_id)
        return [_asset(item) for item in stored if not item.pending]

    async def get_asset(self, nca_id: str, asset_id: str) -> Asset:
        """One uploaded asset; `AssetNotFound` when missing, deleted or not uploaded yet."""
        return _asset(await self._uploaded(nca_id, asset_id))

    async def delete_asset(self, nca_id: str, asset_id: str) -> None:
        """Delete an uploaded asset; `AssetNotFound` as `get_asset`."""
        stored = await self._uploaded(nca_id, asset_id)
        try:
            await self._store.delete(Bucket.ASSETS, stored.name)
        except ObjectNotFound:
            raise AssetNotFound(asset_id) from None
        _log.info("asset deleted", extra={"nca_id": nca_id, "asset_id": asset_id})

    async def asset_references(
        self, nca_id: str, asset_ids: Sequence[str]
    ) -> list[InputAssetReference]:
        """Presigned GETs of uploaded assets, in order; the first missing one raises AssetNotFound."""
        found = await asyncio.gather(
            *(self._uploaded(nca_id, asset_id) for asset_id in asset_ids), return_exceptions=True
        )
        references = []
        for asset_id, stored in zip(asset_ids, found, strict=True):
            if isinstance(stored, BaseException):
                raise stored
            references.append(
                InputAssetReference(
                    assetId=asset_id,
                    reference=self._store.presign("GET", Bucket.ASSETS, stored.name),
                    contentType=stored.content_type,
                )
            )
        return references

    async def _uploaded(self, nca_id: str, asset_id: str) -> StoredObject:
        canonical = canonical_uuid(asset_id)
        if canonical is None:
            raise AssetNotFound(asset_id)
        try:
            stored = await self._store.stat(Bucket.ASSETS, object_name(nca_id, canonical))
        except ObjectNotFound:
            raise AssetNotFound(asset_id) from None
        if stored.pending:
            raise AssetNotFound(asset_id)
        return stored


def _asset(stored: StoredObject) -> Asset:
    return Asset(
        asset_id=stored.name.rsplit("/", 1)[1],
        content_type=stored.content_type,
        description=stored.description or DEFAULT_ASSET_DESCRIPTION,
        created_at=_instant(stored.modified),
    )


def _instant(text: str | None) -> str | None:
    """An ISO-8601 time as Java's Instant prints it (UTC, `Z`, milliseconds)."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text).astimezone(UTC)
    except ValueError:
        return None
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AssetEndpoints:
    """NVCF's assets API for the platform's caller: create, list, show, delete (bearer auth).

    401 problem for a bearer that is not an accepted key; 400 for a bad body or asset id; 404
    for an asset that is missing or not uploaded yet; 503 when NATS fails.
    """

    def __init__(self, catalog: AssetCatalog, callers: CallerIdentity) -> None:
        try:
            check_nca_id(callers.nca_id)
        except InvalidObjectName as error:
            raise ConfigError(f"nca_id: {error}") from None
        self._catalog = catalog
        self._callers = callers

    def register(self, router: web.UrlDispatcher) -> None:
        router.add_post(ASSETS_PATH, self.create)
        router.add_get(ASSETS_PATH, self.index, allow_head=False)
        router.add_get(ASSETS_PATH + "/{asset_id}", self.show, allow_head=False)
        router.add_delete(ASSETS_PATH + "/{asset_id}", self.delete)

    def _denied(self, request: web.Request) -> bool:
        return not self._callers.accepts(parse_bearer(request.headers.get("Authorization")))

    async def create(self, request: web.Request) -> web.StreamResponse:
        """`{"contentType", "description"}` -> `{"assetId", "uploadUrl", "contentType", ...}`."""
        if self._denied(request):
            return problem_response(401, UNAUTHORIZED_CLIENT)
        if request.content_type not in _JSON_TYPES:
            return problem_response(415, f"Content-Type {request.content_type!r} is not JSON")
        try:
            payload: Any = orjson.loads(await request.read())
        except orjson.JSONDecodeError as error:
            return problem_response(400, f"request body is not JSON: {error}")
        except web.HTTPRequestEntityTooLarge:
            return problem_response(413, "request body too large")
        if not isinstance(payload, dict):
            return problem_response(400, "request body must be a JSON object")
        for field in ("contentType", "description"):
            if not isinstance(payload.get(field), str):
                return problem_response(400, f"'{field}' is required and must be a string")
        content_type, description = payload["contentType"], payload["description"]
        if not _CONTENT_TYPE.fullmatch(content_type):
            return problem_response(
                400, f"Invalid contentType '{content_type}' in the request payload"
            )
        return await self._answer(
            lambda: self._catalog.create_asset(self._callers.nca_id, content_type, description),
            lambda asset: _json(asset.to_json()),
        )

    async def index(self, request: web.Request) -> web.StreamResponse:
        """`{"assets": [...]}`: the caller's uploaded assets."""
        if self._denied(request):
            return problem_response(401, UNAUTHORIZED_CLIENT)
        return await self._answer(
            lambda: self._catalog.list_assets(self._callers.nca_id),
            lambda assets: _json({"assets": [asset.to_json() for asset in assets]}),
        )

    async def show(self, request: web.Request) -> web.StreamResponse:
        """`{"asset": {...}}`, or 404."""
        if self._denied(request):
            return problem_response(401, UNAUTHORIZED_CLIENT)
        asset_id = request.match_info["asset_id"]
        if canonical_uuid(asset_id) is None:
            return problem_response(400, f"asset id {asset_id!r} is not a UUID")
        return await self._answer(
            lambda: self._catalog.get_asset(self._callers.nca_id, asset_id),
            lambda asset: _json({"asset": asset.to_json()}),
        )

    async def delete(self, request: web.Request) -> web.StreamResponse:
        """204, or 404."""
        if self._denied(request):
            return problem_response(401, UNAUTHORIZED_CLIENT)
        asset_id = request.match_info["asset_id"]
        if canonical_uuid(asset_id) is None:
            return problem_response(400, f"asset id {asset_id!r} is not a UUID")
        return await self._answer(
            lambda: self._catalog.delete_asset(self._callers.nca_id, asset_id),
            lambda _: web.Response(status=204),
        )

    async def _answer(
        self, action: Callable[[], Awaitable[_T]], render: Callable[[_T], web.StreamResponse]
    ) -> web.StreamResponse:
        """Run a catalog call and render it; its errors become 404 or 503 problems."""
        nca_id = self._callers.nca_id
        try:
            return render(await action())
        except AssetNotFound as error:
            return problem_response(
                404, f"Asset '{error.asset_id}' does not exist for account '{nca_id}'"
            )
        except (NatsError, TimeoutError) as error:
            _log.error("asset store unavailable", extra={"nca_id": nca_id, "error": repr(error)})
            return problem_response(503, f"asset store unavailable: {error!r}")


def _json(body: Any) -> web.Response:
    return web.Response(body=orjson.dumps(body), content_type="application/json")


class InvocationLinks:
    """The object links of new work items (`invocation.ObjectLinks`): presigned asset GETs from
    the catalog, and the large-response PUT URL from the store."""

    def __init__(self, catalog: AssetCatalog, store: ObjectStore) -> None:
        self._catalog = catalog
        self._store = store

    async def asset_references(
        self, nca_id: str, asset_ids: Sequence[str]
    ) -> list[InputAssetReference]:
        """Presigned GETs for the assets, in order; raises `AssetNotFound` for a missing one."""
        return await self._catalog.asset_references(nca_id, asset_ids)

    def large_response_upload_url(self, nca_id: str, request_id: str) -> str:
        """A presigned PUT for the request's large response (a zip)."""
        return self._store.large_response_upload_url(nca_id, request_id)
