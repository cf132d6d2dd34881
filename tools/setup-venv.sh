#!/bin/bash
# Create .venv with the project's requirements (re-installed only when the
# requirements files change) and install the project itself, non-editable, as
# a deployment would.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=$repo/.venv
stamp=$venv/.requirements.sha256
wanted=$(cat "$repo/requirements.txt" "$repo/test-requirements.txt" "$repo/doc/requirements.txt" | sha256sum | cut -d' ' -f1)

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "setup-venv: installing requirements into $venv"
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q -r "$repo/requirements.txt" -r "$repo/test-requirements.txt" \
        -r "$repo/doc/requirements.txt"
    echo "$wanted" > "$stamp"
fi
"$venv/bin/pip" install -q --no-deps --force-reinstall "$repo"
