"""Calling one function as an NVCF client does: input assets, pexec, status polls, the final answer.

`invoke` uploads the assets, posts the body (to pexec, or in the gateway form any method on any
path with `function-id` headers), follows 202s through `/v2/nvcf/pexec/status`, then prints a
direct answer or unpacks a 302's zip; every failure is an `InvokeError` subclass.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Final

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from nvcf_sidecar.client.archive import extract_zip
from nvcf_sidecar.client.display import InvokeDisplay
from nvcf_sidecar.client.errors import (
    FunctionFailed,
    InvokeTimeout,
    LocalFileError,
    PlatformUnreachable,
    http_error,
)
from nvcf_sidecar.client.output import read_up_to, show_body_file, write_answer
from nvcf_sidecar.protocol import (
    EVENT_STREAM,
    NVCF_INPUT_ASSET_REFERENCES,
    NVCF_PERCENT_COMPLETE,
    NVCF_POLL_SECONDS,
    NVCF_REQID,
    NVCF_STATUS,
)

__all__ = [
    "ASSET_DESCRIPTION_HEADER",
    "DEFAULT_CONTENT_TYPE",
    "FUNCTION_ID_HEADER",
    "FUNCTION_VERSION_ID_HEADER",
    "InvokeSettings",
    "asset_content_type",
    "invoke",
]

DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"
ASSET_DESCRIPTION_HEADER: Final = "x-amz-meta-nvcf-asset-description"
"""NVCF's S3 upload URLs are signed with the asset's description in this header."""
FUNCTION_ID_HEADER: Final = "function-id"
FUNCTION_VERSION_ID_HEADER: Final = "function-version-id"
"""The gateway form names the function (and version) in these headers instead of the path."""
_ASSETS_PATH: Final = "/v2/nvcf/assets"
_ASSET_PLACEHOLDER: Final = re.compile(rb"\{asset(?:(\d+)|:([^{}]+))\}")
_PEXEC_PATH: Final = "/v2/nvcf/pexec"
_SMALL_BODY_BYTES: Final = 1024 * 1024
"""Most of a 202's partial body or an error body that is read."""
_MIN_POLL_GAP_SECONDS: Final = 0.2
"""A poll answered faster than this waits out the rest before the next (no busy loop)."""
_CONNECT_SECONDS: Final = 30.0
_DOWNLOAD_CHUNK_BYTES: Final = 1024 * 1024
_CONTENT_TYPE = re.compile(r"\w+/[-+.\w]+", re.ASCII)


@dataclass(frozen=True)
class InvokeSettings:
    """One invocation, as the command line describes it."""

    function_id: str
    base_url: str
    api_key: str
    version_id: str | None = None
    body: bytes | Path = b"{}"
    """Inline body, or a file streamed from disk."""
    assets: tuple[Path, ...] = ()
    poll_seconds: int | None = None
    """`NVCF-POLL-SECONDS` of the invocation and of every status poll (None: not sent)."""
    output_dir: Path | None = None
    """Where a 302's zip is unpacked (None: `./nvcf-output/<request id>`)."""
    stream: bool = False
    """Send `Accept: text/event-stream` and copy the answer as it arrives."""
    headers: tuple[tuple[str, str], ...] = ()
    """Extra headers of the invocation and the polls; they replace defaults of the same name."""
    timeout: float = 3600.0
    """Limit on the whole command: uploads, invocation, polls and download."""
    gateway_path: str | None = None
    """The gateway form: this path and query on the base URL, the function named by
    `function-id` (and `function-version-id`) headers; None calls pexec."""
    method: str = "POST"
    """The invocation's HTTP method (anything but POST only in the gateway form)."""

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path

    @property
    def invoke_url(self) -> str:
        """Where the invocation goes (a gateway path and query are sent as given)."""
        if self.gateway_path is not None:
            return self.url(self.gateway_path)
        path = f"{_PEXEC_PATH}/functions/{self.function_id}"
        return self.url(path if self.version_id is None else f"{path}/versions/{self.version_id}")

    def routing_headers(self) -> dict[str, str]:
        """The gateway form's `function-id` [+ `function-version-id`]; none for pexec."""
        if self.gateway_path is None:
            return {}
        headers = {FUNCTION_ID_HEADER: self.function_id}
        if self.version_id is not None:
            headers[FUNCTION_VERSION_ID_HEADER] = self.version_id
        return headers

    def status_url(self, request_id: str) -> str:
        return self.url(f"{_PEXEC_PATH}/status/{request_id}")


def asset_content_type(path: Path) -> str:
    """The content type of an asset file from its name; `application/octet-stream` when unknown,
    compressed (`.gz`, ...) or not of the `type/subtype` form NVCF's API accepts."""
    guessed, encoding = mimetypes.guess_type(path.name)
    if guessed is None or encoding is not None or not _CONTENT_TYPE.fullmatch(guessed):
        return DEFAULT_CONTENT_TYPE
    return guessed


async def invoke(settings: InvokeSettings, display: InvokeDisplay, stdout: BinaryIO) -> None:
    """Run the invocation to its end; raises an `InvokeError` subclass when it fails."""
    call: _Call | None = None
    try:
        async with asyncio.timeout(settings.timeout):
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_SECONDS)
            async with aiohttp.ClientSession(timeout=timeout, trust_env=True) as session:
                call = _Call(session, settings, display, stdout)
                try:
                    await call.run()
                except aiohttp.ClientPayloadError as error:
                    raise FunctionFailed(f"the answer broke off: {error}") from error
                except aiohttp.ClientConnectionError as error:
                    reason = str(error) or type(error).__name__
                    raise PlatformUnreachable(
                        f"connection to {settings.base_url} failed: {reason}"
                    ) from error
                except aiohttp.ClientError as error:
                    raise FunctionFailed(f"unreadable answer: {error!r}") from error
    except TimeoutError as error:
        request = call.request_id if call is not None else None
        where = f" (request {request})" if request else ""
        message = f"no final answer within --timeout {settings.timeout:g} s{where}"
        raise InvokeTimeout(message) from error


class _Call:
    """One invocation on an open session; `run` ends with the answer written or an error."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: InvokeSettings,
        display: InvokeDisplay,
        stdout: BinaryIO,
    ) -> None:
        self._session = session
        self._settings = settings
        self._display = display
        self._stdout = stdout
        self.request_id: str | None = None

    def _headers(self, defaults: dict[str, str]) -> CIMultiDict[str]:
        """Authorization and `defaults`, then the user's headers (replacing same-named ones)."""
        headers: CIMultiDict[str] = CIMultiDict(Authorization=f"Bearer {self._settings.api_key}")
        headers.update(defaults)
        for name in {name for name, _ in self._settings.headers}:
            headers.popall(name, None)
        headers.extend(self._settings.headers)
        return headers

    def _poll_defaults(self) -> dict[str, str]:
        settings = self._settings
        defaults = (
            {} if settings.poll_seconds is None else {NVCF_POLL_SECONDS: str(settings.poll_seconds)}
        )
        if settings.stream:
            defaults["Accept"] = EVENT_STREAM
        return defaults

    async def run(self) -> None:
        asset_ids = [await self._upload_asset(path) for path in self._settings.assets]
        body = self._settings.body
        defaults = self._settings.routing_headers()
        # The gateway form may have no body (GET, DELETE): then it gets no content type either.
        bodiless = self._settings.gateway_path is not None and body == b""
        if not bodiless:
            defaults["Content-Type"] = "application/json"
        defaults.update(self._poll_defaults())
        if asset_ids:
            defaults[NVCF_INPUT_ASSET_REFERENCES] = ",".join(asset_ids)
        if isinstance(body, bytes) and asset_ids:
            body = fill_asset_ids(body, self._settings.assets, asset_ids)
        with _opened(body) as data:
            async with self._session.request(
                self._settings.method,
                URL(self._settings.invoke_url, encoded=True),
                data=None if bodiless else data,
                headers=self._headers(defaults),
                allow_redirects=False,
            ) as response:
                self.request_id = response.headers.get(NVCF_REQID)
                if response.status != 202:
                    await self._conclude(response)
                    return
                if not self.request_id:
                    raise FunctionFailed(f"HTTP 202 without {NVCF_REQID}: nothing to poll")
                percent, partial = await _progress_of(response)
        await self._poll(self.request_id, percent, partial)

    async def _poll(self, request_id: str, percent: int | None, partial: bytes) -> None:
        every = self._settings.poll_seconds
        self._display.say(
            f"request {request_id} accepted (202); polling"
            + (f" with NVCF-POLL-SECONDS {every}" if every is not None else "")
        )
        url = self._settings.status_url(request_id)
        headers = self._headers(self._poll_defaults())
        with self._display.progress(request_id) as bar:
            bar.update(percent, partial)
            while True:
                started = time.monotonic()
                async with self._session.get(
                    url, headers=headers, allow_redirects=False
                ) as response:
                    if response.status != 202:
                        bar.close()
                        await self._conclude(response)
                        return
                    bar.update(*await _progress_of(response))
                rest = _MIN_POLL_GAP_SECONDS - (time.monotonic() - started)
                if rest > 0:
                    await asyncio.sleep(rest)

    async def _conclude(self, response: aiohttp.ClientResponse) -> None:
        """Handle a final (non-202) answer: print it, unpack it, or raise its error."""
        status = response.status
        if status >= 400 or status < 200:
            body, _ = await read_up_to(response, _SMALL_BODY_BYTES)
            raise http_error(status, response.reason, body, self.request_id)
        state = response.headers.get(NVCF_STATUS)
        line = f"HTTP {status} {response.reason or ''}".rstrip()
        line += (f" ({state})" if state else "") + (
            f", request {self.request_id}" if self.request_id else ""
        )
        if status == 302:
            location = response.headers.get("Location")
            if not location:
                raise FunctionFailed(f"HTTP 302 without Location (request {self.request_id})")
            self._display.say(f"{line}: downloading the large response")
            await self._download(response.url.join(URL(location)))
            return
        self._display.say(line)
        await write_answer(response, self._stdout, raw=self._settings.stream)

    async def _download(self, location: URL) -> None:
        """Stream the zip to a temporary file in the output directory, then unpack and show it."""
        name = self.request_id or "response"
        destination = self._settings.output_dir or Path("nvcf-output") / name
        handle, archive = await asyncio.to_thread(_temporary_zip, destination)
        try:
            with os.fdopen(handle, "wb") as file:
                # No Authorization: the presigned URL is the credential (and S3 rejects a second).
                async with self._session.get(location) as response:
                    if response.status != 200:
                        body, _ = await read_up_to(response, _SMALL_BODY_BYTES)
                        raise http_error(
                            response.status, response.reason, body, self.request_id, "download"
                        )
                    size = 0
                    async for chunk in response.content.iter_chunked(_DOWNLOAD_CHUNK_BYTES):
                        file.write(chunk)
                        size += len(chunk)
            self._display.say(f"downloaded {size} bytes; unpacking into {destination}")
            await asyncio.to_thread(self._unpack, archive, destination, name)
        except aiohttp.ClientError:
            raise
        except OSError as error:
            raise LocalFileError(f"cannot write {archive}: {error}") from error
        finally:
            await asyncio.to_thread(archive.unlink, missing_ok=True)

    def _unpack(self, archive: Path, destination: Path, name: str) -> None:
        """Extract the zip, list its files, print `<name>.response`; refused entries fail it."""
        extracted = extract_zip(archive, destination)
        root = destination.resolve()
        body_file: Path | None = None
        for path in extracted.files:
            relative = path.relative_to(root)
            self._display.say(f"  {relative} ({path.stat().st_size} bytes)")
            top_level_body = relative.suffix == ".response" and len(relative.parts) == 1
            if top_level_body and (body_file is None or relative.name == f"{name}.response"):
                body_file = path
        if body_file is None:
            self._display.warn(f"the zip has no {name}.response")
        else:
            show_body_file(body_file, self._stdout, self._display)
        if extracted.refused:
            for refused in extracted.refused:
                self._display.warn(f"refused unsafe zip entry {refused!r}")
            raise FunctionFailed(
                f"{len(extracted.refused)} unsafe zip entries refused (request {self.request_id})"
            )

    async def _upload_asset(self, path: Path) -> str:
        """Create an asset (`POST /v2/nvcf/assets`), PUT the file to its upload URL, return its id."""
        content_type = asset_content_type(path)
        description = _ascii(path.name)
        async with self._session.post(
            self._settings.url(_ASSETS_PATH),
            json={"contentType": content_type, "description": description},
            headers={"Authorization": f"Bearer {self._settings.api_key}"},
        ) as response:
            if response.status != 200:
                body, _ = await read_up_to(response, _SMALL_BODY_BYTES)
                raise http_error(
                    response.status, response.reason, body, what=f"creating asset {path}"
                )
            created: Any = await response.json(content_type=None)
        if not isinstance(created, dict) or not all(
            isinstance(created.get(key), str) for key in ("assetId", "uploadUrl")
        ):
            raise FunctionFailed(f"creating asset {path}: no assetId and uploadUrl in {created!r}")
        asset_id: str = created["assetId"]
        headers = {"Content-Type": content_type, ASSET_DESCRIPTION_HEADER: description}
        with _opened(path) as data:
            async with self._session.put(created["uploadUrl"], data=data, headers=headers) as put:
                if put.status not in (200, 201, 204):
                    body, _ = await read_up_to(put, _SMALL_BODY_BYTES)
                    raise http_error(put.status, put.reason, body, what=f"uploading asset {path}")
        self._display.say(f"asset {asset_id} <- {path} ({content_type})")
        return asset_id


def fill_asset_ids(body: bytes, assets: Sequence[Path], ids: Sequence[str]) -> bytes:
    """`body` with `{asset0}`, `{asset1}`, ... (by `--asset` order) and `{asset:NAME}` (by the
    file's name) replaced by the uploaded assets' ids; LocalFileError for one that names no
    asset."""
    by_name = {path.name: asset_id for path, asset_id in zip(assets, ids, strict=True)}

    def asset_id(match: re.Match[bytes]) -> bytes:
        number, name = match.group(1), match.group(2)
        if number is not None and int(number) < len(ids):
            return ids[int(number)].encode()
        if name is not None and name.decode(errors="replace") in by_name:
            return by_name[name.decode(errors="replace")].encode()
        raise LocalFileError(
            f"--data names {match.group(0).decode(errors='replace')}, but the --asset files are "
            f"{', '.join(f'{{asset{i}}} {path.name}' for i, path in enumerate(assets))}"
        )

    return _ASSET_PLACEHOLDER.sub(asset_id, body)


@contextlib.contextmanager
def _opened(body: bytes | Path) -> Iterator[bytes | IO[bytes]]:
    """The body to send: bytes as they are, a file opened for streaming (closed afterwards)."""
    if isinstance(body, bytes):
        yield body
        return
    try:
        file = body.open("rb")
    except OSError as error:
        raise LocalFileError(f"cannot read {body}: {error}") from error
    with file:
        yield file


async def _progress_of(response: aiohttp.ClientResponse) -> tuple[int | None, bytes]:
    """A 202's percent complete (None when absent or not a number) and partial body."""
    body, _ = await read_up_to(response, _SMALL_BODY_BYTES)
    try:
        percent: int | None = int(response.headers.get(NVCF_PERCENT_COMPLETE, ""))
    except ValueError:
        percent = None
    return percent, body


def _temporary_zip(destination: Path) -> tuple[int, Path]:
    """The output directory, created, and an open temporary file in it for the download."""
    try:
        destination.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".nvcf-download-", suffix=".zip", dir=destination)
    except OSError as error:
        raise LocalFileError(f"cannot write into {destination}: {error}") from error
    return handle, Path(name)


def _ascii(text: str) -> str:
    """`text` with characters an HTTP header value cannot carry plainly replaced by `_`."""
    return "".join(c if " " <= c <= "~" else "_" for c in text) or "asset"
