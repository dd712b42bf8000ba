"""Integrations with inference servers and web frameworks, one per module.

Nothing is imported here: each integration is imported lazily by name (for example
`nvcf_worker.integrations.tritonserver`), so the library never pulls in an optional dependency
that a function author did not ask for.
"""
