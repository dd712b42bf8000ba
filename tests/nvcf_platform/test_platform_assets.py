"""Input assets: the caller header parser, the catalog and NVCF's assets API, over real servers."""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import nats
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from nats.js.api import StorageType

from nvcf_platform.devstack.nats_server import EmbeddedNatsServer
from nvcf_platform.errors import AssetNotFound, ConfigError
from nvcf_platform.invocation.invocation import (
    CallerIdentity,
    InvalidAssetReference,
    parse_asset_references,
)
from nvcf_platform.objects.assets import (
    AssetCatalog,
    AssetEndpoints,
)
from nvcf_platform.objects.object_routes import ObjectEndpoints
from nvcf_platform.objects.objects import Bucket, ObjectStore
from nvcf_platform.objects.presign import UrlSigner

NCA_ID = "asset-nca"
API_KEY = "nvapi-assets"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
IDS = [
    "0b5e4c0f-8a3d-4b8e-9f6a-1d2c3b4a5e61",
    "1a2b3c4d-0000-4000-8000-000000000001",
    "9c2d9d6a-0e64-4b43-a4f0-5a0b7d9e8c21",
    "6f1f7f0e-3b0a-4d0b-9a57-3c1c2b9e0a11",
]


# --- the NVCF-INPUT-ASSET-REFERENCES header ------------------------------------------------------


def test_four_ids_across_two_header_values_keep_order_and_skip_blanks() -> None:
    values = [f" {IDS[0]}, ,{IDS[1]},".encode(), f"{IDS[2].upper()} , {IDS[3]}".encode()]
    assert parse_asset_references(values) == IDS


def test_duplicates_are_kept_as_nvidia_does_and_empty_headers_give_nothing() -> None:
    values = [f"{IDS[1]},{IDS[0]}".encode(), IDS[1].replace("-", "").encode()]
    assert parse_asset_references(values) == [IDS[1], IDS[0], IDS[1]]
    assert parse_asset_references([b"", b" , ,"]) == []
    assert parse_asset_references([]) == []


@pytest.mark.parametrize(
    "value",
    [
        "not-a-uuid",
        f"{IDS[0]},42",
        IDS[0][:-1],
        IDS[0].replace("-", "", 1),  # a hyphen missing
        f"{IDS[0]};{IDS[1]}",
    ],
)
def test_anything_but_uuids_is_invalid(value: str) -> None:
    with pytest.raises(InvalidAssetReference) as raised:
        parse_asset_references([IDS[2].encode(), value.encode()])
    assert isinstance(raised.value, ValueError)


@given(st.lists(st.uuids(), max_size=8), st.integers(min_value=1, max_value=3))
def test_any_split_of_uuids_parses_back(ids: list[uuid.UUID], parts: int) -> None:
    texts = [str(value) for value in ids]
    values = [",".join(texts[index::parts]).encode() for index in range(parts)]
    expected = [text for index in range(parts) for text in texts[index::parts]]
    assert parse_asset_references(values) == expected


# --- catalog and API over real servers -----------------------------------------------------------


@dataclass
class Assets:
    catalog: AssetCatalog
    store: ObjectStore
    base_url: str
    session: aiohttp.ClientSession

    async def call(
        self, method: str, path: str = "", *, headers: dict[str, str] | None = None, **kw: Any
    ) -> tuple[int, Any]:
        url = f"{self.base_url}/v2/nvcf/assets{path}"
        async with self.session.request(method, url, headers=headers, **kw) as response:
            body = await response.read()
            if response.content_type.endswith("json") and body:
                return response.status, await response.json(content_type=None)
            return response.status, body


@pytest.fixture
async def assets(nats_server: EmbeddedNatsServer) -> AsyncIterator[Assets]:
    async with contextlib.AsyncExitStack() as stack:
        nc = await nats.connect(nats_server.url, connect_timeout=2, allow_reconnect=False)
        stack.push_async_callback(nc.close)
        listener = socket.create_server(("127.0.0.1", 0))
        stack.callback(listener.close)
        base_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        store = ObjectStore(
            nc, signer=UrlSigner(b"assets-test-secret-0123456789"), base_url=base_url,
            storage=StorageType.MEMORY,
        )  # fmt: skip
        await store.provision()
        catalog = AssetCatalog(store)
        app = web.Application()
        ObjectEndpoints(store).register(app.router)
        AssetEndpoints(catalog, CallerIdentity((API_KEY,), NCA_ID, "sub")).register(app.router)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        await web.SockSite(runner, listener).start()
        session = await stack.enter_async_context(aiohttp.ClientSession())
        yield Assets(catalog, store, base_url, session)


async def upload(assets: Assets, url: str, data: bytes, content_type: str) -> int:
    headers = {"Content-Type": content_type, "x-amz-meta-nvcf-asset-description": "ignored"}
    async with assets.session.put(url, data=data, headers=headers) as response:
        return response.status


@pytest.mark.nats
async def test_assets_api_round_trip(assets: Assets) -> None:
    status, created = await assets.call(
        "POST", json={"contentType": "image/png", "description": "a picture"}, headers=AUTH
    )
    assert status == 200
    asset_id = created["assetId"]
    assert uuid.UUID(asset_id).version == 4
    assert created["contentType"] == "image/png"
    assert created["description"] == "a picture"
    assert created["uploadUrl"].startswith(
        f"{assets.base_url}/v2/nvcf/objects/assets/{NCA_ID}/{asset_id}?expires="
    )
    # Created but not uploaded: not an asset yet (as an S3 key that does not exist).
    assert await assets.call("GET", headers=AUTH) == (200, {"assets": []})
    assert (await assets.call("GET", f"/{asset_id}", headers=AUTH))[0] == 404

    assert await upload(assets, created["uploadUrl"], b"\x89PNG bytes", "image/png") == 200
    status, listed = await assets.call("GET", headers=AUTH)
    assert status == 200
    [entry] = listed["assets"]
    assert (entry["assetId"], entry["contentType"], entry["description"]) == (
        asset_id,
        "image/png",
        "a picture",
    )
    assert entry["createdAt"].endswith("Z")
    status, shown = await assets.call("GET", f"/{asset_id}", headers=AUTH)
    assert (status, shown["asset"]) == (200, entry)

    [reference] = await assets.catalog.asset_references(NCA_ID, [asset_id])
    assert (reference.assetId, reference.contentType) == (asset_id, "image/png")
    async with assets.session.get(reference.reference) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "image/png"
        assert await response.read() == b"\x89PNG bytes"

    assert await assets.call("DELETE", f"/{asset_id}", headers=AUTH) == (204, b"")
    status, problem = await assets.call("DELETE", f"/{asset_id}", headers=AUTH)
    assert status == 404
    assert problem["detail"] == f"Asset '{asset_id}' does not exist for account '{NCA_ID}'"
    assert (await assets.call("GET", f"/{asset_id}", headers=AUTH))[0] == 404
    assert await assets.call("GET", headers=AUTH) == (200, {"assets": []})
    async with assets.session.get(reference.reference) as response:
        assert response.status == 404


@pytest.mark.nats
@pytest.mark.parametrize(
    ("method", "path"), [("POST", ""), ("GET", ""), ("GET", f"/{IDS[0]}"), ("DELETE", f"/{IDS[0]}")]
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}])
async def test_every_route_needs_an_accepted_bearer(
    assets: Assets, method: str, path: str, headers: dict[str, str]
) -> None:
    json_body = {"contentType": "image/png", "description": "d"} if method == "POST" else None
    status, problem = await assets.call(method, path, headers=headers, json=json_body)
    assert status == 401
    assert problem == {"status": 401, "title": "Unauthorized", "detail": "client is unauthorized"}
    assert await assets.store.list_objects(Bucket.ASSETS, NCA_ID) == []  # nothing was created


@pytest.mark.nats
@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "request body is not JSON"),
        (b"[]", "request body must be a JSON object"),
        (b'{"description": "d"}', "'contentType' is required"),
        (b'{"contentType": "image/png"}', "'description' is required"),
        (b'{"contentType": 5, "description": "d"}', "'contentType' is required"),
        (b'{"contentType": "png", "description": "d"}', "Invalid contentType 'png'"),
    ],
)
async def test_bad_create_bodies_are_400(assets: Assets, body: bytes, detail: str) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    status, problem = await assets.call("POST", headers=headers, data=body)
    assert status == 400
    assert problem["detail"].startswith(detail)
    assert await assets.catalog.list_assets(NCA_ID) == []


@pytest.mark.nats
async def test_bad_asset_ids_and_content_types(assets: Assets) -> None:
    assert (await assets.call("GET", "/not-a-uuid", headers=AUTH))[0] == 400
    assert (await assets.call("DELETE", "/not-a-uuid", headers=AUTH))[0] == 400
    status, _ = await assets.call(
        "POST", headers={**AUTH, "Content-Type": "text/plain"}, data=b"{}"
    )
    assert status == 415


@pytest.mark.nats
async def test_upload_must_carry_the_created_content_type(assets: Assets) -> None:
    asset = await assets.catalog.create_asset(NCA_ID, "audio/wav", "sound")
    assert asset.upload_url is not None
    assert await upload(assets, asset.upload_url, b"RIFF", "image/png") == 403
    with pytest.raises(AssetNotFound):
        await assets.catalog.get_asset(NCA_ID, asset.asset_id)
    async with assets.session.put(
        asset.upload_url, data=b"RIFF", skip_auto_headers=["Content-Type"]
    ) as response:  # no Content-Type at all: the created one applies
        assert response.status == 200
    stored = await assets.catalog.get_asset(NCA_ID, asset.asset_id)
    assert (stored.content_type, stored.description) == ("audio/wav", "sound")


@pytest.mark.nats
async def test_asset_references_keep_order_and_name_the_missing_asset(assets: Assets) -> None:
    ids = []
    for index in range(3):
        asset = await assets.catalog.create_asset(NCA_ID, "text/plain", f"asset {index}")
        assert asset.upload_url is not None
        assert await upload(assets, asset.upload_url, f"content {index}".encode(), "text/plain")
        ids.append(asset.asset_id)
    references = await assets.catalog.asset_references(NCA_ID, ids[::-1])
    assert [reference.assetId for reference in references] == ids[::-1]
    for index, reference in zip([2, 1, 0], references, strict=True):
        async with assets.session.get(reference.reference) as response:
            assert await response.read() == f"content {index}".encode()

    missing = str(uuid.uuid4())
    with pytest.raises(AssetNotFound) as raised:
        await assets.catalog.asset_references(NCA_ID, [ids[0], missing, ids[1]])
    assert raised.value.asset_id == missing
    assert str(raised.value) == f"NotFound error: failed to find asset {missing}"
    # Another account's assets are invisible, and a created-only asset is not referable.
    with pytest.raises(AssetNotFound):
        await assets.catalog.asset_references("other-nca", ids[:1])
    pending = await assets.catalog.create_asset(NCA_ID, "text/plain", "never uploaded")
    with pytest.raises(AssetNotFound):
        await assets.catalog.asset_references(NCA_ID, [pending.asset_id])
    assert await assets.catalog.asset_references(NCA_ID, []) == []
    assert len(await assets.catalog.list_assets(NCA_ID)) == 3
    assert await assets.catalog.list_assets("other-nca") == []


@pytest.mark.nats
async def test_upload_after_the_placeholder_is_gone_is_404(assets: Assets) -> None:
    asset = await assets.catalog.create_asset(NCA_ID, "text/plain", "gone")
    assert asset.upload_url is not None
    await assets.store.delete(Bucket.ASSETS, f"{NCA_ID}/{asset.asset_id}")
    assert await upload(assets, asset.upload_url, b"late", "text/plain") == 404
    with pytest.raises(AssetNotFound):
        await assets.catalog.get_asset(NCA_ID, asset.asset_id)


def test_an_unusable_caller_nca_is_refused_at_construction() -> None:
    catalog = AssetCatalog(cast(Any, None))
    with pytest.raises(ConfigError, match="nca_id"):
        AssetEndpoints(catalog, CallerIdentity((), "a/b", "sub"))
