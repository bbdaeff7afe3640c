#!/bin/sh
# mmdebstrap --customize-hook: configures the guest rootfs ($1) without starting anything.
set -eu
root=$1
guest=$2
echo vmtest > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 vmtest\n' > "$root/etc/hosts"
cat > "$root/etc/fstab" <<'FSTAB'
/dev/vda / ext4 rw,errors=remount-ro 0 1
host /mnt/host 9p trans=virtio,version=9p2000.L,msize=262144,nofail 0 0
goroot /opt/go 9p trans=virtio,version=9p2000.L,msize=262144,ro,cache=loose,nofail 0 0
FSTAB
mkdir -p "$root/mnt/host" "$root/opt/go"
printf '9p\n9pnet_virtio\n' > "$root/etc/modules-load.d/9p.conf"
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\nRateLimitBurst=0\n' > "$root/etc/systemd/journald.conf.d/vmtest.conf"
install -m 644 "$guest/vmtest-net.service" "$root/etc/systemd/system/"
install -m 644 "$guest/vmtest.service" "$root/etc/systemd/system/"
install -m 755 "$guest/vmtest-run" "$root/usr/local/sbin/"
ln -sf /etc/systemd/system/vmtest-net.service "$root/etc/systemd/system/multi-user.target.wants/vmtest-net.service"
ln -sf /etc/systemd/system/vmtest.service "$root/etc/systemd/system/multi-user.target.wants/vmtest.service"
# Nothing periodic or interactive: the guest runs one script and powers off.
for u in serial-getty@ttyS0.service getty@tty1.service e2scrub_reap.service \
         apt-daily.timer apt-daily-upgrade.timer man-db.timer dpkg-db-backup.timer \
         fstrim.timer e2scrub_all.timer systemd-timesyncd.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$u"
done
ln -sf /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
# go on every user's PATH, as a site would install it.
printf 'export PATH=/opt/go/bin:$PATH\n' > "$root/etc/profile.d/go.sh"
# No mirror is reachable from the guest: packages under test are installed from files.
: > "$root/etc/apt/sources.list"
rm -f "$root"/etc/apt/sources.list.d/*
