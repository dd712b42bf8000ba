"""The utils sidecar: a drop-in for NVIDIA's `worker-utils`, one module per concern."""
