#!/usr/bin/env bash
# Builds the Debian 12 guest used by the VM tests (tests/vm.rs, tests/support/vm.rs) from
# Debian's packages alone, and caches it keyed by its inputs.
#
#   tests/vm/image.sh CACHE_DIR      → prints the directory holding root.img, vmlinux, initrd.img
#
# The key is a hash of this script and of tests/vm/guest/: change either and a new image is
# built (about 70-120 s and ~800 MiB); the old ones are removed. Nothing is started: the
# rootfs is configured by mmdebstrap hooks, the image made by `mkfs.ext4 -d` (no loop device).
# The host's apt sources are used as they are, so no mirror is named here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${1:?usage: image.sh CACHE_DIR}
mkdir -p "$cache"

key=$( (cat "$0"; cd "$here/guest" && find . -type f | LC_ALL=C sort | xargs sha256sum) | sha256sum | cut -c1-16)
out="$cache/debian12-$key"
if [ -f "$out/ready" ]; then
    echo "$out"
    exit 0
fi

# One builder at a time (parallel test binaries may ask at once).
exec 9>"$cache/.lock"
flock 9
if [ -f "$out/ready" ]; then
    echo "$out"
    exit 0
fi
for old in "$cache"/debian12-*; do
    [ -e "$old" ] && [ "$old" != "$out" ] && rm -rf "$old"
done

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
sources=$(mktemp)
# The host's own sources (deb822 or one-line), bookworm only.
if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    cat /etc/apt/sources.list.d/*.sources > "$sources"
else
    grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null > "$sources"
fi

pkgs=systemd,systemd-sysv,dbus,dbus-user-session,libpam-systemd,udev,kmod,linux-image-amd64
pkgs+=,initramfs-tools,e2fsprogs,acl,sudo,procps,iproute2,python3,ca-certificates,curl,psmisc

mmdebstrap --quiet --mode=root --variant=minbase --include="$pkgs" \
    --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks"' \
    --essential-hook="cp '$here/guest/initramfs.conf' \"\$1/etc/initramfs-tools/conf.d/vmtest.conf\"" \
    --essential-hook="install -m 755 '$here/guest/initramfs-hook' \"\$1/etc/initramfs-tools/hooks/vmtest\"" \
    --customize-hook="'$here/guest/customize.sh' \"\$1\" '$here/guest'" \
    bookworm "$rootfs" "$sources" >&2
rm -f "$sources"

# The kernel: Debian ships a bzImage whose payload is xz; unpacked, its ELF has a PVH entry
# point, so QEMU boots it directly with qboot (14 s to multi-user instead of 42 s).
vmlinuz=$(ls "$rootfs"/boot/vmlinuz-* | head -n1)
initrd=$(ls "$rootfs"/boot/initrd.img-* | head -n1)
python3 - "$vmlinuz" "$work/vmlinux" <<'PY'
import lzma, sys
data = open(sys.argv[1], "rb").read()
at = data.find(b"\xfd7zXZ\x00")
if at < 0:
    sys.exit("no xz payload in " + sys.argv[1])
elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[at:])
if elf[:4] != b"\x7fELF":
    sys.exit("payload of %s is not an ELF image" % sys.argv[1])
open(sys.argv[2], "wb").write(elf)
PY
cp "$initrd" "$work/initrd.img"
cp "$vmlinuz" "$work/vmlinuz"
mkfs.ext4 -q -L root -d "$rootfs" "$work/root.img" 6G >&2
rm -rf "$rootfs"
mkdir -p "$out"
mv "$work/root.img" "$work/vmlinux" "$work/vmlinuz" "$work/initrd.img" "$out/"
touch "$out/ready"
echo "$out"
