"""Benchmarks: accuracy, speed, load and adaptation, measured on the shared corpus."""
