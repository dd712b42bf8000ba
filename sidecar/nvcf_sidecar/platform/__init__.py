"""The local NVCF platform: the other side of the worker wire, small but faithful."""
