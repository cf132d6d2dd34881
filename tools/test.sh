#!/bin/bash
# The whole test suite: static checks (ruff, mypy, shellcheck, the docs and
# release notes), unit tests and functional tests on real libvirt/QEMU
# guests. Ends with "N passed, N failed".
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 1
bash tools/setup-host.sh || exit 1
bash tools/build-guest.sh || exit 1
bash tools/build-debian-guest.sh || exit 1
bash tools/setup-venv.sh || exit 1
export NOVA_CLONE_GUEST_DIR=$repo/build/guest
export NOVA_CLONE_DEBIAN_GUEST_DIR=$repo/build/debian-guest

# Static checks: style, types, shell scripts, and the documentation and
# release notes building without a warning. A check that fails counts as
# one failed test.
checks_failed=0
check() {  # check CMD...: run CMD
    if ! "$@"; then
        echo "check failed: $1"
        checks_failed=$((checks_failed + 1))
    fi
}
check .venv/bin/ruff check nova_clonedriver nova tests benchmarks tools/minicloud.d
check .venv/bin/ruff format --check nova_clonedriver nova tests benchmarks tools/minicloud.d
check .venv/bin/mypy
# setup-host.sh installs shellcheck; without it the scripts go unchecked.
if command -v shellcheck >/dev/null; then
    check shellcheck -x tools/*.sh tools/minicloud tools/minicloud.d/*.sh devstack/plugin.sh devstack/settings \
        playbooks/clone-smoke/files/*.sh tools/guest-hook/nova-clone-hook \
        tools/debian-guest/hotplug-dhcp tools/debian-guest/identity.cgi
else
    echo "shellcheck is not installed: shell scripts not checked"
fi
docs=$(mktemp -d)
check .venv/bin/python -m benchmarks.report
check .venv/bin/python -m benchmarks.plot
check .venv/bin/sphinx-build -q -W -b html doc/source "$docs/doc"
check .venv/bin/sphinx-build -q -W -b html releasenotes/source "$docs/releasenotes"
rm -rf "$docs"

log=$(mktemp)
.venv/bin/stestr run --concurrency "${TEST_CONCURRENCY:-2}" 2>&1 | tee "$log"
tests=${PIPESTATUS[0]}
passed=$(awk '/^ - Passed:/ {print $3}' "$log" | tail -1)
failed=$(awk '/^ - Failed:/ {print $3}' "$log" | tail -1)
skipped=$(awk '/^ - Skipped:/ {print $3}' "$log" | tail -1)
rm -f "$log"
passed=${passed:-0}
failed=${failed:-0}
failed=$((failed + checks_failed))
if [ "$tests" -ne 0 ] && [ "$failed" -eq 0 ]; then
    failed=1  # the runner failed without counting a test failure
fi
echo "${passed} passed, ${failed} failed, ${skipped:-0} skipped"
[ "$failed" -eq 0 ]
