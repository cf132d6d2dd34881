# shellcheck shell=bash
# minicloud: what the cloud needs on the host (Debian's packages, the test
# guest) and its virtualenv (PIP_PACKAGES and this checkout).

install_host() {
    local missing=() p
    "$REPO/tools/setup-host.sh"
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        # Debian would start (and enable) the packages' own instances; the
        # cloud runs its own, so keep theirs from starting if nothing else
        # does (containers usually have a policy-rc.d already).
        local policy=/usr/sbin/policy-rc.d made_policy=""
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod 755 "$policy"
            made_policy=1
        fi
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
        [[ -z $made_policy ]] || rm -f "$policy"
    fi
    "$REPO/tools/build-guest.sh"
    "$REPO/tools/build-debian-guest.sh"
}

install_venv() {
    local wanted stamp=$VENV/.minicloud-packages
    # Installed again whenever PIP_PACKAGES or requirements.txt change.
    wanted=$(printf '%s\n' "${PIP_PACKAGES[@]}" | cat - "$REPO/requirements.txt" | sha256sum | cut -c1-16)
    [[ -x $VENV/bin/python ]] || "$PY" -m venv "$VENV"
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]]; then
        log "installing the OpenStack services into $VENV (several minutes)"
        "$VENV/bin/pip" install -q --upgrade pip
        "$VENV/bin/pip" install -q "$REPO" "${PIP_PACKAGES[@]}"
        echo "$wanted" >"$stamp"
    fi
    # This checkout, as it is now (not editable: nova finds the driver only
    # as nova/virt/clonedriver in its own package folder).
    "$VENV/bin/pip" install -q --no-deps --force-reinstall "$REPO"
}
