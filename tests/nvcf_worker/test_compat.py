"""Drop-ins for NVIDIA's `nvcf_container` helpers: same names and call shapes, validated values."""

from __future__ import annotations

import inspect
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from nvcf_worker import compat
from nvcf_worker.errors import InvalidHeader, InvalidProgress, ProgressTooLarge, SecretsError
from nvcf_worker.logging import bind_request_id
from nvcf_worker.progress import MAX_PROGRESS_FILE_BYTES

PARAMS = {
    "NVCF-REQID": "req-1",
    "NVCF-NCAID": "nca-1",
    "NVCF-SUB": "sub-1",
    "NVCF-FUNCTION-ID": "fid-1",
    "NVCF-FUNCTION-NAME": "echo",
    "NVCF-FUNCTION-ASSET-IDS": "a1,a2",
    "NVCF-MAX-RESPONSE-SIZE-BYTES": "2048",
    "NVCF-ASSET-DIR": "/mnt/in/req-1",
    "NVCF-LARGE-OUTPUT-DIR": "/mnt/out/req-1",
}

PER_REQUEST_HELPERS = [
    "get_request_id",
    "get_output_path",
    "get_input_path",
    "get_max_msg_size",
    "get_nca_id",
    "get_asset_ids",
    "get_properties_sub",
    "get_function_id",
    "get_function_name",
]


def lower(params: dict[str, Any]) -> dict[str, Any]:
    return {name.lower(): value for name, value in params.items()}


@pytest.fixture(params=["upper", "lower", "cimultidict"])
def params(request: pytest.FixtureRequest) -> Any:
    if request.param == "upper":
        return dict(PARAMS)
    if request.param == "lower":
        return lower(PARAMS)
    return CIMultiDict(lower(PARAMS))


# -- call shapes ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PER_REQUEST_HELPERS)
def test_each_per_request_helper_takes_request_parameters_only(name: str) -> None:
    helper: Callable[..., Any] = getattr(compat, name)
    assert list(inspect.signature(helper).parameters) == ["request_parameters"]


def test_update_progress_file_takes_parameters_value_and_optional_partial_response() -> None:
    signature = inspect.signature(compat.update_progress_file)
    assert list(signature.parameters) == [
        "request_parameters",
        "progress_value",
        "partial_response",
    ]
    assert signature.parameters["partial_response"].default is None


def test_get_secrets_and_get_logger_take_no_arguments() -> None:
    assert list(inspect.signature(compat.get_secrets).parameters) == []
    assert list(inspect.signature(compat.get_logger).parameters) == []


def test_every_helper_in_all_exists() -> None:
    for name in compat.__all__:
        assert hasattr(compat, name), name


# -- values from the parameters ---------------------------------------------------------------


def test_helpers_read_each_value_whatever_the_case_of_the_names(params: Any) -> None:
    assert compat.get_request_id(params) == "req-1"
    assert compat.get_nca_id(params) == "nca-1"
    assert compat.get_properties_sub(params) == "sub-1"
    assert compat.get_function_id(params) == "fid-1"
    assert compat.get_asset_ids(params) == ["a1", "a2"]
    assert compat.get_max_msg_size(params) == 2048
    assert compat.get_input_path(params) == "/mnt/in/req-1"
    assert compat.get_output_path(params) == "/mnt/out/req-1"


def test_get_function_name_returns_the_name_not_the_id(params: Any) -> None:
    assert compat.get_function_name(params) == "echo"


def test_helpers_return_nvidias_defaults_when_only_the_request_id_is_given() -> None:
    params = {"nvcf-reqid": "r1"}
    assert compat.get_nca_id(params) == ""
    assert compat.get_properties_sub(params) == ""
    assert compat.get_function_id(params) == ""
    assert compat.get_function_name(params) == ""
    assert compat.get_max_msg_size(params) == 5_000_000
    assert compat.DEFAULT_MAX_NVCF_MSG_SIZE == 5_000_000
    assert compat.get_input_path(params) == "/var/inf/inputAssets/r1"
    assert compat.get_output_path(params) == "/var/inf/response/r1"


def test_get_asset_ids_is_an_empty_list_when_absent_or_empty() -> None:
    assert compat.get_asset_ids({"NVCF-REQID": "r1"}) == []
    assert compat.get_asset_ids({"NVCF-FUNCTION-ASSET-IDS": ""}) == []


def test_get_request_id_is_empty_when_absent() -> None:
    assert compat.get_request_id({}) == ""
    assert compat.get_request_id({"NVCF-REQID": ""}) == ""


def test_empty_directory_headers_fall_back_to_the_defaults() -> None:
    params = {"NVCF-REQID": "r1", "NVCF-ASSET-DIR": "", "NVCF-LARGE-OUTPUT-DIR": ""}
    assert compat.get_input_path(params) == "/var/inf/inputAssets/r1"
    assert compat.get_output_path(params) == "/var/inf/response/r1"


def test_get_max_msg_size_accepts_an_int_parameter() -> None:
    assert compat.get_max_msg_size({"NVCF-MAX-RESPONSE-SIZE-BYTES": 77}) == 77


# -- invalid values ---------------------------------------------------------------------------


@pytest.mark.parametrize("request_id", ["../x", "a/b", ".hidden", "x" * 129])
def test_get_request_id_refuses_an_unsafe_id(request_id: str) -> None:
    with pytest.raises(InvalidHeader) as info:
        compat.get_request_id({"NVCF-REQID": request_id})
    assert info.value.header == "NVCF-REQID"


@pytest.mark.parametrize("size", ["5MB", "1e6", "5.0", "", "-1", True])
def test_get_max_msg_size_refuses_a_non_integer_or_negative_size(size: object) -> None:
    with pytest.raises(InvalidHeader) as info:
        compat.get_max_msg_size({"NVCF-MAX-RESPONSE-SIZE-BYTES": size})
    assert info.value.header == "NVCF-MAX-RESPONSE-SIZE-BYTES"


@pytest.mark.parametrize(
    ("helper", "header"),
    [(compat.get_output_path, "NVCF-LARGE-OUTPUT-DIR"), (compat.get_input_path, "NVCF-ASSET-DIR")],
)
@pytest.mark.parametrize("value", ["relative", "/var/../etc", "/x\x00"])
def test_directory_helpers_refuse_relative_or_escaping_directories(
    helper: Callable[[dict[str, str]], str], header: str, value: str
) -> None:
    with pytest.raises(InvalidHeader) as info:
        helper({"NVCF-REQID": "r1", header: value})
    assert info.value.header == header


@pytest.mark.parametrize("helper", [compat.get_output_path, compat.get_input_path])
def test_directory_helpers_need_a_request_id_for_the_default(
    helper: Callable[[dict[str, str]], str],
) -> None:
    with pytest.raises(InvalidHeader) as info:
        helper({})
    assert info.value.header == "NVCF-REQID"
    with pytest.raises(InvalidHeader):
        helper({"NVCF-REQID": "../x"})


def test_get_asset_ids_refuses_an_unsafe_id() -> None:
    with pytest.raises(InvalidHeader) as info:
        compat.get_asset_ids({"NVCF-FUNCTION-ASSET-IDS": "a1,../etc"})
    assert info.value.header == "NVCF-FUNCTION-ASSET-IDS"


# -- update_progress_file ---------------------------------------------------------------------


def test_update_progress_file_writes_atomically_into_the_large_output_dir(tmp_path: Path) -> None:
    params = {"nvcf-reqid": "r1", "nvcf-large-output-dir": str(tmp_path)}
    assert compat.update_progress_file(params, 30, {"partial": "text"}) is None
    assert json.loads((tmp_path / "progress").read_bytes()) == {
        "id": "r1",
        "progress": 30,
        "partialResponse": {"partial": "text"},
    }
    compat.update_progress_file(params, 60)
    assert json.loads((tmp_path / "progress").read_bytes())["partialResponse"] == {}
    assert os.listdir(tmp_path) == ["progress"]


def test_update_progress_file_validates_value_size_and_parameters(tmp_path: Path) -> None:
    params = {"NVCF-REQID": "r1", "NVCF-LARGE-OUTPUT-DIR": str(tmp_path)}
    with pytest.raises(InvalidProgress):
        compat.update_progress_file(params, 101)
    with pytest.raises(ProgressTooLarge):
        compat.update_progress_file(params, 50, {"blob": "x" * MAX_PROGRESS_FILE_BYTES})
    with pytest.raises(InvalidHeader):
        compat.update_progress_file({"NVCF-LARGE-OUTPUT-DIR": str(tmp_path)}, 50)
    with pytest.raises(InvalidHeader):
        compat.update_progress_file({"NVCF-REQID": "r1", "NVCF-LARGE-OUTPUT-DIR": "rel"}, 50)
    assert os.listdir(tmp_path) == []


# -- get_secrets ------------------------------------------------------------------------------


def test_get_secrets_reads_the_module_level_secrets_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secrets.json"
    path.write_text('{"TOKEN": "t"}')
    monkeypatch.setattr(compat, "SECRETS_PATH", str(path))
    assert compat.get_secrets() == {"TOKEN": "t"}


def test_get_secrets_of_a_missing_file_raises_secrets_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compat, "SECRETS_PATH", str(tmp_path / "absent.json"))
    with pytest.raises(SecretsError):
        compat.get_secrets()


def test_secrets_path_defaults_to_nvidias_mount() -> None:
    assert compat.SECRETS_PATH == "/var/secrets/secrets.json"


# -- get_logger -------------------------------------------------------------------------------


@pytest.fixture
def restored_root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def test_get_logger_logs_in_the_nvcf_format_with_the_request_id(
    restored_root_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stdout", stream)
    logger = compat.get_logger()
    compat.get_logger()  # a second call must not duplicate lines
    assert isinstance(logger, logging.Logger)
    with bind_request_id("r1"):
        logger.info("working")
    [line] = stream.getvalue().splitlines()
    assert line.endswith(" [INFO] [INFERENCE] [r1] working")


def test_get_logger_keeps_a_level_the_function_configured() -> None:
    import logging

    from nvcf_worker import compat
    from nvcf_worker.logging import configure_logging

    root = logging.getLogger()
    saved_level, saved_handlers = root.level, list(root.handlers)
    try:
        configure_logging(logging.DEBUG)
        compat.get_logger()
        assert root.level == logging.DEBUG
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_get_config_value_prefers_the_environment_over_the_model_config(monkeypatch) -> None:
    from nvcf_worker import compat

    config = {"parameters": {"MODEL_NAME": {"string_value": "from-config"}}}
    monkeypatch.delenv("MODEL_NAME", raising=False)
    assert compat.get_config_value("MODEL_NAME", config) == "from-config"
    monkeypatch.setenv("MODEL_NAME", "from-env")
    assert compat.get_config_value("MODEL_NAME", config) == "from-env"


def test_missing_secrets_file_is_also_a_file_not_found_error(tmp_path, monkeypatch) -> None:
    import pytest

    from nvcf_worker import SecretsNotFound, compat

    monkeypatch.setattr(compat, "SECRETS_PATH", str(tmp_path / "absent.json"))
    with pytest.raises(FileNotFoundError):
        compat.get_secrets()
    with pytest.raises(SecretsNotFound):
        compat.get_secrets()


# -- every name of NVIDIA's module ------------------------------------------------------------

#: Each name of `nv_cloud_function_helpers/nvcf_container/helpers.py`, with its parameters.
NVIDIA_FUNCTIONS: dict[str, list[str]] = {
    "upload_file": ["filename", "url", "headers", "timeout"],
    "upload": ["stream", "url", "headers", "timeout"],
    "_uppercase_dict_keys": ["d"],
    "get_logger": [],
    "update_progress_file": ["request_parameters", "progress_value", "partial_response"],
    "get_scalar_inputs": ["request", "pairs"],
    "get_output_path": ["request_parameters"],
    "get_input_path": ["request_parameters"],
    "get_max_msg_size": ["request_parameters"],
    "get_nca_id": ["request_parameters"],
    "get_request_id": ["request_parameters"],
    "get_asset_ids": ["request_parameters"],
    "get_properties_sub": ["request_parameters"],
    "get_function_id": ["request_parameters"],
    "get_function_name": ["request_parameters"],
    "get_config_value": ["value_name", "model_config"],
    "load_npz": ["input_str", "root_dir", "array_name"],
    "load_image": ["input_str", "root_dir", "has_transparency"],
    "encode_bytes_base64_to_str": ["b"],
    "encode_image_to_base64": ["image", "image_format", "image_quality"],
    "decode_base64_str_to_bytes": ["base64_str"],
    "decode_base64_to_image": ["base64_str", "has_transparency"],
    "save_image_with_directory": ["image", "path", "image_format", "image_quality"],
    "get_secrets": [],
}
NVIDIA_CONSTANTS = {
    "DEFAULT_MAX_NVCF_MSG_SIZE": 5 * 1000 * 1000,
    "IMAGE_FORMAT": "JPEG",
    "IMAGE_QUALITY": 90,
    "SECRETS_PATH": "/var/secrets/secrets.json",
}


@pytest.mark.parametrize("name", sorted(NVIDIA_FUNCTIONS))
def test_every_nvidia_function_exists_with_its_parameter_names(name: str) -> None:
    helper: Callable[..., Any] = getattr(compat, name)
    assert list(inspect.signature(helper).parameters) == NVIDIA_FUNCTIONS[name]
    assert name in compat.__all__


def test_every_nvidia_constant_exists_with_its_value() -> None:
    for name, value in NVIDIA_CONSTANTS.items():
        assert getattr(compat, name) == value, name
        assert name in compat.__all__
    assert compat.b64_pattern.match("aGVsbG8=")
    assert compat.b64_pattern.match("/9j/4AAQ")
    assert not compat.b64_pattern.match("image.png")


def test_optional_parameters_default_as_nvidias(tmp_path: Path) -> None:
    def defaults(name: str) -> dict[str, object]:
        parameters = inspect.signature(getattr(compat, name)).parameters.values()
        return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}

    assert defaults("upload") == {"timeout": 30}
    assert defaults("upload_file") == {"timeout": 30}
    assert defaults("load_image") == {"has_transparency": False}
    assert defaults("encode_image_to_base64") == {"image_format": "JPEG", "image_quality": 90}
    assert defaults("save_image_with_directory") == {
        "path": "",
        "image_format": "JPEG",
        "image_quality": 90,
    }
    assert defaults("get_config_value") == {"model_config": None}


def test_every_nvidia_name_exists_without_numpy_or_pillow(tmp_path: Path) -> None:
    """A bare install: NumPy and Pillow absent, yet `import nvcf_worker.compat` offers it all."""
    names = sorted([*NVIDIA_FUNCTIONS, *NVIDIA_CONSTANTS, "b64_pattern"])
    script = (
        "import sys\n"
        "sys.modules.update(numpy=None, PIL=None)\n"
        "from nvcf_worker import compat\n"
        f"missing = [n for n in {names!r} if not hasattr(compat, n)]\n"
        "assert not missing, missing\n"
        "try:\n"
        "    compat.load_image('x', '.')\n"
        "except ModuleNotFoundError as error:\n"
        "    print(error)\n"
    )
    source_root = Path(compat.__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(source_root)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "pip install 'nvcf-worker[helpers]'" in result.stdout


# -- _uppercase_dict_keys ---------------------------------------------------------------------


def test_uppercase_dict_keys_upper_cases_the_names_as_nvidias_samples_expect() -> None:
    headers = CIMultiDict(lower(PARAMS))  # what Starlette/aiohttp hand a function: lower case
    upper = compat._uppercase_dict_keys(headers)
    assert upper == PARAMS
    assert type(upper) is dict
    assert compat.get_output_path(upper) == "/mnt/out/req-1"
    assert compat._uppercase_dict_keys({}) == {}


def test_uppercase_dict_keys_keeps_the_first_of_names_that_differ_in_case() -> None:
    assert compat._uppercase_dict_keys({"nvcf-reqid": "first", "NVCF-REQID": "second"}) == {
        "NVCF-REQID": "first"
    }


# -- float progress, as NVIDIA's samples pass it ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (0.5555555555555556 * 100, 55),
        (5 / 9 * 100, 55),
        (99.99, 99),
        (100.0, 100),
        (0.0, 0),
        (-0.0, 0),
        (100.00000000000001, 100),
        (-1e-9, 0),
        (250.0, 100),
        (-3.5, 0),
    ],
)
def test_update_progress_file_writes_a_float_as_an_integer_rounded_down_and_clamped(
    tmp_path: Path, value: float, written: int
) -> None:
    params = {"nvcf-reqid": "r1", "nvcf-large-output-dir": str(tmp_path)}
    compat.update_progress_file(params, progress_value=value)
    data = (tmp_path / "progress").read_bytes()
    assert json.loads(data)["progress"] == written
    assert f'"progress":{written},'.encode() in data  # an integer, not 55.0


def test_update_progress_file_accepts_numpy_numbers(tmp_path: Path) -> None:
    numpy = pytest.importorskip("numpy")
    params = {"NVCF-REQID": "r1", "NVCF-LARGE-OUTPUT-DIR": str(tmp_path)}
    for value, written in [(numpy.float32(42.9), 42), (numpy.float64(7.5), 7), (numpy.int64(9), 9)]:
        compat.update_progress_file(params, value)
        assert json.loads((tmp_path / "progress").read_bytes())["progress"] == written


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), float("-inf"), "50", True, False, None, [50], 101, -1]
)
def test_update_progress_file_refuses_non_finite_non_numbers_and_integers_out_of_range(
    tmp_path: Path, value: object
) -> None:
    params = {"NVCF-REQID": "r1", "NVCF-LARGE-OUTPUT-DIR": str(tmp_path)}
    with pytest.raises(InvalidProgress, match="from 0 to 100"):
        compat.update_progress_file(params, value)
    assert os.listdir(tmp_path) == []
