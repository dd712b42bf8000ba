"""nvcf_worker: honour the NVIDIA Cloud Functions contract inside a function container.

Typed `NVCF-*` header context, asset and large-output directories, outputs that are never picked
up half-written, atomic size-checked progress reports, secrets and NVCF-format logging.
Integrations (PyTriton, Triton python backend, aiohttp, ASGI) live in `nvcf_worker.integrations`
and are imported only when used.
"""

from nvcf_worker.context import InvocationContext
from nvcf_worker.errors import (
    AssetNotFound,
    InvalidHeader,
    InvalidOutputName,
    InvalidProgress,
    NVCFWorkerError,
    ProgressTooLarge,
    SecretsError,
    SecretsNotFound,
)
from nvcf_worker.logging import bind_request_id, configure_logging, current_request_id
from nvcf_worker.outputs import open_output, validate_output_name, write_output
from nvcf_worker.progress import (
    MAX_PROGRESS_FILE_BYTES,
    ProgressReporter,
    encode_progress,
    write_progress,
)
from nvcf_worker.secrets import DEFAULT_SECRETS_PATH, read_secrets
from nvcf_worker.tasks import TaskProgressWriter

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_SECRETS_PATH",
    "MAX_PROGRESS_FILE_BYTES",
    "AssetNotFound",
    "InvalidHeader",
    "InvalidOutputName",
    "InvalidProgress",
    "InvocationContext",
    "NVCFWorkerError",
    "ProgressReporter",
    "ProgressTooLarge",
    "SecretsError",
    "SecretsNotFound",
    "TaskProgressWriter",
    "bind_request_id",
    "configure_logging",
    "current_request_id",
    "encode_progress",
    "open_output",
    "read_secrets",
    "validate_output_name",
    "write_output",
    "write_progress",
]
