#!/usr/bin/env python3
"""Make a synthetic Go build cache (GOCACHE layout) for tests and benchmarks.

The project's own generator: nothing outside the repository is needed to test it.
Layout as cmd/go (1.2x) writes it: ROOT/README, ROOT/trim.txt and 256 shards 00..ff,
each holding `<64 hex>-a` action records (exactly 175 bytes: `v1 <id> <out> <size:20>
<unixnano:20>\\n`) and the `<64 hex>-d` outputs they name. With --exec-share, that share
of outputs are cached executables, which Go 1.24+ stores as a *directory* `<hex>-d/`
holding one file. Output sizes are heavy-tailed (lognormal); last-use times (mtime and
atime) are spread over --days days, skewed towards recent use, so that age- and
LRU-based eviction have real work to do. Deterministic for a given --seed.

  mkcache.py ROOT --entries 200000 [--days 60] [--seed 1] [--mean-kib 4] [--exec-share 0.01]

Prints `entries=N files=F output_bytes=B` on success.
"""
import argparse
import os
import random
import time

README = (
    "This directory holds cached build artifacts from the Go build system.\n"
    "Run \"go clean -cache\" if the directory is getting too large.\n"
    "Run \"go clean -fuzzcache\" to delete the fuzz cache.\n"
    "See golang.org to learn more about Go.\n"
)


def action_record(action_hex, output_hex, size, unixnano):
    rec = "v1 %s %s %20d %20d\n" % (action_hex, output_hex, size, unixnano)
    assert len(rec) == 175, len(rec)
    return rec.encode()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("root")
    p.add_argument("--entries", type=int, default=100000, help="action records; each names one output")
    p.add_argument("--days", type=float, default=60.0, help="spread of last-use times into the past")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--mean-kib", type=float, default=4.0, help="mean size of output files")
    p.add_argument("--exec-share", type=float, default=0.0,
                   help="share of outputs that are executables (a -d directory holding one file)")
    a = p.parse_args()
    rnd = random.Random(a.seed)
    os.makedirs(a.root, exist_ok=True)
    with open(os.path.join(a.root, "README"), "w") as f:
        f.write(README)
    now = time.time()
    with open(os.path.join(a.root, "trim.txt"), "w") as f:
        f.write("%d\n" % int(now))
    for i in range(256):
        os.makedirs(os.path.join(a.root, "%02x" % i), exist_ok=True)
    blob = rnd.randbytes(1 << 20)
    total = 0
    files = 0
    for _ in range(a.entries):
        action = "%064x" % rnd.getrandbits(256)
        output = "%064x" % rnd.getrandbits(256)
        size = min(int(rnd.lognormvariate(0, 1.2) * a.mean_kib * 1024 / 2.05), len(blob))
        t = now - rnd.random() ** 1.5 * a.days * 86400
        out = os.path.join(a.root, output[:2], output + "-d")
        if rnd.random() < a.exec_share:
            os.mkdir(out)
            exe = os.path.join(out, "a.out")
            with open(exe, "wb") as f:
                f.write(blob[:size])
            os.chmod(exe, 0o755)
            os.utime(exe, (t, t))
        else:
            with open(out, "wb") as f:
                f.write(blob[:size])
        os.utime(out, (t, t))
        act = os.path.join(a.root, action[:2], action + "-a")
        with open(act, "wb") as f:
            f.write(action_record(action, output, size, int(t * 1e9)))
        os.utime(act, (t, t))
        total += size
        files += 2
    print("entries=%d files=%d output_bytes=%d" % (a.entries, files, total))


if __name__ == "__main__":
    main()
