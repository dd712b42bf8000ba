"""Python bindings generated from ../nvcf.proto by `make proto`; do not edit by hand."""
