#!/usr/bin/env bash
# Builds through `gocache-warden cacheprog` against plain GOCACHE (issue #14).
#
#   bash benches/cacheprog.sh [--quick] [BINARY]
#
# BINARY defaults to $CARGO_TARGET_DIR/release/gocache-warden (or target/release/...).
# Runs, in one session:
#   std (`go build std`)
#     cold  plain      empty GOCACHE
#     cold  cacheprog  empty own cache, no shared cache (every output put through the program)
#     warm  plain      the cache a cold run filled
#     warm  shared, first   empty own cache, shared = the plain run's cache: every hit hashed
#     warm  shared, again   an own cache whose memo knows the shared outputs (a member's
#                           second build): hits served without re-hashing
#     warm  own        the own cache a cold cacheprog run filled
#     warm  floor      the same own cache through benches/cacheprog_floor.rs: a program that
#                      answers every get from memory with no work at all, i.e. what the
#                      protocol itself costs here, which no cache program can go under
#   module (`go build -o /dev/null cmd/go`: the go command, module cmd with its vendored
#   dependencies; the link is never cached, so a warm build still links)
#     the same runs
# in rounds whose order rotates, each kind after a warm-up round that is thrown away (the
# session's first builds read the toolchain from disk; the first build of a round warms the
# page cache for the next): C cold rounds, plain first in odd rounds and the cache program in
# even ones; N warm rounds, round k starting with the k-th of the five warm builds, so each
# comes first, second, … equally often when N is a multiple of 5.
# Ratios: per round, program ÷ plain of the same round; the median of those (it cancels the
# machine's drift better than a ratio of medians). --quick: N=5, C=2 instead of 15 and 4.
set -euo pipefail
N=15
C=4
if [[ ${1:-} == --quick ]]; then N=5; C=2; shift; fi
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/gocache-warden}
[[ -x $BIN ]] || { echo "no binary at $BIN (cargo build --release)" >&2; exit 2; }
BIN=$(realpath "$BIN")
HERE=$(cd "$(dirname "$0")" && pwd)
GO=$(python3 -c 'import go,os;print(os.path.dirname(go.__file__))' 2>/dev/null)/bin/go || true
[[ -x $GO ]] || GO=$(command -v go)
W=$(mktemp -d /tmp/gcw-bench-cacheprog.XXXXXX)
trap 'rm -rf "$W"' EXIT
export GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0 GOTELEMETRY=off
cd "$W"
rustc --edition 2024 -O "$HERE/cacheprog_floor.rs" -o "$W/floor"

t() { # what (std|module), then env assignments...; prints the build's seconds
    local s e what=$1
    shift
    s=$(date +%s.%N)
    if [[ $what == std ]]; then
        env GOFLAGS=-mod=mod "$@" "$GO" build std >/dev/null 2>"$W/err" || { cat "$W/err" >&2; exit 1; }
    else
        env "$@" "$GO" build -o /dev/null cmd/go >/dev/null 2>"$W/err" || { cat "$W/err" >&2; exit 1; }
    fi
    e=$(date +%s.%N)
    echo "$e - $s" | bc
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
r() { echo "scale=3; $1 / $2" | bc; }
# Median over rounds of (column $1) ÷ (column $2) of a rounds file.
rmed() { awk -v a="$1" -v b="$2" '{print $a / $b}' "$3" | median | xargs printf '%.3f'; }
cmed() { awk -v a="$1" '{print $a}' "$2" | median | xargs printf '%.2f'; }

# The floor's table: every action record of a filled own cache, as the response fields
# cmd/go expects (what our program would answer).
floor_table() { # cache dir, table file
    python3 - "$1" "$2" <<'PY'
import base64, datetime, os, sys
root, out = sys.argv[1], open(sys.argv[2], "w")
for shard in sorted(os.listdir(root)):
    d = os.path.join(root, shard)
    if len(shard) != 2 or not os.path.isdir(d):
        continue
    for name in os.listdir(d):
        if not name.endswith("-a"):
            continue
        f = open(os.path.join(d, name)).read().split()
        action, output, size, nanos = f[1], f[2], int(f[3]), int(f[4])
        t = datetime.datetime.fromtimestamp(nanos // 10**9, datetime.timezone.utc)
        when = t.strftime("%Y-%m-%dT%H:%M:%S") + ".%09dZ" % (nanos % 10**9)
        b64 = lambda h: base64.b64encode(bytes.fromhex(h)).decode()
        out.write('%s "OutputID":"%s","Size":%d,"Time":"%s","DiskPath":"%s/%s/%s-d"\n'
                  % (b64(action), b64(output), size, when, root, output[:2], output))
PY
}

cold_one() { # what, variant (plain|prog) → seconds of a build into an emptied cache
    local what=$1 own=$W/$1-own
    if [[ $2 == plain ]]; then
        rm -rf "$W/$what-plain" && mkdir "$W/$what-plain"
        t "$what" GOCACHE="$W/$what-plain"
    else
        rm -rf "$own" && mkdir "$own"
        t "$what" GOCACHE="$own" GOCACHEPROG="$BIN cacheprog --own $own"
    fi
}

# The warm builds, in the column order of $W/<what>.rounds.
WARM=(plain first again own floor)
warm_one() { # what, variant → seconds
    local what=$1 own=$W/$1-own again=$W/$1-again
    case $2 in
    plain) t "$what" GOCACHE="$W/$what-plain" ;;
    first)
        rm -rf "$W/$what-first" && mkdir "$W/$what-first"
        t "$what" GOCACHE="$W/$what-first" GOCACHEPROG="$BIN cacheprog --own $W/$what-first --shared $W/$what-plain"
        ;;
    again) t "$what" GOCACHE="$again" GOCACHEPROG="$BIN cacheprog --own $again --shared $W/$what-plain" ;;
    own) t "$what" GOCACHE="$own" GOCACHEPROG="$BIN cacheprog --own $own" ;;
    floor) t "$what" GOCACHE="$own" GOCACHEPROG="$W/floor $W/$what.table" ;;
    esac
}

# One warm round: every build once, starting with the k-th; the times in WARM's order.
warm_round() { # what, k
    local j v
    local -A secs
    for j in "${!WARM[@]}"; do
        v=${WARM[$(((j + $2) % ${#WARM[@]}))]}
        secs[$v]=$(warm_one "$1" "$v")
    done
    echo "${secs[plain]} ${secs[first]} ${secs[again]} ${secs[own]} ${secs[floor]}"
}

bench() { # what; rows "plain first again own floor" to $W/<what>.rounds, "plain prog" to .cold
    local what=$1 i p o
    # Warm-up, thrown away: the first cold builds of the session read the toolchain and the
    # sources from disk.
    cold_one "$what" plain >/dev/null
    cold_one "$what" prog >/dev/null
    for i in $(seq "$C"); do
        if ((i % 2)); then
            p=$(cold_one "$what" plain)
            o=$(cold_one "$what" prog)
        else
            o=$(cold_one "$what" prog)
            p=$(cold_one "$what" plain)
        fi
        echo "$p $o" >>"$W/$what.cold"
    done
    floor_table "$W/$what-own" "$W/$what.table"
    # The memo remembers outputs whose ctime is 2 s old: let the plain cache settle, then
    # one build fills the "again" cache's memo.
    sleep 3
    mkdir -p "$W/$what-again"
    warm_one "$what" again >/dev/null
    cp "$W/$what-again/gocache-warden-cacheprog.json" "$W/$what-again.before.json"
    warm_round "$what" 0 >/dev/null # warm-up, thrown away
    for i in $(seq "$N"); do
        warm_round "$what" "$((i - 1))" >>"$W/$what.rounds"
    done
}

bench std
bench module
echo "$("$GO" version | cut -d' ' -f3), $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg) at the end; cold = $C rounds, warm = $N rounds (orders rotated, after a warm-up round)"
printf '| build | run | plain GOCACHE | cache program | ratio (median of rounds) |\n|---|---|---|---|---|\n'
for what in std module; do
    label=$([[ $what == std ]] && echo 'go build std' || echo 'go build cmd/go')
    hits=$(python3 -c "import json;print(json.load(open('$W/$what-first/gocache-warden-cacheprog.json'))['shared_hits'])")
    memo=$(python3 -c "
import json
a, b = (json.load(open(f)) for f in ('$W/$what-again/gocache-warden-cacheprog.json', '$W/$what-again.before.json'))
print(round((a['shared_hits_memo'] - b['shared_hits_memo']) / (a['shared_hits'] - b['shared_hits']) * 100))")
    R=$W/$what.rounds
    row() { printf '| %s | %s | %s s | %s s | %s× |\n' "$label" "$1" "$(cmed 1 "$R")" "$(cmed "$2" "$R")" "$(rmed "$2" 1 "$R")"; }
    printf '| %s | cold (empty caches: everything compiled and put) | %s s | %s s | %s× |\n' "$label" "$(cmed 1 "$W/$what.cold")" "$(cmed 2 "$W/$what.cold")" "$(rmed 2 1 "$W/$what.cold")"
    row 'warm, hits from the own cache' 4
    row 'warm, the floor: a program that does no work per get' 5
    row "warm, $hits hits from the shared cache, first build (every output hashed)" 2
    row "warm, hits from the shared cache, later builds ($memo% served on the memo)" 3
    printf '| %s | warm own ÷ the floor | | | %s× |\n' "$label" "$(rmed 4 5 "$R")"
done
