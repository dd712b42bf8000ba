"""A python-backend model for tests that serves each request with its NVCF context.

Uses `nvcf_worker.integrations.triton_backend`, so it also proves the backend stub's interpreter
imports this environment's packages when started through the project launcher.
"""

import json
import logging

import numpy as np
import triton_python_backend_utils as pb_utils

from nvcf_worker import InvocationContext, configure_logging, current_request_id
from nvcf_worker.integrations.triton_backend import execute_per_request

logger = logging.getLogger("nvcf_context_model")


class TritonPythonModel:
    def initialize(self, args):
        configure_logging()

    def execute(self, requests):
        return execute_per_request(requests, self.infer)

    def infer(self, request, ctx: InvocationContext):
        texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().tolist()
        text = b" ".join(texts).decode()
        logger.info("serving %s", text)
        if text == "fail":
            raise RuntimeError("asked to fail")
        asset = ctx.asset_path(ctx.asset_ids[0]).read_bytes() if ctx.asset_ids else b""
        ctx.report_progress(50, {"stage": "read asset"})
        with ctx.open_output("result.txt") as output:
            output.write(asset + b"|" + text.encode())
        ctx.report_progress(100, {"stage": "done", "bytes": len(asset)})
        echo = {"context": ctx.to_headers(), "bound_request_id": current_request_id()}
        return {
            "TEXT_UPPER": np.array([text.upper().encode()], dtype=np.object_),
            "CONTEXT": np.array([json.dumps(echo).encode()], dtype=np.object_),
        }
