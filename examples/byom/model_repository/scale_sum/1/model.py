"""scale_sum: a Triton python-backend model that serves each request with its NVCF context.

OUTPUT = INPUT * SCALE, SUM = the sum of OUTPUT, REQUEST_ID = the NVCF request id the worker
sent (Triton forwards the `NVCF-*` headers as request parameters when started with
`--http-header-forward-pattern (?i)NVCF-.*`, as `nvcf-tritonserver` does). Progress goes to
NVCF through the progress file; a request without values is refused on its own.
"""

import logging

import numpy as np
import triton_python_backend_utils as pb_utils

from nvcf_worker import InvocationContext, configure_logging
from nvcf_worker.integrations.triton_backend import error_response, execute_per_request

logger = logging.getLogger("scale_sum")


class TritonPythonModel:
    def initialize(self, args):
        # "<time> [INFO] [INFERENCE] [<request id>] message", the format NVCF collects.
        configure_logging()

    def execute(self, requests):
        # One response per request; a request whose NVCF headers are invalid, or whose
        # infer() raises, fails alone.
        return execute_per_request(requests, self.infer)

    def infer(self, request, ctx: InvocationContext):
        values = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().reshape(-1)
        if values.size == 0:
            logger.warning("refused: INPUT is empty")
            return error_response("INPUT must hold at least one value")
        scale_tensor = pb_utils.get_input_tensor_by_name(request, "SCALE")
        scale = 1.0 if scale_tensor is None else float(scale_tensor.as_numpy().reshape(-1)[0])

        scaled = (values * np.float32(scale)).astype(np.float32)
        # The caller may see this as a 202 with NVCF-PERCENT-COMPLETE: 50 while it waits.
        ctx.report_progress(50, {"stage": "scaled", "elements": int(values.size)})
        total = float(scaled.sum(dtype=np.float64))
        ctx.report_progress(100, {"stage": "summed"})
        logger.info("scaled %d values by %g, sum %g", values.size, scale, total)

        return {
            "OUTPUT": scaled,
            "SUM": np.array([total], dtype=np.float32),
            "REQUEST_ID": np.array([ctx.request_id.encode()], dtype=np.object_),
        }
