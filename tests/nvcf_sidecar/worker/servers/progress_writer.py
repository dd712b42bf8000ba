"""A container-like writer of `progress` files in place, the way NVIDIA's helper writes them.

Run as `python progress_writer.py <response_dir> <request_id> <versions>`: each version truncates
the file (`open('w')`), writes its JSON in several flushed pieces, then closes it.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

PIECES = 6


def partial_response(seq: int) -> dict[str, Any]:
    """The partial response of version `seq`: its number and a payload that depends on it."""
    return {"seq": seq, "payload": f"{seq:05d}-" * (50 + seq % 400)}


def percent(seq: int, versions: int) -> int:
    return 100 if seq == versions - 1 else seq * 100 // versions


def write_versions(response_dir: Path, request_id: str, versions: int) -> None:
    rng = random.Random(7)
    path = response_dir / "progress"
    for seq in range(versions):
        document = {
            "id": request_id,
            "progress": percent(seq, versions),
            "partialResponse": partial_response(seq),
        }
        text = json.dumps(document)
        step = len(text) // PIECES + 1
        with open(path, "w") as stream:  # truncates: readers may see an empty or partial file
            for start in range(0, len(text), step):
                stream.write(text[start : start + step])
                stream.flush()
                if rng.random() < 0.3:
                    time.sleep(rng.random() * 0.002)
        time.sleep(rng.random() * 0.004)


if __name__ == "__main__":
    write_versions(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
