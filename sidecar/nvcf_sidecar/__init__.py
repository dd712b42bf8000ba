"""nvcf_sidecar: the NVCF utils sidecar and the local platform that speaks the same wire protocol."""

__version__ = "0.1.0"
