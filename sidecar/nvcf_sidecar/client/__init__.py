"""The caller side of NVCF: `nvcf-sidecar invoke`, a command-line client of the invocation API.

It talks to the local platform (or to NVCF itself) only over HTTP, as any client would.
"""
