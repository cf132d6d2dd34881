#!/bin/bash
# The demo: set up the host, build the test guest, then fork a running VM
# into clones and check them. Arguments go to `nova-clone demo`
# (e.g. --clones 16 --memory-mb 1024 -f json).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
bash "$repo/tools/setup-host.sh" >&2
bash "$repo/tools/build-guest.sh" >&2
bash "$repo/tools/setup-venv.sh" >&2
export NOVA_CLONE_GUEST_DIR=$repo/build/guest
exec "$repo/.venv/bin/nova-clone" demo "$@"
