#!/usr/bin/env bash
# Steady-state benchmark (issue #21): the agent (`gocache-warden run`) over N per-user caches
# of 20k entries while one user writes into one of them, today's binary beside an older one,
# interleaved in one run. See benches/steady.py for what is measured and how.
#
#   sudo bash benches/steady.sh                     # N = 1, 8, 50; 1 and 20 MB/s; 120 s each (~45 min)
#   sudo bash benches/steady.sh --ns 1,8 --seconds 30 --rates 1   # a short look
#   sudo bash benches/steady.sh --help              # all options
#
# Binaries: the release build of this checkout (built here; or GCW_NEW_BIN=PATH), and the
# release build of OLD_REV (default cfbfb50, "today's main" in issue #21), exported with
# `git archive` and built once under $target/steady-old/OLD_REV (or GCW_OLD_BIN=PATH;
# GCW_OLD_BIN=none runs the new binary alone).
# Needs root, python3, du, cp, unshare (util-linux); about 20 GB free in --workdir for N = 50.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
cd "$repo"
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
new=${GCW_NEW_BIN:-}
if [ -z "$new" ]; then
    cargo build --release --quiet
    new="$target/release/gocache-warden"
fi
old=${GCW_OLD_BIN:-}
old_rev=${OLD_REV:-cfbfb50}
if [ -z "$old" ]; then
    dir="$target/steady-old/$old_rev"
    old="$dir/target/release/gocache-warden"
    if [ ! -x "$old" ]; then
        rm -rf "$dir/src"
        mkdir -p "$dir/src"
        git archive "$old_rev" | tar -x -C "$dir/src"
        (cd "$dir/src" && CARGO_TARGET_DIR="$dir/target" cargo build --release --quiet)
    fi
fi
args=(--new-bin "$new" --new-label "$(git rev-parse --short HEAD)")
if [ "$old" != none ]; then
    args+=(--old-bin "$old" --old-label "$(git rev-parse --short "$old_rev")")
fi
exec python3 "$here/steady.py" "${args[@]}" "$@"
