#!/bin/bash
# Install the Debian packages the project needs and start libvirtd and
# virtlogd (mmdebstrap builds the Debian test guest, dnsmasq-base serves DHCP
# on libvirt's networks; Swift's servers and memcached are the object store
# the page service tests publish to). Idempotent: a second run installs
# nothing and starts nothing new.
set -euo pipefail

packages=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients
          libvirt-dev pkg-config fuse3 libfuse3-dev busybox-static cpio kmod
          gcc libc6-dev python3-venv shellcheck
          mmdebstrap e2fsprogs dnsmasq-base
          swift swift-proxy swift-account swift-container swift-object memcached)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-host: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# The kernel package list is needed by build-guest.sh (apt-get download).
if ! apt-cache show linux-image-amd64 >/dev/null 2>&1; then
    apt-get update -q
fi

# Without udev (containers, some CI machines) /dev/kvm stays root:root 0600;
# libvirt then finds on every call that KVM "is not available now" and probes
# QEMU again (3.5 s per call). Do what Debian's udev rule does.
if [ -c /dev/kvm ] && getent group kvm >/dev/null &&
        [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ]; then
    echo "setup-host: /dev/kvm to group kvm, mode 0660 (as udev would)"
    chgrp kvm /dev/kvm
    chmod 0660 /dev/kvm
fi

start() {  # start <daemon>: start it unless it already runs
    if ! pgrep -x "$1" >/dev/null; then
        echo "setup-host: starting $1"
        "$1" -d
    fi
}
start virtlogd
start libvirtd
for _ in $(seq 50); do
    virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
    sleep 0.2
done
echo "setup-host: libvirtd does not answer on qemu:///system" >&2
exit 1
