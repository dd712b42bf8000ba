"""A python-backend model for tests: echoes INPUT, returns the request parameters as JSON.

Triton puts HTTP headers that match `--http-header-forward-pattern` into the request parameters,
so PARAMETERS shows which NVCF-* headers reached the model. PYTHON_VERSION is the version of the
libpython the backend stub loaded, which must be the test's own Python, not the system's.
"""

import platform

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        version = np.array([platform.python_version().encode()], dtype=np.object_)
        responses = []
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            parameters = np.array([request.parameters().encode()], dtype=np.object_)
            outputs = [
                pb_utils.Tensor("OUTPUT", text),
                pb_utils.Tensor("PARAMETERS", parameters),
                pb_utils.Tensor("PYTHON_VERSION", version),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
