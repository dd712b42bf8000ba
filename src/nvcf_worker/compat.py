"""Drop-in replacements for NVIDIA's `nv_cloud_function_helpers.nvcf_container` helpers.

Every name of NVIDIA's module, same call signatures, so a function switches by changing one import;
values are validated and the progress file is written atomically and size-checked. The upload,
NumPy and Pillow helpers live in `compat_media` and are re-exported here.
"""

from __future__ import annotations

import logging
import math
import numbers
import operator
import os
from collections.abc import Mapping
from typing import Any, TypeVar

from nvcf_worker import headers as h
from nvcf_worker.compat_media import (
    IMAGE_FORMAT,
    IMAGE_QUALITY,
    b64_pattern,
    decode_base64_str_to_bytes,
    decode_base64_to_image,
    encode_bytes_base64_to_str,
    encode_image_to_base64,
    load_image,
    load_npz,
    save_image_with_directory,
    upload,
    upload_file,
)
from nvcf_worker.context import InvocationContext
from nvcf_worker.errors import InvalidHeader, InvalidProgress
from nvcf_worker.logging import configure_logging, is_configured
from nvcf_worker.progress import write_progress
from nvcf_worker.secrets import DEFAULT_SECRETS_PATH, SECRETS_PATH_ENV, read_secrets

__all__ = [
    "DEFAULT_MAX_NVCF_MSG_SIZE",
    "IMAGE_FORMAT",
    "IMAGE_QUALITY",
    "SECRETS_PATH",
    "_uppercase_dict_keys",
    "b64_pattern",
    "decode_base64_str_to_bytes",
    "decode_base64_to_image",
    "encode_bytes_base64_to_str",
    "encode_image_to_base64",
    "get_asset_ids",
    "get_config_value",
    "get_function_id",
    "get_function_name",
    "get_input_path",
    "get_logger",
    "get_max_msg_size",
    "get_nca_id",
    "get_output_path",
    "get_properties_sub",
    "get_request_id",
    "get_scalar_inputs",
    "get_secrets",
    "load_image",
    "load_npz",
    "save_image_with_directory",
    "update_progress_file",
    "upload",
    "upload_file",
]

DEFAULT_MAX_NVCF_MSG_SIZE = h.DEFAULT_MAX_RESPONSE_BYTES
#: Module-level like NVIDIA's; a test or a local run may point it elsewhere.
SECRETS_PATH = str(DEFAULT_SECRETS_PATH)


_V = TypeVar("_V")


def _uppercase_dict_keys(d: Mapping[str, _V]) -> dict[str, _V]:
    """A dict of `d` with upper-cased keys; when two keys differ only in case, the first wins
    (as `InvocationContext.from_headers`). Private in NVIDIA's module, but its samples use it."""
    upper: dict[str, _V] = {}
    for key, value in d.items():
        upper.setdefault(key.upper(), value)
    return upper


def _text(request_parameters: Mapping[str, Any], name: str) -> str:
    value = h.normalize_headers(request_parameters).get(name)
    return "" if value is None else str(value)


def _request_id(values: Mapping[str, Any]) -> str:
    raw = values.get(h.REQUEST_ID)
    if raw is None or raw == "":
        raise InvalidHeader(h.REQUEST_ID, raw, "missing; NVCF sends it with every call")
    return h.parse_safe_component(h.REQUEST_ID, raw)


def _directory(request_parameters: Mapping[str, Any], name: str, base: str) -> str:
    values = h.normalize_headers(request_parameters)
    value = values.get(name)
    if value not in (None, ""):
        return h.parse_absolute_dir(name, value)
    return f"{base}/{_request_id(values)}"


def get_logger() -> logging.Logger:
    """A logger that writes in the NVCF container format (with the request id when bound)."""
    if not is_configured():  # never reset a level or handler the function set up itself
        configure_logging(logging.INFO)
    return logging.getLogger("nvcf_worker.function")


def get_request_id(request_parameters: Mapping[str, Any]) -> str:
    """`NVCF-REQID`, or "" when absent; an unsafe id raises `InvalidHeader`."""
    raw = h.normalize_headers(request_parameters).get(h.REQUEST_ID)
    if raw is None or raw == "":
        return ""
    return h.parse_safe_component(h.REQUEST_ID, raw)


def get_output_path(request_parameters: Mapping[str, Any]) -> str:
    """`NVCF-LARGE-OUTPUT-DIR`, or `/var/inf/response/<reqid>`; must be absolute, no `..`."""
    return _directory(request_parameters, h.LARGE_OUTPUT_DIR, h.DEFAULT_RESPONSE_BASE_DIR)


def get_input_path(request_parameters: Mapping[str, Any]) -> str:
    """`NVCF-ASSET-DIR`, or `/var/inf/inputAssets/<reqid>`; must be absolute, no `..`."""
    return _directory(request_parameters, h.ASSET_DIR, h.DEFAULT_ASSET_BASE_DIR)


def get_max_msg_size(request_parameters: Mapping[str, Any]) -> int:
    """`NVCF-MAX-RESPONSE-SIZE-BYTES` as an int, 5 000 000 when absent; bad values raise."""
    raw = h.normalize_headers(request_parameters).get(h.MAX_RESPONSE_SIZE_BYTES)
    if raw is None:
        return DEFAULT_MAX_NVCF_MSG_SIZE
    return h.parse_int(h.MAX_RESPONSE_SIZE_BYTES, raw)


def get_nca_id(request_parameters: Mapping[str, Any]) -> str:
    """`NVCF-NCAID`, or ""."""
    return _text(request_parameters, h.NCA_ID)


def get_asset_ids(request_parameters: Mapping[str, Any]) -> list[str]:
    """`NVCF-FUNCTION-ASSET-IDS` as a list; [] when absent (NVIDIA's helper returns [""])."""
    raw = h.normalize_headers(request_parameters).get(h.FUNCTION_ASSET_IDS)
    return [] if raw is None else list(h.parse_asset_ids(h.FUNCTION_ASSET_IDS, raw))


def get_properties_sub(request_parameters: Mapping[str, Any]) -> str:
    """`NVCF-SUB`, or ""."""
    return _text(request_parameters, h.SUB)


def get_function_id(request_parameters: Mapping[str, Any]) -> str:
    """`NVCF-FUNCTION-ID`, or ""."""
    return _text(request_parameters, h.FUNCTION_ID)


def get_function_name(request_parameters: Mapping[str, Any]) -> str:
    """`NVCF-FUNCTION-NAME`, or "" (NVIDIA's helper returns the function id here by mistake)."""
    return _text(request_parameters, h.FUNCTION_NAME)


def _whole_percent(progress_value: object) -> int:
    """An integer as it is; a finite real number (`55.5`, NumPy's floats) rounded down and
    clamped to 0..100, since `done / total * 100` may land a hair outside; nothing else."""
    if isinstance(progress_value, bool):
        raise InvalidProgress(f"progress must be a number from 0 to 100, not {progress_value!r}")
    try:
        return operator.index(progress_value)  # type: ignore[arg-type]
    except TypeError:
        pass
    if isinstance(progress_value, numbers.Real):
        value = float(progress_value)
        if math.isfinite(value):
            return min(100, max(0, math.floor(value)))
    raise InvalidProgress(f"progress must be a finite number from 0 to 100, not {progress_value!r}")


def update_progress_file(
    request_parameters: Mapping[str, Any],
    progress_value: float,
    partial_response: Mapping[str, Any] | None = None,
) -> None:
    """Write the progress file atomically, validated and size-checked (`ProgressTooLarge`).

    A float percent is written as an integer: rounded down, clamped to 0..100 (NaN, infinities
    and non-numbers raise `InvalidProgress`); an integer must be from 0 to 100.
    """
    context = InvocationContext.from_headers(request_parameters)
    percent = _whole_percent(progress_value)
    write_progress(context.output_dir, context.request_id, percent, partial_response)


def get_config_value(value_name: str, model_config: Mapping[str, Any] | None = None) -> str:
    """An environment variable, else the Triton model config's string parameter of that name."""
    if model_config is None:
        return os.environ[value_name]
    default = str(model_config["parameters"][value_name]["string_value"])
    return os.environ.get(value_name, default)


def get_scalar_inputs(request: Any, pairs: list[Any]) -> list[Any]:
    """Scalar inputs of a Triton python-backend request, or defaults (inside Triton only).

    `pairs` holds `(name, default)` tuples or `(name,)`; bytes are decoded as UTF-8.
    """
    import triton_python_backend_utils as pb_utils  # only importable inside Triton

    values: list[Any] = []
    for pair in pairs:
        if len(pair) == 2:
            name, default = pair
        elif len(pair) == 1:
            name, default = pair[0], None
        else:
            raise ValueError(f"expected (name, default) or (name,), not {pair!r}")
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        value = default if tensor is None else tensor.as_numpy().item()
        if isinstance(value, bytes):
            value = value.decode("utf-8", "ignore")
        values.append(value)
    return values


def get_secrets() -> dict[str, Any]:
    """Read `/var/secrets/secrets.json` (or `$NVCF_SECRETS_PATH`, which `nvcf-sidecar dev` sets);
    raises `SecretsError` with a clear reason."""
    return read_secrets(os.environ.get(SECRETS_PATH_ENV) or SECRETS_PATH)
