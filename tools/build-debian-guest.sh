#!/bin/bash
# Build the Debian 12 test guest from Debian packages only (mmdebstrap
# against the host's apt sources; no cloud image is downloaded) into
# build/debian-guest/: a qcow2 root disk holding systemd, ifupdown with DHCP
# on every NIC, qemu-guest-agent (and hwclock, which its guest-set-time
# needs), openssh-server and an HTTP service that answers with the guest's
# identity (tools/debian-guest/), and the kernels and initramfs images to
# boot it with, both flavours:
#   vmlinuz-generic, initrd-generic  linux-image-amd64 (has CONFIG_VMGENID)
#   vmlinuz-cloud,   initrd-cloud    linux-image-cloud-amd64 (Debian's cloud
#                                    images' kernel, without CONFIG_VMGENID)
# The guest hook of tools/guest-hook/ is installed too (it runs unless the
# kernel command line says nova_clone_hook=off).
# Rebuilt only when its inputs (this script, tools/debian-guest/,
# tools/guest-hook/) change.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${DEBIAN_GUEST_DIR:-$repo/build/debian-guest}
src=$repo/tools/debian-guest
hook=$repo/tools/guest-hook
disk_size_mib=2048
packages=systemd-sysv,udev,ifupdown,isc-dhcp-client,iproute2,qemu-guest-agent,util-linux-extra
packages+=,openssh-server,busybox,initramfs-tools,linux-image-amd64,linux-image-cloud-amd64

inputs_hash=$( (cat "$src"/* "$hook"/* "$0") | sha256sum | cut -c1-16)
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$inputs_hash" ]; then
    echo "Debian test guest up to date in $out"
    exit 0
fi
for tool in mmdebstrap mkfs.ext4 qemu-img; do
    command -v "$tool" >/dev/null || { echo "build-debian-guest: $tool is missing (run tools/setup-host.sh)" >&2; exit 1; }
done

started=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work" "$out.new"' EXIT
root=$work/root
# The identity service, DHCP on every NIC that appears, a serial console,
# and a root file system on /dev/vda (no partition table, no boot loader:
# the kernel is booted directly). No root password: the console logs in.
# (The hooks are run by mmdebstrap, which passes the root as $1.)
# shellcheck disable=SC2016
mmdebstrap --quiet --variant=minbase --include="$packages" \
    --customize-hook="install -D -m 755 $src/identity.cgi \$1/usr/local/lib/identity-http/cgi-bin/identity" \
    --customize-hook="install -D -m 644 $src/identity-http.service \$1/etc/systemd/system/identity-http.service" \
    --customize-hook="install -D -m 644 $src/75-hotplug-dhcp.rules \$1/etc/udev/rules.d/75-hotplug-dhcp.rules" \
    --customize-hook="install -D -m 755 $src/hotplug-dhcp \$1/usr/local/sbin/hotplug-dhcp" \
    --customize-hook="install -D -m 644 $src/tmpfiles.conf \$1/etc/tmpfiles.d/hotplug-dhcp.conf" \
    --customize-hook="install -m 644 $src/interfaces \$1/etc/network/interfaces" \
    --customize-hook="install -D -m 755 $hook/nova-clone-hook \$1/usr/local/sbin/nova-clone-hook" \
    --customize-hook="install -D -m 644 $hook/nova-clone-hook@.service \$1/etc/systemd/system/nova-clone-hook@.service" \
    --customize-hook="install -D -m 644 $hook/90-nova-clone-hook.rules \$1/etc/udev/rules.d/90-nova-clone-hook.rules" \
    --customize-hook='chroot "$1" systemctl enable identity-http.service serial-getty@ttyS0.service' \
    --customize-hook='echo debian-guest > "$1/etc/hostname"' \
    --customize-hook='printf "/dev/vda / ext4 defaults 0 1\n" > "$1/etc/fstab"' \
    --customize-hook='passwd --root "$1" --delete root' \
    bookworm "$root"

rm -rf "$out.new"
mkdir -p "$out.new"
declare -A kernels
for path in "$root"/boot/vmlinuz-*-amd64; do
    case $path in
    *-cloud-amd64) kernels[cloud]=${path##*/vmlinuz-} ;;
    *) kernels[generic]=${path##*/vmlinuz-} ;;
    esac
done
for flavour in generic cloud; do
    version=${kernels[$flavour]:?no $flavour kernel in the guest}
    cp "$root/boot/vmlinuz-$version" "$out.new/vmlinuz-$flavour"
    cp "$root/boot/initrd.img-$version" "$out.new/initrd-$flavour"
    echo "$version" > "$out.new/kernel-$flavour"
done
# Booted directly from the copies above; documentation is not needed either.
rm -rf "${root:?}"/boot/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/*
mkfs.ext4 -q -L debian-guest -d "$root" "$work/root.raw" "${disk_size_mib}M"
qemu-img convert -O qcow2 "$work/root.raw" "$out.new/disk.qcow2"
echo "$inputs_hash" > "$out.new/stamp"
rm -rf "$out"
mv "$out.new" "$out"
chmod -R a+rX "$out"
echo "Debian test guest built in $out in $(( $(date +%s) - started )) s:" \
    "disk $(du -m "$out/disk.qcow2" | cut -f1) MiB, kernels $(cat "$out"/kernel-generic) and $(cat "$out"/kernel-cloud)"
