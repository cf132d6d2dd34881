"""What the demo, the functional tests and the benchmarks run on one machine,
and nothing a compute node needs: the test guest (built by
tools/build-guest.sh) and its agent client, page-service daemons standing in
for compute nodes, throwaway certificates for them, and the demo itself."""
