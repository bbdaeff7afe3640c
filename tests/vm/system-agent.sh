#!/bin/bash
# The system agent, installed from the .deb on a real Debian 12 with systemd as PID 1.
# Run as root inside the VM by tests/vm.rs (through tests/vm/guest/vmtest-run), from the
# shared folder /mnt/host, which holds the two .debs, mkcache.py and this script. Every
# point is checked from outside the agent (systemctl, getfacl, stat, find, du, journalctl,
# curl); each check writes `ok NAME` or `not ok NAME: why` to out/results and its evidence
# to out/evidence/NAME.txt. The webhook receiver runs on the VM's host, reached at
# 10.0.2.100:$HOOK_PORT (QEMU's guestfwd: not loopback as the guest sees it).
set -u
H=/mnt/host
OUT=$H/out
EV=$OUT/evidence
R=$OUT/results
mkdir -p "$EV"
: > "$R"
HOOK_PORT=$(cat "$H/hook-port")
export PATH=/opt/go/bin:/usr/sbin:/usr/bin:/sbin:/bin
export SYSTEMD_PAGER= SYSTEMD_COLORS=0

pass() { echo "ok $1" >> "$R"; }
# A failed check's evidence ends with what the agent said just before.
fail() {
    echo "not ok $1: $2" >> "$R"
    { echo "--- journal of gocache-warden.service (last 40)"; journalctl -u gocache-warden -n 40 --no-pager -o short-precise; } >> "$EV/$1.txt" 2>&1
}
# expect NAME CMD…: CMD must succeed now.
expect() {
    local name=$1; shift
    if "$@" > "$EV/$name.txt" 2>&1; then pass "$name"; else fail "$name" "$(tail -c 1500 "$EV/$name.txt" | tr '\n' '|')"; fi
}
# eventually NAME SECONDS CMD…: CMD must succeed within SECONDS.
eventually() {
    local name=$1 t=$2; shift 2
    local end=$((SECONDS + t))
    until "$@" > "$EV/$name.txt" 2>&1; do
        if [ $SECONDS -ge $end ]; then
            fail "$name" "not within ${t}s: $(tail -c 1500 "$EV/$name.txt" | tr '\n' '|')"
            return 1
        fi
        sleep 1
    done
    pass "$name"
}
phase() { echo "== $1 ($(date +%T), ${SECONDS}s)" >> "$R"; }
prop() { systemctl show "$1" -p "$2" --value; }
# Evaluated at each try of `eventually` (a "$(…)" argument would be evaluated once).
is_active() { systemctl show "$1" -p ActiveState --value | tee /dev/stderr | grep -qx active; }
is_user_active() { systemctl --user -M "$1@" show "$2" -p ActiveState --value | tee /dev/stderr | grep -qx active; }
uprop() { systemctl --user -M "$1@" show "$2" -p "$3" --value; }
agent_warnings() { journalctl -u gocache-warden.service -p warning --no-pager -o cat "$@"; }
journal_has() { journalctl --no-pager -o json "$@" | grep -q .; }

# Files the package may leave behind are compared against this list after the purge.
snapshot_files() {
    find / -xdev \( -path /proc -o -path /sys -o -path /dev -o -path /run -o -path /tmp \
        -o -path /mnt -o -path /home -o -path /srv -o -path /var/log -o -path /var/tmp \
        -o -path /var/cache/apt -o -path /var/cache/debconf -o -path /var/cache/man \
        -o -path /var/lib/apt -o -path /var/lib/dpkg -o -path /var/lib/systemd \
        -o -path /var/cache/ldconfig -o -path /root -o -path /etc/ld.so.cache \
        -o -path /etc/systemd/user/timers.target.wants \) -prune -o -print | LC_ALL=C sort
}

###############################################################################
phase "install"
# As the prometheus-node-exporter package would have it.
install -d /var/lib/prometheus/node-exporter
snapshot_files > "$OUT/files-before"
expect install apt-get install -y --no-install-recommends "$H"/deb1/gocache-warden_*.deb
eventually agent-active 60 is_active gocache-warden
expect agent-type-notify test "$(prop gocache-warden Type)" = notify
expect agent-no-restarts test "$(prop gocache-warden NRestarts)" = 0
eventually first-sweep 120 journal_has -u gocache-warden GOCACHE_WARDEN_ACTION=sweep
expect default-policy-quiet bash -c '! agent_warnings | grep .'
systemd-analyze security gocache-warden.service --no-pager > "$EV/security.txt" 2>&1
exposure_at_most() {
    python3 - "$1" "$2" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", t)
print(m.group(0) if m else "no exposure line")
sys.exit(0 if m and float(m.group(1)) <= float(sys.argv[2]) else 1)
PY
}
expect exposure-at-most-2.5 exposure_at_most "$EV/security.txt" 2.5
# The agent has no network: its namespace holds only a loopback device, and webhooks go
# through the relay socket, which only root may connect to.
expect agent-private-network test "$(prop gocache-warden PrivateNetwork)" = yes
# /proc/PID/net/dev lists the devices of that process's network namespace.
expect agent-netns-only-lo bash -c 'tail -n +3 "/proc/$(systemctl show gocache-warden -p MainPID --value)/net/dev" | tee /dev/stderr | cut -d: -f1 | tr -d " " | grep -vx lo | { ! grep .; }'
expect relay-socket-active is_active gocache-warden-relay.socket
expect relay-socket-root-only bash -c 'stat -c "%U:%G %a %F" /run/gocache-warden-relay.sock | tee /dev/stderr | grep -qx "root:root 600 socket"'
systemd-analyze security --offline=true /usr/lib/systemd/system/gocache-warden-relay@.service --no-pager > "$EV/relay-security.txt" 2>&1
expect relay-exposure-at-most-1.2 exposure_at_most "$EV/relay-security.txt" 1.2

###############################################################################
phase "users and their build services"
groupadd builders
for u in alice bob carol; do
    case $u in alice|bob) useradd -m -s /bin/bash -G builders "$u" ;; *) useradd -m -s /bin/bash "$u" ;; esac
done
cat > /usr/local/bin/build-loop <<'EOF'
#!/bin/sh
# One `go build` a second of a package whose source cycles through 40 versions: the first
# round writes new cache entries, later rounds hit them (a package without imports, so that
# nothing of the standard library is compiled under software emulation). Results go to
# ~/builds.log as `ok|fail GOCACHE TIME`.
mkdir -p "$HOME/proj" && cd "$HOME/proj" || exit 1
[ -f go.mod ] || printf 'module example.com/proj\ngo 1.22\n' > go.mod
i=0
while :; do
    i=$((i + 1))
    printf 'package proj\n\nconst N = %d\n\nfunc F() int { return N * 2 }\n' $((i % 40)) > p.go
    if go build ./... 2>> "$HOME/builds.err"; then r=ok; else r=fail; fi
    echo "$r ${GOCACHE:-unset} $(date +%s)" >> "$HOME/builds.log"
    sleep 1
done
EOF
chmod 755 /usr/local/bin/build-loop
for u in alice bob carol; do
    d=/home/$u/.config/systemd/user
    install -d -o "$u" -g "$u" "/home/$u/.config" "/home/$u/.config/systemd" "$d" "$d/default.target.wants"
    case $u in
        alice) extra= ;;                                    # no GOCACHE at all
        bob) extra='Environment=GOCACHE=off' ;;             # builds fail outright
        carol) extra='EnvironmentFile=%h/build.env'         # GOCACHE from a file
               printf 'GOCACHE=/home/carol/ci-cache\n' > /home/carol/build.env
               chown carol: /home/carol/build.env ;;
    esac
    printf '[Unit]\nDescription=go build loop of %s\n\n[Service]\nEnvironment=PATH=/opt/go/bin:/usr/bin:/bin\n%s\nExecStart=/usr/local/bin/build-loop\nRestart=always\n\n[Install]\nWantedBy=default.target\n' \
        "$u" "$extra" > "$d/gobuild.service"
    ln -s ../gobuild.service "$d/default.target.wants/gobuild.service"
    chown -h "$u:" "$d/gobuild.service" "$d/default.target.wants/gobuild.service"
    loginctl enable-linger "$u"
done
for u in alice bob carol; do
    uid=$(id -u "$u")
    eventually "manager-$u" 60 test -S "/run/user/$uid/systemd/private"
    eventually "gobuild-$u-active" 60 is_user_active "$u" gobuild.service
done
# A system service that builds as bob and sets no GOCACHE: found over the system bus.
cat > /etc/systemd/system/gobuild-svc.service <<'EOF'
[Unit]
Description=go build loop as a system service
[Service]
User=bob
Environment=HOME=/home/bob PATH=/opt/go/bin:/usr/bin:/bin
ExecStart=/bin/sh -c 'mkdir -p /tmp/svc && cd /tmp/svc && printf "module svc\\ngo 1.22\\n" > go.mod && printf "package svc\\n" > s.go && while :; do go build ./... && echo ok >> /tmp/svc/builds.log || echo fail >> /tmp/svc/builds.log; sleep 5; done'
[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload
systemctl enable --now gobuild-svc.service
eventually gobuild-svc-active 30 is_active gobuild-svc

###############################################################################
phase "build-server drop-in, applied with reload"
printf 'http://10.0.2.100:%s/slack\n' "$HOOK_PORT" > /etc/gocache-warden/slack-url
printf 'http://10.0.2.100:%s/hook\n' "$HOOK_PORT" > /etc/gocache-warden/hook-url
chmod 600 /etc/gocache-warden/slack-url /etc/gocache-warden/hook-url
cat > /etc/gocache-warden/policy.d/50-build-server.toml <<'EOF'
[cache.shared]
path = "/srv/gocache"
kind = "build"
create = true
owner = "root"
group = "builders"
setgid = true
group_access = "rwx"
other = "---"
max_size = "3MiB"
low_water = "50%"
max_age = "14d"
# The build loops' entries (three users' packages, 40 versions each) stay young for as long
# as min_age: 30 minutes of them hold more than the 2 MiB that Go's layout leaves of the
# limit, so a short floor lets eviction reach the limit here.
min_age = "2m"

# Held over its limit on purpose: every entry was written minutes ago, and min_age (24h)
# keeps them, so the over_limit alert fires, saying by what (the webhooks' true alert).
[cache.held]
path = "/srv/held"
max_size = "1MiB"

# Large enough that a sweep is still walking it when the agent is stopped.
[cache.big]
path = "/srv/big"
max_age = "14d"

# Outside the unit's ReadWritePaths=: reported once, with the line that fixes it.
[cache.opt]
path = "/opt/gocache"
max_size = "1MiB"

[units.builds]
match = ["gobuild*.service"]
managers = "all"
gocache = "/srv/gocache"
remediation = "drop-in"

[metrics]
textfile = "/var/lib/prometheus/node-exporter/gocache-warden.prom"

[alert.slack]
kind = "slack"
url_file = "/etc/gocache-warden/slack-url"

[alert.hook]
kind = "webhook"
url_file = "/etc/gocache-warden/hook-url"
EOF
python3 "$H/mkcache.py" /opt/gocache --entries 300 --days 20 --seed 6 > /dev/null
python3 "$H/mkcache.py" /srv/held --entries 300 --days 0.005 --seed 8 > /dev/null
mkdir -p /srv/big
expect policy-validates gocache-warden policy validate /etc/gocache-warden/policy.d/50-build-server.toml
pid_before_reload=$(prop gocache-warden MainPID)
expect reload systemctl reload gocache-warden
expect reload-kept-process test "$(prop gocache-warden MainPID)" = "$pid_before_reload"
eventually reload-logged 30 journal_has -u gocache-warden GOCACHE_WARDEN_ACTION=reload
eventually shared-created 60 test -d /srv/gocache
eventually shared-root-shape 60 bash -c 'stat -c "%U %G %A" /srv/gocache | tee /dev/stderr | grep -qx "root builders drwxrws---"'
eventually shared-root-acl 30 bash -c 'getfacl -p /srv/gocache | tee /dev/stderr | grep -qx "default:group::rwx" && getfacl -p /srv/gocache | grep -qx "group::rwx"'

phase "unit remediation over D-Bus (system bus and every lingering user's manager)"
eventually dropin-system 120 test -f /etc/systemd/system/gobuild-svc.service.d/50-gocache-warden.conf
eventually dropin-system-verified 60 bash -c 'systemctl show gobuild-svc -p Environment | tee /dev/stderr | grep -q "GOCACHE=/srv/gocache"'
for u in alice bob; do
    eventually "dropin-$u" 120 test -f "/home/$u/.config/systemd/user/gobuild.service.d/50-gocache-warden.conf"
    expect "dropin-$u-owner" bash -c "stat -c %U /home/$u/.config/systemd/user/gobuild.service.d/50-gocache-warden.conf | grep -qx $u"
    eventually "dropin-$u-verified" 60 bash -c "systemctl --user -M $u@ show gobuild.service -p Environment | tee /dev/stderr | grep -q GOCACHE=/srv/gocache"
done
# carol's GOCACHE comes from her EnvironmentFile=, which a drop-in's Environment= cannot
# override: reported (naming the file), never "fixed" with a drop-in that would not work.
expect carol-not-dropped-in test ! -e /home/carol/.config/systemd/user/gobuild.service.d/50-gocache-warden.conf
eventually carol-reported 60 bash -c 'journalctl -u gocache-warden -o cat GOCACHE_WARDEN_ACTION=unit-missing-gocache | tee /dev/stderr | grep carol | grep -q gobuild'

phase "the agent repairs entries copied in as root, then evicts while builds run"
# Entries from long ago, owned by root:root without ACLs (as `cp -a` from elsewhere leaves
# them): members cannot use them until the agent chowns them and fixes their ACLs.
python3 "$H/mkcache.py" /var/tmp/seed --entries 2500 --days 20 --seed 3 > "$EV/seed.txt"
cp -a /var/tmp/seed/. /srv/gocache/
chgrp -R root /srv/gocache/0* /srv/gocache/1*
eventually evicted-to-limit 240 bash -c 'b=$(du -sB1 /srv/gocache | cut -f1); echo "$b bytes"; [ "$b" -le $((3 * 1024 * 1024)) ]'
eventually group-fixed 120 bash -c '! find /srv/gocache ! -group builders | grep .'
eventually setgid-everywhere 60 bash -c '! find /srv/gocache -type d ! -perm -2000 | grep .'
eventually acl-everywhere 60 bash -c '! getfacl -R -p /srv/gocache | grep -E "^mask::(r--|r-x|---|--x|-w-|-wx)"'
# Restarted first, logs emptied after: the old loops (GOCACHE unset, or off) are gone by then.
for u in alice bob; do
    systemctl --user -M "$u@" restart gobuild.service
    : > "/home/$u/builds.log"
done
systemctl restart gobuild-svc.service
: > /tmp/svc/builds.log
start_builds=$(date +%s)
sleep 10
# More old entries arrive while the builds run, copied by a member (as a restore from a
# backup would): nothing to fix, everything to evict, and no build may fail meanwhile.
python3 "$H/mkcache.py" /var/tmp/seed3 --entries 2500 --days 20 --seed 7 > /dev/null
chown -R alice /var/tmp/seed3
setpriv --reuid alice --regid alice --init-groups cp -r --preserve=timestamps /var/tmp/seed3/. /srv/gocache/
eventually evicted-while-building 240 bash -c 'b=$(du -sB1 /srv/gocache | cut -f1); echo "$b bytes"; [ "$b" -le $((3 * 1024 * 1024)) ]'
# The sweep logs "evicted …" after its last unlink, so du can be under the limit first.
eventually journal-evicted-while-building 60 bash -c "journalctl -u gocache-warden -o json GOCACHE_WARDEN_ACTION=evict --since @$start_builds | grep -q ."
sleep 20
for u in alice bob; do
    expect "builds-$u-shared" bash -c "grep -c '^ok /srv/gocache' /home/$u/builds.log | grep -qv '^0$'"
    expect "builds-$u-no-failure" bash -c "tail -5 /home/$u/builds.err 2>/dev/null; ! grep '^fail' /home/$u/builds.log"
done
expect builds-svc-no-failure bash -c "! grep '^fail' /tmp/svc/builds.log"
expect builds-new-entries-acl bash -c 'f=$(find /srv/gocache -newermt @'"$start_builds"' -name "*-d" -type f | head -1); echo "$f"; getfacl -p "$f" | tee /dev/stderr | grep -q "^group::rw"; stat -c %G "$f" | grep -qx builders'
expect journal-evict journal_has -u gocache-warden GOCACHE_WARDEN_ACTION=evict
expect journal-group-fix journal_has -u gocache-warden GOCACHE_WARDEN_ACTION=group-fix
expect journal-acl-fix journal_has -u gocache-warden GOCACHE_WARDEN_ACTION=acl-fix
expect journal-unit-drop-in journal_has -u gocache-warden GOCACHE_WARDEN_ACTION=unit-drop-in
expect journal-sweep journal_has -u gocache-warden GOCACHE_WARDEN_ACTION=sweep
expect journal-startup journal_has -u gocache-warden GOCACHE_WARDEN_ACTION=startup
expect no-eperm bash -c '! journalctl -u gocache-warden -o cat | grep -i "operation not permitted\|read-only file system"'

# The limit is what du says, and a cache a sweep brought under it is not "over" anything;
# one held over it is said once, with what holds it.
expect shared-under-limit-by-du bash -c 'b=$(du -sB1 /srv/gocache | cut -f1); echo "$b"; [ "$b" -le $((3 * 1024 * 1024)) ]'
expect shared-not-held bash -c '! journalctl -u gocache-warden -o cat GOCACHE_WARDEN_ACTION=violation | grep "/srv/gocache: held over"'
eventually held-said-once 60 bash -c 'journalctl -u gocache-warden -o cat GOCACHE_WARDEN_ACTION=violation | grep "/srv/held: held over its size limit" > /tmp/held.txt; cat /tmp/held.txt; [ "$(wc -l < /tmp/held.txt)" = 1 ] && grep -q "(min_age)" /tmp/held.txt'
expect held-metric bash -c 'grep "^gocache_warden_cache_held_bytes{cache=\"/srv/held\",cause=\"recent\"" /var/lib/prometheus/node-exporter/gocache-warden.prom | tee /dev/stderr | grep -qv " 0$"'
expect read-only-reported-once bash -c 'journalctl -u gocache-warden -o cat GOCACHE_WARDEN_ACTION=violation | grep "/opt/gocache is on a read-only mount" > /tmp/ro.txt; cat /tmp/ro.txt; [ "$(wc -l < /tmp/ro.txt)" = 1 ] && grep -q "systemctl edit gocache-warden.*ReadWritePaths=/opt/gocache" /tmp/ro.txt'
expect read-only-untouched bash -c '[ "$(find /opt/gocache -type f | wc -l)" -ge 600 ]'

phase "metrics: textfile and socket"
eventually textfile 60 grep -q '^gocache_warden_cache_allocated_bytes{cache="/srv/gocache"' /var/lib/prometheus/node-exporter/gocache-warden.prom
cp /var/lib/prometheus/node-exporter/gocache-warden.prom "$OUT/textfile.prom" 2>/dev/null
# systemd refuses to start a socket whose service is already running ("Socket service …
# already active, refusing"): stop the agent, start the socket, start the agent with it.
expect socket-enable bash -c 'systemctl stop gocache-warden && systemctl enable --now gocache-warden-metrics.socket && systemctl start gocache-warden'
eventually socket-metrics 60 bash -c 'curl -sf http://127.0.0.1:9798/metrics > /mnt/host/out/http.prom && grep -q "^gocache_warden_build_info" /mnt/host/out/http.prom'
eventually agent-active-after-socket 60 is_active gocache-warden

phase "write attribution: a system service's build counted under its user and unit"
# Under the shipped unit: fanotify with pids (CAP_SYS_ADMIN at start), then CAP_SYS_ADMIN
# gone from the running agent (bit 21 of CapEff).
expect attribution-privileged bash -c 'journalctl -u gocache-warden -o cat | grep -q "writes into build caches are attributed (fanotify, Privileged)"'
expect sys-admin-dropped bash -c 'e=$(awk "/^CapEff/ {print \$2}" /proc/$(systemctl show -P MainPID gocache-warden)/status); echo "CapEff $e"; [ $(( 0x$e & (1 << 21) )) -eq 0 ]'
# The agent was restarted just before (socket activation): its first sweep marks the caches.
eventually attribution-marked 60 bash -c 'journalctl -u gocache-warden -o cat _PID=$(systemctl show -P MainPID gocache-warden) | grep -q "writes into /srv/gocache are attributed (256 shards)"'
install -d -o bob -g bob /var/tmp/attr
printf 'module attr\ngo 1.22\n' > /var/tmp/attr/go.mod
printf 'package attr\n\nconst T = %s\n' "$(date +%s%N)" > /var/tmp/attr/a.go
chown -R bob: /var/tmp/attr
expect attr-build systemd-run --wait --quiet --unit gobuild-attr -p User=bob -p WorkingDirectory=/var/tmp/attr -p "Environment=HOME=/home/bob PATH=/opt/go/bin:/usr/bin:/bin GOCACHE=/srv/gocache" /opt/go/bin/go build ./...
eventually written-attributed 60 bash -c 'grep "^gocache_warden_cache_written_bytes_total{cache=\"/srv/gocache\",unit=\"gobuild-attr.service\",user=\"bob\"}" /var/lib/prometheus/node-exporter/gocache-warden.prom | tee /dev/stderr | grep -q " [1-9]"'
eventually check-top-writers 30 bash -c 'gocache-warden check 2>/dev/null | grep "writers " | tee /dev/stderr | grep -q "bob (gobuild-attr.service)"'

phase "build failures read from the journal"
# A system service whose GOCACHE its user cannot write: every build fails with cmd/go's
# "failed to initialize build cache at …: permission denied" on stderr, which systemd puts
# in the journal with the unit and the uid; the agent counts it in the textfile within a
# minute. Stopped right after: it sets a GOCACHE other than the policy's.
install -d -m 0755 /var/lib/gobuild-ro
cat > /etc/systemd/system/gobuild-ro.service <<'EOF'
[Unit]
Description=go build loop whose GOCACHE its user cannot write
[Service]
User=bob
Environment=HOME=/home/bob PATH=/opt/go/bin:/usr/bin:/bin GOCACHE=/var/lib/gobuild-ro
ExecStart=/bin/sh -c 'mkdir -p /tmp/svc-ro && cd /tmp/svc-ro && printf "module svcro\\ngo 1.22\\n" > go.mod && printf "package svcro\\n" > s.go && while :; do go build ./... || true; sleep 5; done'
EOF
systemctl daemon-reload
expect gobuild-ro-started systemctl start gobuild-ro.service
eventually build-failure-counted 60 bash -c 'grep "^gocache_warden_build_failures_total{" /var/lib/prometheus/node-exporter/gocache-warden.prom | tee /dev/stderr | grep -q "cache=\"/var/lib/gobuild-ro\",reason=\"cache-permission\",unit=\"gobuild-ro.service\",user=\"bob\""'
expect build-failure-logged journal_has -u gocache-warden GOCACHE_WARDEN_ACTION=build-failure REASON=cache-permission UNIT=gobuild-ro.service
systemctl stop gobuild-ro.service

phase "webhooks"
# What arrived is checked on the host, from the receiver's own log.
eventually webhook-delivered 120 bash -c '[ "$(journalctl -u gocache-warden -o cat | grep -c "alert delivered")" -ge 2 ]'
# Delivered by relay processes (one per request, a dynamic user), none of which failed.
expect relay-ran bash -c 'journalctl --no-pager -o cat -u "gocache-warden-relay@*" | tee /dev/stderr | grep -q "Deactivated successfully"'
expect relay-none-failed bash -c '! systemctl list-units --all --failed --no-legend "gocache-warden-relay@*" | tee /dev/stderr | grep .'
# Only root may hand the relay a request: a user's connect is refused by the socket's mode.
expect relay-refuses-users bash -c 'runuser -u carol -- python3 -c "import socket; socket.socket(socket.AF_UNIX).connect(\"/run/gocache-warden-relay.sock\")" 2>&1 | tee /dev/stderr | grep -q PermissionError'

phase "a broken reload keeps the running policy"
pid=$(prop gocache-warden MainPID)
printf '[cache.shared]\nmax_size = "plenty"\n' > /etc/gocache-warden/policy.d/60-broken.toml
expect broken-reload systemctl reload gocache-warden
eventually broken-reload-logged 30 journal_has -u gocache-warden GOCACHE_WARDEN_ACTION=reload-failed
expect broken-reload-names-file bash -c 'journalctl -u gocache-warden -o cat GOCACHE_WARDEN_ACTION=reload-failed | tee /dev/stderr | grep -q "60-broken.toml:2:"'
expect broken-reload-same-process test "$(prop gocache-warden MainPID)" = "$pid"
expect broken-reload-active is_active gocache-warden
rm /etc/gocache-warden/policy.d/60-broken.toml
expect fixed-reload systemctl reload gocache-warden

phase "stop in the middle of a sweep"
python3 "$H/mkcache.py" /srv/big --entries 20000 --days 20 --seed 4 > "$EV/seed-big.txt"
systemctl restart gocache-warden --no-block
eventually sweeping 60 bash -c 'systemctl show gocache-warden -p StatusText --value | tee /dev/stderr | grep -qi sweep'
t0=$(date +%s%N)
systemctl stop gocache-warden
t1=$(date +%s%N)
echo "stop took $(( (t1 - t0) / 1000000 )) ms" > "$EV/stop-time.txt"
expect stop-within-timeout test $(( (t1 - t0) / 1000000 )) -lt 10000
expect stop-clean bash -c 'systemctl show gocache-warden -p Result --value | tee /dev/stderr | grep -qx success'

phase "the watchdog ends a hung agent and the unit restarts"
mkdir -p /run/systemd/system/gocache-warden.service.d
printf '[Service]\nWatchdogSec=10s\n' > /run/systemd/system/gocache-warden.service.d/watchdog.conf
systemctl daemon-reload
systemctl start gocache-warden
eventually wd-active 120 is_active gocache-warden
restarts=$(prop gocache-warden NRestarts)
kill -STOP "$(prop gocache-warden MainPID)"
eventually wd-restarted 90 bash -c "test \$(systemctl show gocache-warden -p NRestarts --value) -gt $restarts"
eventually wd-active-again 120 is_active gocache-warden
expect wd-logged bash -c 'journalctl -u gocache-warden --no-pager | grep -i "watchdog timeout"'
rm -rf /run/systemd/system/gocache-warden.service.d
systemctl daemon-reload

phase "the enforce timer's service does the same job under its own sandbox"
systemctl stop gocache-warden
python3 "$H/mkcache.py" /var/tmp/seed2 --entries 2500 --days 20 --seed 5 > /dev/null
cp -a /var/tmp/seed2/. /srv/gocache/
# With /opt/gocache outside its ReadWritePaths= the pass refuses that cache and fails (so
# `systemctl --failed` shows it), after doing its job everywhere else.
expect enforce-refuses-read-only bash -c 'if systemctl start gocache-warden-enforce.service; then exit 1; fi; journalctl -u gocache-warden-enforce -o cat | grep "refusing to change /opt/gocache"'
sed -i '/^\[cache.opt\]/,/^$/d' /etc/gocache-warden/policy.d/50-build-server.toml
expect enforce-oneshot systemctl start gocache-warden-enforce.service
expect enforce-result bash -c 'systemctl show gocache-warden-enforce -p Result --value | grep -qx success'
expect enforce-to-limit bash -c 'b=$(du -sB1 /srv/gocache | cut -f1); echo "$b"; [ "$b" -le $((3 * 1024 * 1024)) ]'
expect enforce-group bash -c '! find /srv/gocache ! -group builders | grep .'
expect enforce-no-eperm bash -c '! journalctl -u gocache-warden-enforce -o cat | grep -i "operation not permitted\|read-only file system"'
expect timer-enable systemctl enable --now gocache-warden-enforce.timer
expect timer-scheduled bash -c 'systemctl list-timers gocache-warden-enforce.timer --no-legend | tee /dev/stderr | grep -q gocache-warden-enforce'
systemctl disable --now gocache-warden-enforce.timer
systemctl start gocache-warden
eventually agent-back 60 is_active gocache-warden

phase "user agent (with a session bus, then without dbus-user-session)"
expect user-agent-alice systemctl --user -M alice@ enable --now gocache-warden.service
eventually user-agent-alice-active 60 is_user_active alice gocache-warden.service
dpkg -L dbus-user-session > "$OUT/dbus-user-session-files"
dpkg -r dbus-user-session > "$EV/remove-dbus-user-session.txt" 2>&1
useradd -m -s /bin/bash dave
install -d -o dave -g dave /home/dave/.config /home/dave/.config/gocache-warden /home/dave/.config/gocache-warden/policy.d /home/dave/.config/systemd /home/dave/.config/systemd/user
printf '[units.mine]\nmatch = ["nocache*.service"]\nremediation = "report"\n' > /home/dave/.config/gocache-warden/policy.d/50-units.toml
printf '[Service]\nExecStart=/bin/sleep infinity\n' > /home/dave/.config/systemd/user/nocache.service
chown -R dave: /home/dave/.config
loginctl enable-linger dave
dave=$(id -u dave)
eventually manager-dave 60 test -S "/run/user/$dave/systemd/private"
expect dave-no-session-bus test ! -e "/run/user/$dave/bus"
# Without a session bus `systemctl --user -M dave@` cannot reach dave's manager; dave's own
# systemctl does, through the manager's private socket, as the agent must.
as_dave() { runuser -u dave -- env XDG_RUNTIME_DIR="/run/user/$dave" "$@"; }
expect dave-start-unit as_dave systemctl --user start nocache.service
expect user-agent-dave as_dave systemctl --user enable --now gocache-warden.service
eventually user-agent-dave-active 90 bash -c "runuser -u dave -- env XDG_RUNTIME_DIR=/run/user/$dave systemctl --user show gocache-warden.service -p ActiveState --value | grep -qx active"
eventually user-agent-dave-finds-unit 90 bash -c "journalctl _UID=$dave -o cat GOCACHE_WARDEN_ACTION=unit-missing-gocache | tee /dev/stderr | grep -q nocache"

phase "upgrade restarts the agent; purge leaves nothing behind"
pid=$(prop gocache-warden MainPID)
expect upgrade apt-get install -y --no-install-recommends "$H"/deb2/gocache-warden_*.deb
eventually upgrade-restarted 60 bash -c "p=\$(systemctl show gocache-warden -p MainPID --value); [ \"\$p\" != $pid ] && [ \"\$p\" != 0 ]"
eventually upgrade-active 60 is_active gocache-warden
systemctl --user -M alice@ disable --now gocache-warden.service
as_dave systemctl --user disable --now gocache-warden.service
rm -f /etc/gocache-warden/policy.d/50-build-server.toml /etc/gocache-warden/slack-url /etc/gocache-warden/hook-url
expect purge apt-get purge -y gocache-warden
snapshot_files > "$OUT/files-after"
diff "$OUT/files-before" "$OUT/files-after" > "$OUT/files-diff"
# What stays on purpose: the caches (data), and the drop-ins the agent wrote into other
# units (removing them would silently change how those services build).
# Also not the package's doing: what this script added (the build loop, the read-only cache,
# two system services, the unwritable GOCACHE of one) or removed (dbus-user-session).
expect purge-leaves-nothing bash -c "! grep '^[<>]' $OUT/files-diff | cut -c3- | grep -v -x -F -f $OUT/dbus-user-session-files | grep -v 'gobuild-svc.service\|gobuild-ro.service\|^/var/lib/gobuild-ro\|^/usr/local/bin/build-loop\|^/opt/gocache\|^/etc/\(passwd\|group\|shadow\|gshadow\|subuid\|subgid\)-\$'"
expect purge-no-process bash -c '! pgrep -x gocache-warden'
phase "done"
exit 0
