#!/bin/bash
# The whole test suite: style, unit tests and functional tests on real
# libvirt/QEMU guests. Ends with "N passed, N failed".
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash tools/setup-host.sh || exit 1
bash tools/build-guest.sh || exit 1
bash tools/setup-venv.sh || exit 1
export NOVA_CLONE_GUEST_DIR=$repo/build/guest

.venv/bin/ruff check nova_clonedriver nova tests benchmarks
style=$?

log=$(mktemp)
.venv/bin/stestr run --concurrency "${TEST_CONCURRENCY:-2}" 2>&1 | tee "$log"
tests=${PIPESTATUS[0]}
passed=$(awk '/^ - Passed:/ {print $3}' "$log" | tail -1)
failed=$(awk '/^ - Failed:/ {print $3}' "$log" | tail -1)
skipped=$(awk '/^ - Skipped:/ {print $3}' "$log" | tail -1)
rm -f "$log"
passed=${passed:-0}
failed=${failed:-0}
if [ "$style" -ne 0 ]; then
    echo "style check (ruff) failed"
    failed=$((failed + 1))
fi
if [ "$tests" -ne 0 ] && [ "$failed" -eq 0 ]; then
    failed=1  # the runner failed without counting a test failure
fi
echo "${passed} passed, ${failed} failed, ${skipped:-0} skipped"
[ "$failed" -eq 0 ]
