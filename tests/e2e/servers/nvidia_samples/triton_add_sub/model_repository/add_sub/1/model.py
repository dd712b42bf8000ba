"""add_sub on Triton's python backend, reading its NVCF context with the helper module.

Triton forwards the `NVCF-*` headers into each request's parameters (a JSON object string) when
started with `--http-header-forward-pattern`, as NVIDIA's samples start it and as
`nvcf-tritonserver` does; the model reads the request id and reports progress from them.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from nvcf_worker import compat as helpers  # the one line that differs from NVIDIA's helpers


class TritonPythonModel:
    def initialize(self, args):
        self.logger = helpers.get_logger()
        model_config = json.loads(args["model_config"])
        self.dtypes = {
            name: pb_utils.triton_string_to_numpy(
                pb_utils.get_output_config_by_name(model_config, name)["data_type"]
            )
            for name in ("OUTPUT0", "OUTPUT1")
        }

    def execute(self, requests):
        responses = []
        for request in requests:
            request_parameters = json.loads(request.parameters() or "{}")
            request_id = helpers.get_request_id(request_parameters)
            in_0 = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            in_1 = pb_utils.get_input_tensor_by_name(request, "INPUT1").as_numpy()
            helpers.update_progress_file(
                request_parameters, 50.0, partial_response={"stage": "inputs read"}
            )
            out_0 = (in_0 + in_1).astype(self.dtypes["OUTPUT0"])
            out_1 = (in_0 - in_1).astype(self.dtypes["OUTPUT1"])
            self.logger.info("add_sub served request %s", request_id)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("OUTPUT0", out_0),
                        pb_utils.Tensor("OUTPUT1", out_1),
                        pb_utils.Tensor("REQUEST_ID", np.array([request_id.encode()], np.object_)),
                    ]
                )
            )
        return responses

    def finalize(self):
        self.logger.info("add_sub unloaded")
