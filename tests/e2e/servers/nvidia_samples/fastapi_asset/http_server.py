"""An image rotator in the shape of NVIDIA's fastapi_asset_sample, on `nvcf_worker.compat`.

POST /rotate_image `{"image": <asset id>, "steps": 3, "delay": 0.5}` reads the input asset,
turns it half a turn in `steps` steps, reporting a float percent after each, and answers the
image as base64 when it fits the response size, else saves it as `image.png` in the output
directory (the worker then ships a zip behind a 302). GET /health is 200.
Start: `uvicorn http_server:app --host=127.0.0.1 --port=8000`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, status
from pydantic import BaseModel

from nvcf_worker import compat as helpers  # the one line that differs from NVIDIA's helpers

app = FastAPI()
logger = helpers.get_logger()


class HealthCheck(BaseModel):
    status: str = "OK"


class RotateRequest(BaseModel):
    image: str = ""
    steps: int = 3
    delay: float = 0.5


@app.get("/health", status_code=status.HTTP_200_OK, response_model=HealthCheck)
def get_health() -> HealthCheck:
    return HealthCheck(status="OK")


@app.post("/rotate_image")
def rotate(body: RotateRequest, request: Request) -> dict[str, Any]:
    # A plain `def`: FastAPI runs it in a thread, so the health route answers meanwhile.
    request_parameters = helpers._uppercase_dict_keys(request.headers)
    input_path = helpers.get_input_path(request_parameters)
    output_path = helpers.get_output_path(request_parameters)
    asset_ids = helpers.get_asset_ids(request_parameters)
    # The asset id may come in the body or, as here by default, from NVCF-FUNCTION-ASSET-IDS.
    image_asset_id = body.image or asset_ids[0]
    image = helpers.load_image(image_asset_id, input_path, has_transparency=False)

    rotated = image
    for step in range(1, body.steps + 1):
        rotated = image.rotate(180 * step / body.steps)
        time.sleep(body.delay)  # the "inference" of this step
        helpers.update_progress_file(
            request_parameters=request_parameters,
            progress_value=step / body.steps * 100,  # a float, e.g. 33.33...
            partial_response={"step": step, "of": body.steps},
        )
    logger.info("rotated asset %s", image_asset_id)

    response: dict[str, Any] = {
        "request_id": helpers.get_request_id(request_parameters),
        "asset_ids": asset_ids,
    }
    encoded = helpers.encode_image_to_base64(image=rotated, image_format="PNG")
    if len(encoded) < helpers.get_max_msg_size(request_parameters):
        response["image_generated"] = encoded.decode()
    else:
        os.makedirs(output_path, exist_ok=True)
        saved = helpers.save_image_with_directory(
            image=rotated, path=output_path, image_format="PNG"
        )
        response["image_saved"] = os.path.basename(saved)
    return response


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.getenv("PORT", "8000")))
