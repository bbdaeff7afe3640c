#!/usr/bin/env bash
# `go build std` with `gocache-warden cacheprog` against plain GOCACHE (issue #14).
#
#   bash benches/cacheprog.sh [--quick] [BINARY]
#
# BINARY defaults to $CARGO_TARGET_DIR/release/gocache-warden (or target/release/...).
# Runs, in one session, interleaved where it matters:
#   cold  plain      empty GOCACHE                       go build std
#   cold  cacheprog  empty own cache, no shared cache    (every output put through the program)
#   warm  plain      the cache the cold run filled       (median of N)
#   warm  shared     empty own cache, shared = the plain run's cache (every hit re-hashed)
#   warm  own        the own cache the cold cacheprog run filled
# --quick: N=3 warm runs instead of 7. Prints a table of medians and ratios.
set -euo pipefail
N=7
if [[ ${1:-} == --quick ]]; then N=3; shift; fi
BIN=${1:-${CARGO_TARGET_DIR:-target}/release/gocache-warden}
[[ -x $BIN ]] || { echo "no binary at $BIN (cargo build --release)" >&2; exit 2; }
GO=$(python3 -c 'import go,os;print(os.path.dirname(go.__file__))')/bin/go
[[ -x $GO ]] || GO=$(command -v go)
W=$(mktemp -d /tmp/gcw-bench-cacheprog.XXXXXX)
trap 'rm -rf "$W"' EXIT
export GOFLAGS=-mod=mod GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0 GOTELEMETRY=off
cd "$W"

t() { # label, then env assignments..., runs go build std; prints seconds
    local s e
    s=$(date +%s.%N)
    env "${@:2}" "$GO" build std >/dev/null 2>"$W/err" || { cat "$W/err" >&2; exit 1; }
    e=$(date +%s.%N)
    echo "$e - $s" | bc
}
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

mkdir -p plain own-cold own-shared
prog_cold="$BIN cacheprog --own $W/own-cold"
cold_plain=$(t cold-plain GOCACHE="$W/plain")
cold_prog=$(t cold-prog GOCACHE="$W/own-cold" GOCACHEPROG="$prog_cold")

warm_plain=(); warm_shared=(); warm_own=()
for _ in $(seq "$N"); do
    warm_plain+=("$(t warm-plain GOCACHE="$W/plain")")
    rm -rf "$W/own-shared" && mkdir "$W/own-shared"
    warm_shared+=("$(t warm-shared GOCACHE="$W/own-shared" GOCACHEPROG="$BIN cacheprog --own $W/own-shared --shared $W/plain")")
    warm_own+=("$(t warm-own GOCACHE="$W/own-cold" GOCACHEPROG="$prog_cold")")
done
mp=$(printf '%s\n' "${warm_plain[@]}" | median)
ms=$(printf '%s\n' "${warm_shared[@]}" | median)
mo=$(printf '%s\n' "${warm_own[@]}" | median)
hits=$(python3 -c "import json;print(json.load(open('$W/own-shared/gocache-warden-cacheprog.json'))['shared_hits'])")
r() { echo "scale=3; $1 / $2" | bc; }
echo "go build std, $("$GO" version | cut -d' ' -f3), $(nproc) cores, warm = median of $N"
printf '| run | plain GOCACHE | cacheprog | ratio |\n|---|---|---|---|\n'
printf '| cold (empty caches) | %.2f s | %.2f s | %s× |\n' "$cold_plain" "$cold_prog" "$(r "$cold_prog" "$cold_plain")"
printf '| warm, hits from the shared cache (re-hashed; %s hits per build) | %.2f s | %.2f s | %s× |\n' "$hits" "$mp" "$ms" "$(r "$ms" "$mp")"
printf '| warm, hits from the own cache | %.2f s | %.2f s | %s× |\n' "$mp" "$mo" "$(r "$mo" "$mp")"
