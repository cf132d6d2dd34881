#!/bin/bash
# Build the test guest (kernel + busybox initramfs with the clone agent) from
# Debian packages into build/guest/. Nothing is downloaded from elsewhere and
# nothing is installed into the host's /boot: the kernel package is fetched
# with apt-get download and unpacked here.
#
# The generic linux-image-amd64 is used, not linux-image-cloud-amd64: the
# cloud flavour is built without CONFIG_VMGENID, so a clone's fresh VM
# generation ID would not make the guest reseed its RNG.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${GUEST_DIR:-$repo/build/guest}
src=$repo/tools/guest
# button + evdev: the ACPI power button, which clone-agent answers.
modules="virtio_pci virtio_console virtio_net virtio_blk qemu_fw_cfg button evdev"

inputs_hash=$( (cat "$src"/* "$0"; dpkg-query -W busybox-static) | sha256sum | cut -c1-16)
if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$inputs_hash" ]; then
    echo "test guest up to date in $out"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
kernel_pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$kernel_pkg" ] || { echo "build-guest: no linux-image-amd64 in apt lists (run apt-get update)" >&2; exit 1; }
(cd "$work" && { apt-get download -q "$kernel_pkg" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true; })
dpkg-deb -x "$work"/"$kernel_pkg"_*.deb "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")

root=$work/root
mkdir -p "$root"/{bin,sbin,proc,sys,dev,etc,tmp,lib/modules/"$kver"}
cp /bin/busybox "$root/bin/busybox"
install -m 755 "$src/init" "$root/init"
install -m 755 "$src/netup" "$src/udhcpc-script" "$root/sbin/"
gcc -static -O2 -Wall -Wextra -o "$root/sbin/clone-agent" "$src/clone-agent.c"

# Copy the wanted modules and everything they depend on, then index them.
moddir=$work/kernel/lib/modules/$kver
depmod -b "$work/kernel" "$kver"
needed=""
for m in $modules; do
    needed+=" $(modprobe -d "$work/kernel" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}')"
done
for path in $(echo "$needed" | tr " " "\n" | sort -u); do
    rel=${path#"$work/kernel"}
    mkdir -p "$root$(dirname "$rel")"
    cp "$path" "$root$rel"
done
cp "$moddir"/modules.order "$moddir"/modules.builtin* "$root/lib/modules/$kver/"
depmod -b "$root" "$kver"

mkdir -p "$out.new"
cp "$work"/kernel/boot/vmlinuz-"$kver" "$out.new/vmlinuz"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$out.new/initrd.img"
echo "$inputs_hash" > "$out.new/stamp"
rm -rf "$out"
mv "$out.new" "$out"
chmod -R a+rX "$out"
echo "test guest built in $out: $(du -sh "$out" | cut -f1) ($kver)"
