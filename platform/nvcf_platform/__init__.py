"""The local NVCF platform: the other side of the worker wire, and its control plane.

Sub-packages: `invocation` (pexec, status, exec, attach, queues, the nvcf.Worker gRPC stand-in),
`objects` (assets and large responses in NATS Object Store), `control` (functions, versions,
deployments), `devstack` (the local stack of child processes and `nvcf-sidecar dev`).
The sidecar package never imports this one.
"""
