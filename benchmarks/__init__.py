"""Benchmarks: clones against the alternatives, measured side by side.

Every scenario runs its baselines in the same process (the machines are
shared and noisy), repeats measurements, and prints numbers and ratios; it
never asserts a time. ``python -m benchmarks --help`` lists the scenarios.
"""
