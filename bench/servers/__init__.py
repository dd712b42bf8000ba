"""Stand-in inference servers the benchmarks start as real processes (run by path, not imported)."""
