"""`InvocationContext`: building it from every header shape, and its asset, output and progress helpers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from starlette.datastructures import Headers

from nvcf_worker import InvocationContext
from nvcf_worker import headers as h
from nvcf_worker.errors import AssetNotFound, InvalidHeader
from nvcf_worker.progress import ProgressReporter

FULL_HEADERS = {
    "NVCF-REQID": "req-1",
    "NVCF-SUB": "sub-1",
    "NVCF-NCAID": "nca-1",
    "NVCF-FUNCTION-NAME": "echo",
    "NVCF-FUNCTION-ID": "fid-1",
    "NVCF-FUNCTION-VERSION-ID": "fvid-1",
    "NVCF-ASSET-DIR": "/mnt/assets/req-1",
    "NVCF-LARGE-OUTPUT-DIR": "/mnt/response/req-1",
    "NVCF-MAX-RESPONSE-SIZE-BYTES": "1234",
    "NVCF-NSPECTID": "nspect-1",
    "NVCF-BACKEND": "gfn",
    "NVCF-INSTANCETYPE": "g5.xlarge",
    "NVCF-REGION": "us-east-1",
    "NVCF-ENV": "prod",
    "NVCF-FUNCTION-ASSET-IDS": "a1,b2",
    "NVCF-INVOCATION-REGION": "eu-west-1",
    "NVCF-POLL-SECONDS": "-2",
}


def assert_full_context(ctx: InvocationContext) -> None:
    assert ctx.request_id == "req-1"
    assert ctx.sub == "sub-1"
    assert ctx.nca_id == "nca-1"
    assert ctx.function_name == "echo"
    assert ctx.function_id == "fid-1"
    assert ctx.function_version_id == "fvid-1"
    assert ctx.asset_dir == Path("/mnt/assets/req-1")
    assert ctx.output_dir == Path("/mnt/response/req-1")
    assert ctx.max_response_bytes == 1234
    assert ctx.nspect_id == "nspect-1"
    assert ctx.backend == "gfn"
    assert ctx.instance_type == "g5.xlarge"
    assert ctx.region == "us-east-1"
    assert ctx.env == "prod"
    assert ctx.asset_ids == ("a1", "b2")
    assert ctx.invocation_region == "eu-west-1"
    assert ctx.poll_seconds == -2


# -- from_headers: every field, every header shape --------------------------------------------


def test_from_headers_maps_every_field_from_its_header() -> None:
    assert_full_context(InvocationContext.from_headers(FULL_HEADERS))


def test_from_headers_ignores_the_case_of_header_names() -> None:
    mixed = {
        (name.lower() if i % 2 else name.title()): value
        for i, (name, value) in enumerate(FULL_HEADERS.items())
    }
    assert_full_context(InvocationContext.from_headers(mixed))


def test_from_headers_accepts_an_aiohttp_cimultidict_and_its_proxy() -> None:
    multi = CIMultiDict((name.lower(), value) for name, value in FULL_HEADERS.items())
    assert_full_context(InvocationContext.from_headers(multi))
    assert_full_context(InvocationContext.from_headers(CIMultiDictProxy(multi)))


def test_from_headers_takes_the_first_of_repeated_names_in_a_cimultidict() -> None:
    multi = CIMultiDict([("nvcf-reqid", "first"), ("NVCF-REQID", "../second")])
    assert InvocationContext.from_headers(multi).request_id == "first"


def test_from_headers_accepts_starlette_headers_and_the_first_repeated_value_wins() -> None:
    raw = [(name.lower().encode(), value.encode()) for name, value in FULL_HEADERS.items()]
    raw.insert(0, (b"nvcf-function-name", b"first"))
    raw.append((b"nvcf-reqid", b"../spoofed"))
    ctx = InvocationContext.from_headers(Headers(raw=raw))
    assert ctx.function_name == "first"
    assert ctx.request_id == "req-1"


def test_from_headers_accepts_an_asgi_raw_list_of_byte_pairs() -> None:
    raw = [(name.lower().encode(), value.encode()) for name, value in FULL_HEADERS.items()]
    assert_full_context(InvocationContext.from_headers(raw))


def test_from_headers_accepts_pytriton_parameters_with_int_values() -> None:
    params: dict[str, Any] = dict(FULL_HEADERS)
    params["NVCF-MAX-RESPONSE-SIZE-BYTES"] = 1234
    params["NVCF-POLL-SECONDS"] = -2
    assert_full_context(InvocationContext.from_headers(params))


def test_from_headers_accepts_an_int_request_id() -> None:
    assert InvocationContext.from_headers({"NVCF-REQID": 17}).request_id == "17"


def test_from_headers_defaults_directories_size_and_optional_fields() -> None:
    ctx = InvocationContext.from_headers({"nvcf-reqid": "r1"})
    assert ctx.request_id == "r1"
    assert ctx.asset_dir == Path("/var/inf/inputAssets/r1")
    assert ctx.output_dir == Path("/var/inf/response/r1")
    assert ctx.max_response_bytes == 5_000_000
    assert ctx.asset_ids == ()
    assert ctx.poll_seconds is None
    for field in (
        "function_id",
        "function_name",
        "function_version_id",
        "nca_id",
        "sub",
        "backend",
        "instance_type",
        "region",
        "env",
        "nspect_id",
        "invocation_region",
    ):
        assert getattr(ctx, field) is None, field


def test_from_headers_treats_empty_directory_headers_as_absent() -> None:
    ctx = InvocationContext.from_headers(
        {"NVCF-REQID": "r1", "NVCF-ASSET-DIR": "", "NVCF-LARGE-OUTPUT-DIR": ""}
    )
    assert ctx.asset_dir == Path("/var/inf/inputAssets/r1")
    assert ctx.output_dir == Path("/var/inf/response/r1")


def test_from_headers_of_an_empty_asset_list_declares_no_assets() -> None:
    ctx = InvocationContext.from_headers({"NVCF-REQID": "r1", "NVCF-FUNCTION-ASSET-IDS": ""})
    assert ctx.asset_ids == ()


def test_context_is_frozen() -> None:
    ctx = InvocationContext.from_headers({"NVCF-REQID": "r1"})
    with pytest.raises(AttributeError):
        ctx.request_id = "other"  # type: ignore[misc]


# -- from_headers: refusals -------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"NVCF-REQID": ""}, {"X-Other": "r1"}])
def test_from_headers_refuses_a_missing_or_empty_request_id(headers: dict[str, str]) -> None:
    with pytest.raises(InvalidHeader, match="missing") as info:
        InvocationContext.from_headers(headers)
    assert info.value.header == "NVCF-REQID"


@pytest.mark.parametrize(
    "request_id", ["../x", "a/b", ".hidden", "x" * 129, "r\x00", "..", " ", True, 1.5]
)
def test_from_headers_refuses_a_request_id_that_is_not_one_safe_component(
    request_id: object,
) -> None:
    with pytest.raises(InvalidHeader) as info:
        InvocationContext.from_headers({"NVCF-REQID": request_id})
    assert info.value.header == "NVCF-REQID"
    assert info.value.value is request_id
    assert "NVCF-REQID" in str(info.value)
    assert repr(request_id) in str(info.value)


def test_from_headers_accepts_a_request_id_of_exactly_128_characters() -> None:
    assert InvocationContext.from_headers({"NVCF-REQID": "x" * 128}).request_id == "x" * 128


@pytest.mark.parametrize("size", ["5MB", "1e6", "5.0", "", " ", True, False, "-1", -1, 5.0])
def test_from_headers_refuses_a_size_that_is_not_a_non_negative_integer(size: object) -> None:
    with pytest.raises(InvalidHeader) as info:
        InvocationContext.from_headers({"NVCF-REQID": "r1", "NVCF-MAX-RESPONSE-SIZE-BYTES": size})
    assert info.value.header == "NVCF-MAX-RESPONSE-SIZE-BYTES"
    assert info.value.value is size
    assert "NVCF-MAX-RESPONSE-SIZE-BYTES" in str(info.value)
    assert repr(size) in str(info.value)


@pytest.mark.parametrize("header", ["NVCF-ASSET-DIR", "NVCF-LARGE-OUTPUT-DIR"])
@pytest.mark.parametrize("value", ["relative/r1", "/var/inf/../../etc", "/var/inf/..", "/x\x00y"])
def test_from_headers_refuses_a_relative_or_escaping_directory(header: str, value: str) -> None:
    with pytest.raises(InvalidHeader) as info:
        InvocationContext.from_headers({"NVCF-REQID": "r1", header: value})
    assert info.value.header == header
    assert info.value.value == value
    assert header in str(info.value)


@pytest.mark.parametrize("value", ["a1,../x", "a1,b/c", ".a", "ok," + "y" * 129])
def test_from_headers_refuses_an_unsafe_asset_id_in_the_list(value: str) -> None:
    with pytest.raises(InvalidHeader) as info:
        InvocationContext.from_headers({"NVCF-REQID": "r1", "NVCF-FUNCTION-ASSET-IDS": value})
    assert info.value.header == "NVCF-FUNCTION-ASSET-IDS"


@pytest.mark.parametrize("value", ["soon", "1.5", ""])
def test_from_headers_refuses_a_non_integer_poll_budget(value: str) -> None:
    with pytest.raises(InvalidHeader) as info:
        InvocationContext.from_headers({"NVCF-REQID": "r1", "NVCF-POLL-SECONDS": value})
    assert info.value.header == "NVCF-POLL-SECONDS"


# -- to_headers -------------------------------------------------------------------------------


def test_to_headers_round_trips_a_full_context() -> None:
    ctx = InvocationContext.from_headers(FULL_HEADERS)
    assert InvocationContext.from_headers(ctx.to_headers()) == ctx


def test_to_headers_of_a_minimal_context_names_directories_and_size() -> None:
    ctx = InvocationContext.from_headers({"NVCF-REQID": "r1"})
    assert ctx.to_headers() == {
        "NVCF-REQID": "r1",
        "NVCF-ASSET-DIR": "/var/inf/inputAssets/r1",
        "NVCF-LARGE-OUTPUT-DIR": "/var/inf/response/r1",
        "NVCF-MAX-RESPONSE-SIZE-BYTES": "5000000",
    }
    assert InvocationContext.from_headers(ctx.to_headers()) == ctx


SAFE_ID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True)
PLAIN_TEXT = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)


@given(
    request_id=SAFE_ID,
    asset_ids=st.lists(SAFE_ID, max_size=4).map(tuple),
    size=st.integers(min_value=0, max_value=10**12),
    poll=st.none() | st.integers(min_value=-100, max_value=3600),
    name=st.none() | PLAIN_TEXT,
    region=st.none() | PLAIN_TEXT,
)
def test_from_headers_of_to_headers_is_the_same_context(
    request_id: str,
    asset_ids: tuple[str, ...],
    size: int,
    poll: int | None,
    name: str | None,
    region: str | None,
) -> None:
    ctx = InvocationContext(
        request_id=request_id,
        asset_dir=Path("/assets") / request_id,
        output_dir=Path("/out") / request_id,
        max_response_bytes=size,
        asset_ids=asset_ids,
        poll_seconds=poll,
        function_name=name,
        region=region,
    )
    assert InvocationContext.from_headers(ctx.to_headers()) == ctx


def test_to_headers_round_trips_a_local_run_context_whose_base_has_a_dotdot(
    tmp_path: Path,
) -> None:
    (tmp_path / "sub").mkdir()
    ctx = InvocationContext.for_local_run(tmp_path / "sub" / "..", request_id="r1")
    assert ".." not in ctx.output_dir.parts
    assert ".." not in ctx.asset_dir.parts
    assert InvocationContext.from_headers(ctx.to_headers()) == ctx


# -- from_triton_request ----------------------------------------------------------------------


class FakeTritonRequest:
    def __init__(self, parameters: str) -> None:
        self._parameters = parameters

    def parameters(self) -> str:
        return self._parameters


def test_from_triton_request_parses_the_json_parameters() -> None:
    request = FakeTritonRequest(json.dumps({"nvcf-reqid": "r1", "NVCF-MAX-RESPONSE-SIZE-BYTES": 9}))
    ctx = InvocationContext.from_triton_request(request)
    assert ctx.request_id == "r1"
    assert ctx.max_response_bytes == 9


def test_from_triton_request_with_empty_parameters_reports_the_missing_request_id() -> None:
    with pytest.raises(InvalidHeader) as info:
        InvocationContext.from_triton_request(FakeTritonRequest(""))
    assert info.value.header == "NVCF-REQID"


def test_from_triton_request_refuses_parameters_that_are_not_json() -> None:
    with pytest.raises(InvalidHeader, match="not JSON") as info:
        InvocationContext.from_triton_request(FakeTritonRequest("{nope"))
    assert info.value.header == "parameters"
    assert info.value.value == "{nope"


def test_from_triton_request_refuses_a_json_list() -> None:
    with pytest.raises(InvalidHeader, match="JSON object") as info:
        InvocationContext.from_triton_request(FakeTritonRequest('["NVCF-REQID", "r1"]'))
    assert info.value.header == "parameters"


def test_from_triton_request_validates_the_parameters_like_headers() -> None:
    with pytest.raises(InvalidHeader) as info:
        InvocationContext.from_triton_request(FakeTritonRequest('{"NVCF-REQID": "../x"}'))
    assert info.value.header == "NVCF-REQID"


# -- for_local_run ----------------------------------------------------------------------------


def test_for_local_run_creates_both_directories_under_the_base(tmp_path: Path) -> None:
    ctx = InvocationContext.for_local_run(tmp_path, request_id="r1", function_name="demo")
    assert ctx.request_id == "r1"
    assert ctx.asset_dir == tmp_path / "inputAssets" / "r1"
    assert ctx.output_dir == tmp_path / "response" / "r1"
    assert ctx.asset_dir.is_dir()
    assert ctx.output_dir.is_dir()
    assert ctx.function_name == "demo"


def test_for_local_run_without_an_id_makes_a_fresh_safe_one(tmp_path: Path) -> None:
    first = InvocationContext.for_local_run(tmp_path)
    second = InvocationContext.for_local_run(tmp_path)
    assert first.request_id != second.request_id
    assert h.is_safe_component(first.request_id)
    assert first.output_dir.is_dir()


def test_for_local_run_accepts_a_string_base_and_makes_it_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ctx = InvocationContext.for_local_run("base", request_id="r1")
    assert ctx.output_dir.is_absolute()
    assert ctx.output_dir == tmp_path / "base" / "response" / "r1"


def test_for_local_run_is_idempotent_for_existing_directories(tmp_path: Path) -> None:
    InvocationContext.for_local_run(tmp_path, request_id="r1")
    ctx = InvocationContext.for_local_run(tmp_path, request_id="r1")
    assert ctx.output_dir.is_dir()


def test_for_local_run_refuses_an_unsafe_request_id(tmp_path: Path) -> None:
    with pytest.raises(InvalidHeader):
        InvocationContext.for_local_run(tmp_path, request_id="../escape")
    assert not (tmp_path / "escape").exists()
    assert list(tmp_path.iterdir()) == []


# -- assets -----------------------------------------------------------------------------------


def test_asset_path_is_the_file_in_the_asset_directory(tmp_path: Path) -> None:
    ctx = InvocationContext.for_local_run(tmp_path, request_id="r1")
    assert ctx.asset_path("a1") == ctx.asset_dir / "a1"


@pytest.mark.parametrize("asset_id", ["../r2/x", "a/b", "..", ".", "", "/etc/passwd", "a\x00"])
def test_asset_path_refuses_an_id_that_would_escape(tmp_path: Path, asset_id: str) -> None:
    ctx = InvocationContext.for_local_run(tmp_path, request_id="r1")
    with pytest.raises(InvalidHeader) as info:
        ctx.asset_path(asset_id)
    assert info.value.value == asset_id


_ASSET_DIR = Path("/var/inf/inputAssets/r1")
_CTX = InvocationContext(request_id="r1", asset_dir=_ASSET_DIR, output_dir=Path("/o/r1"))


@given(st.text())
@example("..")
@example("../x")
@example("a/../../b")
@example(" ok ")
def test_asset_path_never_escapes_the_asset_directory(asset_id: str) -> None:
    try:
        path = _CTX.asset_path(asset_id)
    except InvalidHeader:
        return
    assert path.parent == _ASSET_DIR
    assert path.name not in ("", ".", "..")


def test_iter_assets_yields_declared_assets_in_header_order(tmp_path: Path) -> None:
    ctx = InvocationContext.for_local_run(tmp_path, request_id="r1", asset_ids=("b", "a", "c"))
    for asset_id in ("a", "b", "c", "undeclared"):
        (ctx.asset_dir / asset_id).write_text(asset_id)
    assert [path.name for path in ctx.iter_assets()] == ["b", "a", "c"]
    assert [path.read_text() for path in ctx.iter_assets()] == ["b", "a", "c"]


def test_iter_assets_of_no_declared_assets_yields_nothing(tmp_path: Path) -> None:
    ctx = InvocationContext.for_local_run(tmp_path, request_id="r1")
    (ctx.asset_dir / "stray").write_text("x")
    assert list(ctx.iter_assets()) == []


def test_iter_assets_raises_asset_not_found_for_a_missing_asset(tmp_path: Path) -> None:
    ctx = InvocationContext.for_local_run(tmp_path, request_id="r1", asset_ids=("a", "gone"))
    (ctx.asset_dir / "a").write_text("a")
    assets = ctx.iter_assets()
    assert next(assets).name == "a"
    with pytest.raises(AssetNotFound) as info:
        next(assets)
    error = info.value
    assert isinstance(error, FileNotFoundError)
    assert error.asset_id == "gone"
    assert error.directory == ctx.asset_dir
    assert "'gone'" in str(error)
    assert str(ctx.asset_dir) in str(error)


def test_iter_assets_treats_a_directory_as_a_missing_asset(tmp_path: Path) -> None:
    ctx = InvocationContext.for_local_run(tmp_path, request_id="r1", asset_ids=("d",))
    (ctx.asset_dir / "d").mkdir()
    with pytest.raises(AssetNotFound):
        list(ctx.iter_assets())


def test_iter_assets_never_yields_a_path_outside_the_asset_directory(tmp_path: Path) -> None:
    # for_local_run passes asset_ids straight to the constructor, so iter_assets must check them.
    ctx = InvocationContext.for_local_run(tmp_path, request_id="r1", asset_ids=("../secret",))
    (ctx.asset_dir.parent / "secret").write_text("not an asset of r1")
    with pytest.raises(InvalidHeader):
        list(ctx.iter_assets())


# -- outputs and progress through the context -------------------------------------------------


def test_write_output_and_open_output_write_into_the_output_directory(tmp_path: Path) -> None:
    ctx = InvocationContext.for_local_run(tmp_path, request_id="r1")
    assert ctx.write_output("a.txt", "hello") == ctx.output_dir / "a.txt"
    with ctx.open_output("b/c.bin") as stream:
        stream.write(b"\x00\x01")
    with ctx.open_output("d.txt", "w", encoding="latin-1") as stream:
        stream.write("é")
    assert (ctx.output_dir / "a.txt").read_text() == "hello"
    assert (ctx.output_dir / "b" / "c.bin").read_bytes() == b"\x00\x01"
    assert (ctx.output_dir / "d.txt").read_bytes() == b"\xe9"


def test_report_progress_writes_the_progress_file_with_the_request_id(tmp_path: Path) -> None:
    ctx = InvocationContext.for_local_run(tmp_path, request_id="r1")
    path = ctx.report_progress(40, {"step": 2})
    assert path == ctx.output_dir / "progress"
    assert json.loads(path.read_bytes()) == {
        "id": "r1",
        "progress": 40,
        "partialResponse": {"step": 2},
    }


def test_progress_reporter_writes_for_this_request(tmp_path: Path) -> None:
    ctx = InvocationContext.for_local_run(tmp_path, request_id="r1")
    with ctx.progress_reporter(min_interval=0) as reporter:
        assert isinstance(reporter, ProgressReporter)
        assert reporter.update(10)
    assert json.loads((ctx.output_dir / "progress").read_bytes())["id"] == "r1"
