"""pytriton_sleeper: a PyTriton model that sleeps as long as asked and reports progress meanwhile.

    python examples/byoc/pytriton_sleeper/server.py --http-port 8000

Model `timed_sleeper` (after NVIDIA's PyTriton sample of that name), served by Triton's HTTP
Predict-v2 API on port 8000:

- input `sleep_duration` (FP32, shape [1]): seconds to sleep, 0 to 300;
- outputs `sleep_duration` (FP32, [1], the input echoed) and `request_id` (BYTES, [1], the
  request's NVCF-REQID);
- while it sleeps it writes progress through the library (`ProgressReporter`, at most two
  reports a second): percent slept and `{"slept": seconds, "of": sleep_duration}`.

NVCF-* headers reach the model as request parameters because `nvcf_triton_config` sets Triton's
header-forward pattern; `infer_with_context` turns them into an `InvocationContext`. Give the
function the health endpoint `/v2/models/timed_sleeper/ready`: PyTriton's `/v2/health/ready`
answers 200 before the model is loaded. SIGTERM stops the server cleanly.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import time
from typing import Final

import numpy as np
from pytriton.model_config import ModelConfig, Tensor
from pytriton.proxy.types import Request
from pytriton.triton import Triton

from nvcf_worker import InvocationContext, configure_logging
from nvcf_worker.integrations.pytriton import Outputs, infer_with_context, nvcf_triton_config

__all__ = ["MODEL_NAME", "infer", "main"]

log = logging.getLogger("timed_sleeper")

MODEL_NAME: Final = "timed_sleeper"
MAX_SLEEP_SECONDS: Final = 300.0
_TICK: Final = 0.1  # how often the loop wakes up to update the progress
_REPORT_INTERVAL: Final = 0.5  # at most this often the progress file is rewritten


@infer_with_context
def infer(request: Request, ctx: InvocationContext) -> Outputs:
    """Sleep `sleep_duration` seconds, reporting progress; echo the duration and request id."""
    values = np.asarray(request["sleep_duration"]).reshape(-1)
    if values.size != 1:
        raise ValueError(f"sleep_duration must hold one value, not {values.size}")
    duration = float(values[0])
    if not (math.isfinite(duration) and 0 <= duration <= MAX_SLEEP_SECONDS):
        raise ValueError(f"sleep_duration must be 0 to {MAX_SLEEP_SECONDS:g} s, not {duration}")
    log.info("sleeping %g s", duration)
    start = time.monotonic()
    with ctx.progress_reporter(min_interval=_REPORT_INTERVAL) as progress:
        while (elapsed := time.monotonic() - start) < duration:
            # Below 100 until the answer: the answer itself is the 100 %.
            percent = min(99, int(100 * elapsed / duration))
            progress.update(percent, {"slept": round(elapsed, 2), "of": duration})
            time.sleep(min(_TICK, duration - elapsed))
    log.info("slept %g s", duration)
    return {
        "sleep_duration": np.array([duration], dtype=np.float32),
        "request_id": np.array([ctx.request_id.encode()], dtype=np.object_),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="listen address (127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=8000, help="Predict-v2 HTTP (8000)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="Triton gRPC (8001)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Triton metrics (8002)")
    args = parser.parse_args()
    configure_logging()
    # PyTriton shuts down cleanly on KeyboardInterrupt; NVCF and `nvcf-sidecar dev` send SIGTERM.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    config = nvcf_triton_config(
        http_address=args.host,
        http_port=args.http_port,
        grpc_address=args.host,
        grpc_port=args.grpc_port,
        metrics_address=args.host,
        metrics_port=args.metrics_port,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            infer_func=infer,
            inputs=[Tensor(name="sleep_duration", dtype=np.float32, shape=(1,))],
            outputs=[
                Tensor(name="sleep_duration", dtype=np.float32, shape=(1,)),
                Tensor(name="request_id", dtype=bytes, shape=(1,)),
            ],
            # One request per call: PyTriton fails every request of a call when one raises.
            config=ModelConfig(batching=False),
            strict=True,
        )
        log.info(
            "model %s bound; Predict-v2 on http://%s:%d", MODEL_NAME, args.host, args.http_port
        )
        triton.serve()


if __name__ == "__main__":
    main()
