"""What the worker lays out for one invocation, for tests that call a function directly.

`nvcf_invocation` creates the asset and response directories under a test's tmp dir, puts one
asset file there, and returns the `NVCF-*` headers the worker would send.
"""

from __future__ import annotations

from pathlib import Path

ASSET = b"asset-bytes"
ASSET_ID = "asset-1"


def nvcf_invocation(tmp_path: Path, request_id: str) -> tuple[dict[str, str], Path]:
    """Lay out what the worker prepares (asset file, response directory); return the headers."""
    asset_dir = tmp_path / "inputAssets" / request_id
    output_dir = tmp_path / "response" / request_id
    asset_dir.mkdir(parents=True)
    output_dir.mkdir(parents=True)
    (asset_dir / ASSET_ID).write_bytes(ASSET)
    headers = {
        "NVCF-REQID": request_id,
        "NVCF-ASSET-DIR": str(asset_dir),
        "NVCF-LARGE-OUTPUT-DIR": str(output_dir),
        "NVCF-FUNCTION-ASSET-IDS": ASSET_ID,
        "NVCF-FUNCTION-ID": "fid-1",
    }
    return headers, output_dir
