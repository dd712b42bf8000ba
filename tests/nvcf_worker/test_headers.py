"""Header names and the strict parsers behind `InvocationContext.from_headers`."""

from __future__ import annotations

import re
import string
from pathlib import PurePosixPath

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from starlette.datastructures import Headers

from nvcf_worker import headers as h
from nvcf_worker.errors import InvalidHeader, NVCFWorkerError

SAFE_ALPHABET = string.ascii_letters + string.digits + "._-"


# -- names ------------------------------------------------------------------------------------


def test_header_names_are_the_literal_upper_case_nvcf_names() -> None:
    names = [
        h.REQUEST_ID,
        h.SUB,
        h.NCA_ID,
        h.FUNCTION_NAME,
        h.FUNCTION_ID,
        h.FUNCTION_VERSION_ID,
        h.ASSET_DIR,
        h.LARGE_OUTPUT_DIR,
        h.MAX_RESPONSE_SIZE_BYTES,
        h.NSPECT_ID,
        h.BACKEND,
        h.INSTANCE_TYPE,
        h.REGION,
        h.ENV,
        h.FUNCTION_ASSET_IDS,
        h.INVOCATION_REGION,
        h.POLL_SECONDS,
    ]
    assert h.REQUEST_ID == "NVCF-REQID"
    assert h.LARGE_OUTPUT_DIR == "NVCF-LARGE-OUTPUT-DIR"
    assert h.FUNCTION_ASSET_IDS == "NVCF-FUNCTION-ASSET-IDS"
    assert len(set(names)) == len(names)
    for name in names:
        assert name == name.upper()
        assert name.startswith("NVCF-")


def test_worker_owned_headers_include_every_path_and_identity_header() -> None:
    for name in (h.REQUEST_ID, h.ASSET_DIR, h.LARGE_OUTPUT_DIR, h.FUNCTION_ASSET_IDS, h.NCA_ID):
        assert name in h.WORKER_OWNED_HEADERS


def test_defaults_are_nvidias_directories_and_five_million_bytes() -> None:
    assert str(h.DEFAULT_ASSET_BASE_DIR) == "/var/inf/inputAssets"
    assert str(h.DEFAULT_RESPONSE_BASE_DIR) == "/var/inf/response"
    assert h.DEFAULT_MAX_RESPONSE_BYTES == 5_000_000


# -- normalize_headers ------------------------------------------------------------------------


def test_normalize_headers_upper_cases_names_of_a_plain_dict() -> None:
    assert h.normalize_headers({"nvcf-reqid": "r1", "Nvcf-Sub": "s"}) == {
        "NVCF-REQID": "r1",
        "NVCF-SUB": "s",
    }


def test_normalize_headers_keeps_non_string_values_of_pytriton_parameters() -> None:
    assert h.normalize_headers({"nvcf-max-response-size-bytes": 7}) == {
        "NVCF-MAX-RESPONSE-SIZE-BYTES": 7
    }


def test_normalize_headers_first_of_repeated_names_wins_in_a_cimultidict() -> None:
    multi = CIMultiDict([("nvcf-reqid", "first"), ("NVCF-REQID", "second")])
    assert h.normalize_headers(multi)["NVCF-REQID"] == "first"
    assert h.normalize_headers(CIMultiDictProxy(multi))["NVCF-REQID"] == "first"


def test_normalize_headers_first_of_repeated_names_wins_in_starlette_headers() -> None:
    headers = Headers(raw=[(b"nvcf-reqid", b"first"), (b"nvcf-reqid", b"second"), (b"x", b"1")])
    assert h.normalize_headers(headers) == {"NVCF-REQID": "first", "X": "1"}


def test_normalize_headers_decodes_asgi_byte_pairs_as_latin1() -> None:
    raw = [(b"nvcf-function-name", b"caf\xe9"), (b"nvcf-reqid", b"r1"), (b"nvcf-reqid", b"r2")]
    assert h.normalize_headers(raw) == {"NVCF-FUNCTION-NAME": "café", "NVCF-REQID": "r1"}


def test_normalize_headers_accepts_a_generator_of_pairs() -> None:
    pairs = ((name, value) for name, value in [("a", "1"), ("A", "2")])
    assert h.normalize_headers(pairs) == {"A": "1"}


# -- is_safe_component ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "a",
        "A1",
        "0",
        "req-1",
        "asset_2.bin",
        "a..b",
        "a" * 128,
        "3f2a9c1e-1b2c-4d5e-8f90-1234567890ab",
    ],
)
def test_is_safe_component_accepts_plain_names(value: str) -> None:
    assert h.is_safe_component(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        ".",
        "..",
        ".hidden",
        "-x",
        "_x",
        "a/b",
        "../x",
        "a\\b",
        "a\x00",
        "a" * 129,
        "a b",
        "é",
        "a\n",
    ],
)
def test_is_safe_component_refuses_anything_that_is_not_one_plain_name(value: str) -> None:
    assert not h.is_safe_component(value)


@given(st.text())
@example("..")
@example(".")
@example("a/b")
@example("a\n")
def test_is_safe_component_accepts_only_exactly_one_path_component(value: str) -> None:
    if h.is_safe_component(value):
        assert "/" not in value
        assert "\x00" not in value
        assert value not in (".", "..")
        assert not value.startswith(".")
        assert 1 <= len(value) <= 128
        assert PurePosixPath(value).parts == (value,)
        assert PurePosixPath("/base", value).parent == PurePosixPath("/base")


@given(st.text(alphabet=SAFE_ALPHABET, min_size=1, max_size=128))
def test_is_safe_component_accepts_every_name_of_the_safe_alphabet_not_starting_with_punctuation(
    value: str,
) -> None:
    assert h.is_safe_component(value) == (value[0] not in "._-")


# -- parse_safe_component ---------------------------------------------------------------------


def test_parse_safe_component_strips_surrounding_whitespace() -> None:
    assert h.parse_safe_component(h.REQUEST_ID, "  r1 \t") == "r1"


def test_parse_safe_component_accepts_an_int_as_its_decimal_text() -> None:
    assert h.parse_safe_component(h.REQUEST_ID, 42) == "42"


@pytest.mark.parametrize("value", [None, True, 1.5, b"r1", ["r1"]])
def test_parse_safe_component_refuses_values_that_are_not_text(value: object) -> None:
    with pytest.raises(InvalidHeader) as info:
        h.parse_safe_component(h.REQUEST_ID, value)
    assert info.value.header == h.REQUEST_ID
    assert info.value.value is value


def test_parse_safe_component_error_names_the_header_and_the_value() -> None:
    with pytest.raises(InvalidHeader) as info:
        h.parse_safe_component(h.FUNCTION_ASSET_IDS, "../etc")
    error = info.value
    assert isinstance(error, NVCFWorkerError)
    assert isinstance(error, ValueError)
    assert error.header == h.FUNCTION_ASSET_IDS
    assert error.value == "../etc"
    assert "NVCF-FUNCTION-ASSET-IDS" in str(error)
    assert "'../etc'" in str(error)
    assert error.reason in str(error)


# -- parse_int --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("5000000", 5_000_000), (" 12 ", 12), ("007", 7), (5, 5), (0, 0)],
)
def test_parse_int_accepts_decimal_integers(value: object, expected: int) -> None:
    assert h.parse_int(h.MAX_RESPONSE_SIZE_BYTES, value) == expected


@pytest.mark.parametrize(
    "value",
    ["5MB", "1e6", "5.0", "", " ", "+5", "0x10", "5_000", "٣", "--1", "1-", True, False, 5.0, None],
)
def test_parse_int_refuses_anything_but_a_decimal_integer(value: object) -> None:
    with pytest.raises(InvalidHeader) as info:
        h.parse_int(h.MAX_RESPONSE_SIZE_BYTES, value)
    assert info.value.header == h.MAX_RESPONSE_SIZE_BYTES
    assert info.value.value is value


@pytest.mark.parametrize("value", ["-1", -1, "-5000000"])
def test_parse_int_refuses_a_value_below_the_minimum(value: object) -> None:
    with pytest.raises(InvalidHeader, match="at least 0"):
        h.parse_int(h.MAX_RESPONSE_SIZE_BYTES, value)


def test_parse_int_without_minimum_accepts_negative_numbers() -> None:
    assert h.parse_int(h.POLL_SECONDS, "-3", minimum=None) == -3
    assert h.parse_int(h.POLL_SECONDS, -3, minimum=None) == -3


def test_parse_int_honours_a_custom_minimum() -> None:
    assert h.parse_int("X", "10", minimum=10) == 10
    with pytest.raises(InvalidHeader, match="at least 10"):
        h.parse_int("X", "9", minimum=10)


@given(st.integers(min_value=-(10**19) + 1, max_value=10**19 - 1))
def test_parse_int_round_trips_every_decimal_text_of_up_to_19_digits(number: int) -> None:
    assert h.parse_int("X", str(number), minimum=None) == number
    assert h.parse_int("X", number, minimum=None) == number


_DECIMAL = re.compile(r"-?[0-9]+")


@given(st.text(max_size=25))
@example("1e6")
@example("٣")
@example("5_0")
@example("+1")
def test_parse_int_accepts_exactly_ascii_decimal_text(text: str) -> None:
    stripped = text.strip()
    decimal = _DECIMAL.fullmatch(stripped) is not None and len(stripped.lstrip("-")) <= 19
    if decimal:
        assert h.parse_int("X", text, minimum=None) == int(stripped)
    else:
        with pytest.raises(InvalidHeader):
            h.parse_int("X", text, minimum=None)


# -- parse_absolute_dir -----------------------------------------------------------------------


def test_parse_absolute_dir_returns_the_stripped_absolute_directory() -> None:
    parsed = h.parse_absolute_dir(h.ASSET_DIR, " /var/inf/inputAssets/r1 ")
    assert str(parsed) == "/var/inf/inputAssets/r1"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("relative/dir", "absolute"),
        ("", "absolute"),
        ("/var/inf/../etc", "'..'"),
        ("/..", "'..'"),
        ("/var/inf/r1\x00", "NUL"),
        (7, "absolute"),
        (None, "string"),
        (b"/var", "string"),
    ],
)
def test_parse_absolute_dir_refuses_relative_dotdot_nul_and_non_text(
    value: object, reason: str
) -> None:
    with pytest.raises(InvalidHeader, match=reason) as info:
        h.parse_absolute_dir(h.LARGE_OUTPUT_DIR, value)
    assert info.value.header == h.LARGE_OUTPUT_DIR
    assert info.value.value is value


# -- parse_asset_ids --------------------------------------------------------------------------


def test_parse_asset_ids_splits_on_commas_and_ignores_blanks() -> None:
    assert h.parse_asset_ids(h.FUNCTION_ASSET_IDS, " a1, b2,,c3 ,") == ("a1", "b2", "c3")


def test_parse_asset_ids_of_an_empty_value_is_empty() -> None:
    assert h.parse_asset_ids(h.FUNCTION_ASSET_IDS, "") == ()


@pytest.mark.parametrize("value", ["a1,../x", "a1,b/c", "a1,.hidden", "a1," + "x" * 129])
def test_parse_asset_ids_refuses_a_list_with_one_unsafe_id(value: str) -> None:
    with pytest.raises(InvalidHeader) as info:
        h.parse_asset_ids(h.FUNCTION_ASSET_IDS, value)
    assert info.value.header == h.FUNCTION_ASSET_IDS


@given(st.lists(st.text(alphabet=SAFE_ALPHABET, min_size=1, max_size=20), max_size=8))
def test_parse_asset_ids_round_trips_a_joined_list_of_safe_ids(ids: list[str]) -> None:
    safe = [value for value in ids if h.is_safe_component(value)]
    assert h.parse_asset_ids(h.FUNCTION_ASSET_IDS, ",".join(safe)) == tuple(safe)
