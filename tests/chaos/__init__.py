"""The chaos suite: many requests through `nvcf-sidecar dev --restart` while processes are killed.

`python -m chaos` (`make chaos`) runs every scenario; `test_chaos.py` runs a short variant in CI.
See docs/reliability.md.
"""
