"""Benchmarks and calibrations, run from the repository root (``python bench/<script>.py``); docs/benchmarks.md
holds their figures and the commands that made them."""
