"""The test guest (built by tools/build-guest.sh) and its agent, as used by
the demo, the functional tests and the benchmarks."""
