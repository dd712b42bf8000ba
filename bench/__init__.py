"""Micro-benchmarks of nvcf-worker, one suite per module, run by `python -m bench [suite ...]`.

Speed is measured here, never asserted in tests: each suite times its cases against baselines
measured in the same run, prints a table of ratios and writes every figure to a JSON file.
"""
