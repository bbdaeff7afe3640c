#!/usr/bin/env python3
"""What write attribution costs builds: `go build std`, cold (no entries, every package
compiled and written) and warm (everything a hit), with and without the agent watching that
cache through fanotify, in interleaved pairs, and writes benches/RESULTS-attribution.md.

    sudo python3 benches/attribution.py [--cold 3] [--warm 7] [--go PATH]
    sudo python3 benches/attribution.py --three-way 5   # no agent / agent elsewhere / watching

Needs root (the system agent's privileged fanotify group) and a Go toolchain (`--go`, or the
suite's /opt/gocache-warden-test-go, or `go` on PATH). Builds the release binary first.
Nothing else should run meanwhile: the ratio is the figure, and a busy machine moves it.
"""

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def release_binary():
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout
    import json

    return Path(json.loads(meta)["target_directory"]) / "release" / "gocache-warden"


def find_go(arg):
    for c in [arg, "/opt/gocache-warden-test-go/bin/go", shutil.which("go")]:
        if c and Path(c).exists():
            return c
    sys.exit("no go toolchain: pass --go")


class Agent:
    """The agent watching `cache` (policy: that cache only), ready once its shards are marked."""

    def __init__(self, binary, work, cache):
        self.policy = work / "policy.toml"
        self.policy.write_text(
            "[cache.build]\nenabled = false\n[cache.modules]\nenabled = false\n"
            f"[cache.bench]\npath = \"{cache}\"\n[agent]\ninterval = \"1h\"\n"
        )
        self.log = work / "agent.log"
        self.binary, self.work, self.cache = binary, work, cache

    def __enter__(self):
        self.log.write_text("")
        self.p = subprocess.Popen(
            [str(self.binary), "--policy", str(self.policy), "run"],
            stderr=open(self.log, "w"),
            env={**os.environ, "STATE_DIRECTORY": str(self.work / "state")},
        )
        want = f"writes into {self.cache} are attributed (256 shards)"
        t = time.time()
        while want not in self.log.read_text():
            if time.time() - t > 60 or self.p.poll() is not None:
                sys.exit(f"the agent did not mark the cache:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def cpu(self):
        """CPU seconds (user + system) the agent has used so far."""
        f = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *a):
        self.p.send_signal(signal.SIGTERM)
        self.p.wait(timeout=30)


def build(go, cache, env_base):
    """Wall seconds, and CPU seconds of the build's processes."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(
        [go, "build", "std"], check=True, env={**env_base, "GOCACHE": str(cache)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def empty(cache):
    """No entries, every shard kept (as `go clean -cache` leaves a cache)."""
    for shard in cache.iterdir():
        if shard.is_dir():
            for f in shard.iterdir():
                f.unlink()


def three_way(rounds, binary, go, work, cache, env_base):
    other = work / "other"
    other.mkdir()
    build(go, other, env_base)
    modes = ["alone", "agent-elsewhere", "agent-watching"]
    wall = {m: [] for m in modes}
    cpu = {m: [] for m in modes}
    for i in range(rounds):
        for m in modes[i % 3:] + modes[:i % 3]:
            empty(cache)
            if m == "alone":
                w, c = build(go, cache, env_base)
            else:
                with Agent(binary, work, other if m == "agent-elsewhere" else cache):
                    w, c = build(go, cache, env_base)
                    time.sleep(1.5)
            wall[m].append(w)
            cpu[m].append(c)
            print(f"{m} {w:.2f} s, build CPU {c:.1f} s", flush=True)
    for m in modes:
        print(f"{m}: median wall {statistics.median(wall[m]):.2f} s, "
              f"median build CPU {statistics.median(cpu[m]):.1f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cold", type=int, default=3, help="cold pairs (each about 2 builds of std)")
    ap.add_argument("--warm", type=int, default=7, help="warm pairs")
    ap.add_argument("--go")
    ap.add_argument("--out", default=str(HERE / "RESULTS-attribution.md"))
    ap.add_argument(
        "--three-way", type=int, default=0, metavar="ROUNDS",
        help="instead: cold builds with no agent, the agent watching another cache, and the "
        "agent watching this one, rotated each round; prints medians (how much is noise)",
    )
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the system agent's fanotify group needs CAP_SYS_ADMIN")
    binary, go = release_binary(), find_go(a.go)
    work = Path(tempfile.mkdtemp(prefix="gcw-attr-bench-"))
    cache = work / "gocache"
    cache.mkdir()
    env_base = {
        "PATH": f"{Path(go).parent}:/usr/bin:/bin", "HOME": str(work),
        "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "", "GOTELEMETRY": "off",
    }
    version = subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip()
    build(go, cache, env_base)  # shards, and the toolchain's own files in the page cache
    if a.three_way:
        three_way(a.three_way, binary, go, work, cache, env_base)
        return
    rows = {}
    for kind, pairs in [("cold", a.cold), ("warm", a.warm)]:
        without, with_, agent_cpu, build_cpu = [], [], [], []
        for i in range(pairs):
            # Alternate which goes first, so drift over the run cancels out.
            order = [False, True] if i % 2 == 0 else [True, False]
            for watched in order:
                if kind == "cold":
                    empty(cache)
                else:
                    build(go, cache, env_base)  # whatever the last cold run left, now a hit
                if watched:
                    with Agent(binary, work, cache) as agent:
                        c0 = agent.cpu()
                        v, cpu = build(go, cache, env_base)
                        time.sleep(1.5)  # the watcher's last batch, before the agent stops
                        agent_cpu.append(agent.cpu() - c0)
                        build_cpu.append(cpu)
                    with_.append(v)
                else:
                    v, _ = build(go, cache, env_base)
                    without.append(v)
                print(f"{kind} {'watched' if watched else 'alone'} {v:.2f} s", flush=True)
        rows[kind] = (
            statistics.median(without), statistics.median(with_), without, with_,
            sum(agent_cpu), sum(build_cpu),
        )
    lines = [
        "# Write attribution: what it costs `go build std`",
        "",
        f"`sudo python3 benches/attribution.py --cold {a.cold} --warm {a.warm}`, {version}, "
        f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Wall time, "
        "median of interleaved pairs; `watched`: the agent (release build, as root) has the "
        "cache's 256 shards marked (fanotify, FAN_CLOSE_WRITE) and attributes every file.",
        "",
        "The agent's CPU is what it used while the watched builds ran (and the 1.5 s after, for "
        "its last batch), against the CPU of those builds' own processes: noise cannot move it.",
        "",
        "| build | alone | watched | wall overhead | agent CPU ÷ build CPU | runs (alone; watched) |",
        "|---|---|---|---|---|---|",
    ]
    for kind, (wo, w, all_wo, all_w, acpu, bcpu) in rows.items():
        lines.append(
            f"| {kind} `go build std` | {wo:.2f} s | {w:.2f} s | {100 * (w / wo - 1):+.1f} % | "
            f"{100 * acpu / bcpu:.2f} % ({acpu:.2f} s of {bcpu:.1f} s) | "
            f"{', '.join(f'{x:.2f}' for x in all_wo)}; {', '.join(f'{x:.2f}' for x in all_w)} |"
        )
    text = "\n".join(lines) + "\n"
    Path(a.out).write_text(text)
    print(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
