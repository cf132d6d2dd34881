#!/bin/bash
# The whole test suite: style, unit tests and functional tests on real
# libvirt/QEMU guests. Ends with "N passed, N failed".
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1
bash tools/setup-host.sh || exit 1
bash tools/build-guest.sh || exit 1
bash tools/setup-venv.sh || exit 1
export NOVA_CLONE_GUEST_DIR=$repo/build/guest

.venv/bin/ruff check nova_clonedriver nova tests benchmarks
style=$?
# The shell scripts, as tox -e pep8 checks them; setup-host.sh installs the
# checker, and without it they are left unchecked here.
if command -v shellcheck >/dev/null; then
    shellcheck -x tools/*.sh tools/minicloud devstack/plugin.sh devstack/settings playbooks/clone-smoke/files/*.sh
    shell_style=$?
else
    echo "shellcheck is not installed: shell scripts not checked"
    shell_style=0
fi

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
if [ "$shell_style" -ne 0 ]; then
    echo "style check (shellcheck) failed"
    failed=$((failed + 1))
fi
if [ "$tests" -ne 0 ] && [ "$failed" -eq 0 ]; then
    failed=1  # the runner failed without counting a test failure
fi
echo "${passed} passed, ${failed} failed, ${skipped:-0} skipped"
[ "$failed" -eq 0 ]
