"""A platform restart loses nothing: presigned URLs, functions and tracking records outlive it.

The URL-signing secret lives in a 0600 file (`url_signing_secret_file`), functions in the registry
file, tracking records in NATS; the platform runs in-process against a real nats-server.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from harness.modules import load_module
from nvcf_platform.errors import ConfigError
from nvcf_platform.objects.presign import load_or_create_secret
from nvcf_platform.service import PlatformService

pytestmark = [pytest.mark.nats, pytest.mark.timeout(60)]

PollingJob = load_module(Path(__file__).with_name("platform_mock_worker.py")).PollingJob
RESULT = (200, [("Content-Type", "text/plain")], b"the result")


def test_the_secret_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "state" / "url-signing.key"
    secret = load_or_create_secret(path)
    assert len(secret) == 64  # 32 random bytes, hex
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == secret
    assert [p.name for p in path.parent.iterdir()] == ["url-signing.key"]


def test_a_secret_file_others_may_read_or_too_short_is_refused(tmp_path: Path) -> None:
    readable = tmp_path / "readable.key"
    readable.write_text("a perfectly long secret value\n")
    os.chmod(readable, 0o644)
    with pytest.raises(ConfigError, match="may be read by others"):
        load_or_create_secret(readable)
    short = tmp_path / "short.key"
    short.write_text("short\n")
    os.chmod(short, 0o600)
    with pytest.raises(ConfigError, match="holds 5 bytes"):
        load_or_create_secret(short)


async def test_presigned_urls_functions_and_tracking_records_outlive_a_platform_restart(
    platform_settings: Any, registry: Any, start_worker: Any, ids: Any, tmp_path: Path
) -> None:
    settings = dataclasses.replace(
        platform_settings, url_signing_secret_file=tmp_path / "secret" / "url-signing.key"
    )
    auth = {"Authorization": f"Bearer {ids.api_key}"}
    job = PollingJob(RESULT)
    async with aiohttp.ClientSession() as session:
        async with PlatformService(settings, registry) as first:
            await start_worker(job)  # binds the consumer the platform created
            base, port = first.base_url, first.http_port
            async with session.post(
                f"{base}/v2/nvcf/assets",
                json={"contentType": "text/plain", "description": "kept"},
                headers=auth,
            ) as response:
                assert response.status == 200, await response.text()
                asset = await response.json()
            url = f"{base}/v2/nvcf/pexec/functions/{ids.function_id}"
            headers = {**auth, "NVCF-POLL-SECONDS": "1"}
            async with session.post(url, data=b"job", headers=headers) as response:
                assert response.status == 202, await response.text()
                request_id = response.headers["nvcf-reqid"]
            async with session.get(f"{base}/v2/nvcf/functions", headers=auth) as response:
                functions = (await response.json())["functions"]
        job.finish()

        # Same port, same secret file: the URL minted before the restart is still valid.
        settings = dataclasses.replace(settings, port=port)
        async with PlatformService(settings, registry) as second:
            assert second.base_url == base
            async with session.put(
                asset["uploadUrl"],
                data=b"uploaded after the restart",
                headers={"Content-Type": "text/plain"},
            ) as r:
                assert r.status == 200, await r.text()
            async with session.get(f"{base}/v2/nvcf/assets/{asset['assetId']}", headers=auth) as r:
                assert r.status == 200, await r.text()
            async with session.get(f"{base}/v2/nvcf/functions", headers=auth) as response:
                assert [
                    (f["id"], f["versionId"], f["name"])
                    for f in (await response.json())["functions"]
                ] == [(f["id"], f["versionId"], f["name"]) for f in functions]
            async with session.get(
                f"{base}/v2/nvcf/pexec/status/{request_id}", headers=auth
            ) as response:
                assert response.status == 200, await response.text()
                assert await response.read() == b"the result"
