"""`InvocationContext`: one NVCF invocation as the function container sees it.

Built from the `NVCF-*` headers (any mapping, case-insensitive) or from a Triton python-backend
request; gives the request id, the asset and large-output directories, and safe ways to write
outputs and progress there.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nvcf_worker import headers as h
from nvcf_worker.errors import AssetNotFound, InvalidHeader
from nvcf_worker.outputs import open_output, write_output
from nvcf_worker.progress import ProgressReporter, write_progress

__all__ = ["InvocationContext"]


@dataclass(frozen=True, slots=True)
class InvocationContext:
    """What NVCF tells a function container about one invocation.

    Build it with `from_headers` (or `from_triton_request`, `for_local_run`); the constructor
    takes already-validated values.
    """

    request_id: str
    asset_dir: Path
    output_dir: Path
    function_id: str | None = None
    function_name: str | None = None
    function_version_id: str | None = None
    nca_id: str | None = None
    sub: str | None = None
    max_response_bytes: int = h.DEFAULT_MAX_RESPONSE_BYTES
    asset_ids: tuple[str, ...] = ()
    backend: str | None = None
    instance_type: str | None = None
    region: str | None = None
    env: str | None = None
    nspect_id: str | None = None
    invocation_region: str | None = None
    #: The worker's remaining poll budget in seconds when it called the container (may be <= 0).
    poll_seconds: int | None = None

    @classmethod
    def from_headers(
        cls, headers: Mapping[str, Any] | Iterable[tuple[Any, Any]]
    ) -> InvocationContext:
        """Parse the `NVCF-*` headers of one request.

        `headers` is any mapping of names to values (a dict, aiohttp or Starlette headers,
        PyTriton's `request.parameters`) or a list of pairs; names are case-insensitive.
        Raises `InvalidHeader` for a missing request id, a request or asset id that is not a
        single safe path component, a relative directory, or a non-integer or negative size.
        """
        values = h.normalize_headers(headers)
        raw_id = values.get(h.REQUEST_ID)
        if raw_id is None or raw_id == "":
            raise InvalidHeader(h.REQUEST_ID, raw_id, "missing; NVCF sends it with every call")
        request_id = h.parse_safe_component(h.REQUEST_ID, raw_id)

        def text(name: str) -> str | None:
            value = values.get(name)
            if value is None:
                return None
            if isinstance(value, bytes):
                return value.decode("latin-1")
            return str(value)

        def directory(name: str, base: str) -> Path:
            value = values.get(name)
            if value is None or value == "":
                return Path(f"{base}/{request_id}")
            return Path(h.parse_absolute_dir(name, value))

        raw_size = values.get(h.MAX_RESPONSE_SIZE_BYTES)
        raw_assets = values.get(h.FUNCTION_ASSET_IDS)
        raw_poll = values.get(h.POLL_SECONDS)
        return cls(
            request_id=request_id,
            asset_dir=directory(h.ASSET_DIR, h.DEFAULT_ASSET_BASE_DIR),
            output_dir=directory(h.LARGE_OUTPUT_DIR, h.DEFAULT_RESPONSE_BASE_DIR),
            function_id=text(h.FUNCTION_ID),
            function_name=text(h.FUNCTION_NAME),
            function_version_id=text(h.FUNCTION_VERSION_ID),
            nca_id=text(h.NCA_ID),
            sub=text(h.SUB),
            max_response_bytes=(
                h.DEFAULT_MAX_RESPONSE_BYTES
                if raw_size is None
                else h.parse_int(h.MAX_RESPONSE_SIZE_BYTES, raw_size)
            ),
            asset_ids=()
            if raw_assets is None
            else h.parse_asset_ids(h.FUNCTION_ASSET_IDS, raw_assets),
            backend=text(h.BACKEND),
            instance_type=text(h.INSTANCE_TYPE),
            region=text(h.REGION),
            env=text(h.ENV),
            nspect_id=text(h.NSPECT_ID),
            invocation_region=text(h.INVOCATION_REGION),
            poll_seconds=None
            if raw_poll is None
            else h.parse_int(h.POLL_SECONDS, raw_poll, minimum=None),
        )

    @classmethod
    def from_triton_request(cls, request: Any) -> InvocationContext:
        """Parse a Triton python-backend request, whose `parameters()` is a JSON object string.

        Start `tritonserver` with `--http-header-forward-pattern (?i)NVCF-.*` (the `nvcf-tritonserver`
        launcher does) so the HTTP headers arrive as request parameters.
        """
        raw = request.parameters()
        try:
            parameters = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            raise InvalidHeader("parameters", raw, f"not JSON: {exc}") from None
        if not isinstance(parameters, dict):
            raise InvalidHeader("parameters", raw, "expected a JSON object")
        return cls.from_headers(parameters)

    @classmethod
    def for_local_run(
        cls, base_dir: str | os.PathLike[str], *, request_id: str | None = None, **fields: Any
    ) -> InvocationContext:
        """A context for running a function outside NVCF: directories under `base_dir`.

        Creates `<base_dir>/inputAssets/<id>` and `<base_dir>/response/<id>`; `fields` sets any
        other attribute (`asset_ids=("a1",)`, `function_name="demo"`, ...).
        """
        rid = h.parse_safe_component(h.REQUEST_ID, request_id or str(uuid.uuid4()))
        base = Path(os.path.abspath(base_dir))  # absolute and without '..' segments
        asset_dir = base / "inputAssets" / rid
        output_dir = base / "response" / rid
        asset_dir.mkdir(parents=True, exist_ok=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        return cls(request_id=rid, asset_dir=asset_dir, output_dir=output_dir, **fields)

    def to_headers(self) -> dict[str, str]:
        """The `NVCF-*` headers that describe this context (what the worker would send)."""
        result = {
            h.REQUEST_ID: self.request_id,
            h.ASSET_DIR: str(self.asset_dir),
            h.LARGE_OUTPUT_DIR: str(self.output_dir),
            h.MAX_RESPONSE_SIZE_BYTES: str(self.max_response_bytes),
        }
        optional = {
            h.FUNCTION_ID: self.function_id,
            h.FUNCTION_NAME: self.function_name,
            h.FUNCTION_VERSION_ID: self.function_version_id,
            h.NCA_ID: self.nca_id,
            h.SUB: self.sub,
            h.BACKEND: self.backend,
            h.INSTANCE_TYPE: self.instance_type,
            h.REGION: self.region,
            h.ENV: self.env,
            h.NSPECT_ID: self.nspect_id,
            h.INVOCATION_REGION: self.invocation_region,
            h.FUNCTION_ASSET_IDS: ",".join(self.asset_ids) if self.asset_ids else None,
            h.POLL_SECONDS: None if self.poll_seconds is None else str(self.poll_seconds),
        }
        result.update({name: value for name, value in optional.items() if value is not None})
        return result

    # -- assets ---------------------------------------------------------------------------

    def asset_path(self, asset_id: str) -> Path:
        """The path of an input asset; `asset_id` must be one safe file name, so it never escapes."""
        return self.asset_dir / h.parse_safe_component(h.FUNCTION_ASSET_IDS, asset_id)

    def iter_assets(self) -> Iterator[Path]:
        """Yield the file of each asset the request declares, in header order.

        Raises `AssetNotFound` for a declared asset that is not a regular file in `asset_dir`.
        """
        for asset_id in self.asset_ids:
            path = self.asset_path(asset_id)
            if not path.is_file():
                raise AssetNotFound(asset_id, self.asset_dir)
            yield path

    # -- outputs --------------------------------------------------------------------------

    def open_output(
        self, name: str, mode: str = "wb", *, encoding: str = "utf-8"
    ) -> AbstractContextManager[IO[Any]]:
        """Open `<output_dir>/<name>` for writing; see `nvcf_worker.outputs.open_output`."""
        return open_output(self.output_dir, name, mode, encoding=encoding)

    def write_output(self, name: str, data: bytes | str) -> Path:
        """Write a whole output file atomically and return its final path."""
        return write_output(self.output_dir, name, data)

    # -- progress -------------------------------------------------------------------------

    def report_progress(
        self, percent: int, partial_response: Mapping[str, Any] | None = None
    ) -> Path:
        """Atomically (re)write `<output_dir>/progress` for this request and return its path.

        `percent` is an integer 0..100; `partial_response` a JSON object the caller receives
        with the 202. Raises `InvalidProgress` or `ProgressTooLarge`.
        """
        return write_progress(self.output_dir, self.request_id, percent, partial_response)

    def progress_reporter(self, min_interval: float = 0.5) -> ProgressReporter:
        """A throttled reporter for tight loops; see `nvcf_worker.progress.ProgressReporter`."""
        return ProgressReporter(self.output_dir, self.request_id, min_interval=min_interval)
