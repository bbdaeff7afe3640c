#!/usr/bin/env python3
"""Steady state (issue #21): what the agent costs on a build server all day.

N per-user caches (fixed paths, each with its own `max_size`, as `users = "all"` gives each
user's cache its own limit) of 20k entries each, in Go's layout; the agent (`gocache-warden
run`, system scope, `interval = "1h"`, `watch = true`) sweeps them once at start; then one
writer adds new Go entries (an output `XX/<hex>-d` of 4-64 KiB, then its 175-byte action
record `XX/<hex>-a`, both used now) into cache 0 at a fixed rate for --seconds. Measured per
scenario (binary, N, rate):

  CPU        the agent's utime+stime (/proc/PID/stat) over the writing window, per minute
             (what it used until its first sweep ended is not counted)
  unwritten  entries the agent walked in the caches nobody wrote to after its first sweep:
             the delta of gocache_warden_cache_inspected_entries_total; binaries without
             that counter: (delta of gocache_warden_sweeps_total of that cache) x (files +
             dirs gauges), an estimate, marked "~"
  overshoot  the largest (du -sB1 - max_size) of the written cache while the evictable (old)
             entries left could still bring it back to its limit, sampled every 0.25 s from
             an exact ledger (every file's st_blocks, inotify IN_DELETE on the shards, the
             257 directories re-stat'ed each sample; checked against `du -sB1` at the end)
  growth     sweeps triggered by growth (every sweep after the first: the timer's is an hour
             away), and the cache walks they made (sum over caches of the
             gocache_warden_sweeps_total deltas after the first sweep, less the walk-free
             evictions, logged "... without walking it ..."); in the details, the agent's
             "... grew past its limit ..." log lines

The old entries are 2-60 days old (past min_age = 1h); the writer's are new, so they are
held by the floor. Cache 0 is big enough (3 GiB by default) that 120 s at 20 MB/s leaves old
entries to evict; the unwritten caches have small outputs (the walk costs by the entry, not
by the byte) so that 50 of them fit on the disk. Each cache starts just under its limit.

Scenarios run interleaved, old and new binary alternating, on identical copies of cache 0;
the unwritten caches are shared (the agent only rewrites their trim.txt).

Usage: bash benches/steady.sh [--ns 1,8,50] [--old-ns 1,8,50] [--rates 1,20] [--seconds 120]
                              [--workdir DIR --keep] [--out FILE]
"""
import argparse
import ctypes
import json
import math
import multiprocessing
import os
import platform
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from benchlib import MIB, copy_tree, die, du_bytes, log, proc_sample, rmtree  # noqa: E402

GIB = 1 << 30
TICK = os.sysconf("SC_CLK_TCK")
README = (
    "This directory holds cached build artifacts from the Go build system.\n"
    'Run "go clean -cache" if the directory is getting too large.\n'
    'Run "go clean -fuzzcache" to delete the fuzz cache.\n'
    "See golang.org to learn more about Go.\n"
)
# Log lines that say a growth sweep was asked for: this main's, and the older one's.
GREW = ("grew past its limit: sweeping it", "a cache grew past its limit")


def action_record(action_hex, output_hex, size, unixnano):
    rec = "v1 %s %s %20d %20d\n" % (action_hex, output_hex, size, unixnano)
    assert len(rec) == 175, len(rec)
    return rec.encode()


def write_file(path, data, ns=None):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if ns is not None:
            os.utime(fd, ns=(ns, ns))
        return os.fstat(fd).st_blocks * 512
    finally:
        os.close(fd)


# ---------------------------------------------------------------- synthetic caches


def make_cache(job):
    """One synthetic cache in Go's layout: README, trim.txt, 256 shards, `entries` action
    records (175 bytes, Go's format) each naming its output; outputs lognormal in size with
    the given mean, clipped to [lo, hi]; last use 2-60 days ago, skewed towards recent."""
    root, entries, seed, mean, lo, hi = job
    rnd = random.Random(seed)
    os.makedirs(root)
    with open(os.path.join(root, "README"), "w") as f:
        f.write(README)
    now = time.time()
    with open(os.path.join(root, "trim.txt"), "w") as f:
        f.write("%d\n" % int(now))
    for i in range(256):
        os.mkdir(os.path.join(root, "%02x" % i))
    blob = rnd.randbytes(hi)
    sigma = 1.2
    mu = math.log(mean) - sigma * sigma / 2
    for _ in range(entries):
        action = "%064x" % rnd.getrandbits(256)
        output = "%064x" % rnd.getrandbits(256)
        size = max(lo, min(hi, int(rnd.lognormvariate(mu, sigma))))
        ns = int((now - (2 + rnd.random() ** 1.5 * 58) * 86400) * 1e9)
        write_file(os.path.join(root, output[:2], output + "-d"), blob[:size], ns)
        write_file(os.path.join(root, action[:2], action + "-a"), action_record(action, output, size, ns), ns)
    return root


class Trees:
    """The written cache's template and the unwritten caches, reused while their markers say
    they were made with the same parameters."""

    def __init__(self, work, entries, written_mean):
        self.dir = os.path.join(work, "trees")
        os.makedirs(self.dir, exist_ok=True)
        self.entries, self.written_mean = entries, written_mean

    def _want(self, i):
        if i == 0:
            return (self.entries, 1000, self.written_mean, 4096, 8 * MIB)
        return (self.entries, 1000 + i, 2048, 1, 64 << 10)

    def path(self, i):
        return os.path.join(self.dir, "template-w" if i == 0 else "u%02d" % i)

    def ensure(self, count):
        todo = []
        for i in range(count):
            root, want = self.path(i), json.dumps(self._want(i))
            marker = root + ".ok"
            if os.path.exists(marker) and open(marker).read() == want and os.path.isdir(root):
                continue
            rmtree(root)
            if os.path.exists(marker):
                os.remove(marker)
            e, seed, mean, lo, hi = self._want(i)
            todo.append((root, e, seed, mean, lo, hi))
        if not todo:
            return
        log(f"generating {len(todo)} cache(s) of {self.entries} entries")
        t0 = time.time()
        with multiprocessing.Pool(min(len(todo), os.cpu_count() or 1)) as pool:
            for root in pool.imap_unordered(make_cache, todo):
                with open(root + ".ok", "w") as f:
                    f.write(json.dumps(self._want(self.index(root))))
        subprocess.run(["sync"], check=True)
        log(f"generated in {time.time() - t0:.0f} s")

    def index(self, root):
        return 0 if root.endswith("template-w") else int(root[-2:])

    def size(self, i):
        """du -sB1 of tree i, kept in a side file (a du of 50 trees costs a minute)."""
        p = self.path(i) + ".du"
        if os.path.exists(p) and os.path.getmtime(p) >= os.path.getmtime(self.path(i) + ".ok"):
            return int(open(p).read())
        n = du_bytes(self.path(i))
        with open(p, "w") as f:
            f.write(str(n))
        return n


# ---------------------------------------------------------------- watching the written cache


class Ledger:
    """The written cache's `du -sB1`, kept exactly and cheaply: every file's allocated bytes
    (from a walk at start, the writer's own fstat, IN_DELETE on the shards), plus the root and
    the 257 directories re-stat'ed at each sample. Also the bytes of the old entries left."""

    IN_DELETE, IN_MOVED_FROM, IN_Q_OVERFLOW, IN_IGNORED = 0x200, 0x40, 0x4000, 0x8000

    def __init__(self, root):
        self.root = root
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.wd = {}
        for i in range(256):
            s = "%02x" % i
            wd = self.libc.inotify_add_watch(self.fd, os.path.join(root, s).encode(), self.IN_DELETE | self.IN_MOVED_FROM)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {s}")
            self.wd[wd] = s
        self.overflows = 0
        self.rescan()
        self.old = set(self.files)
        self.old_bytes = sum(self.files.values())

    def rescan(self):
        self.files = {}
        for s in self.wd.values():
            with os.scandir(os.path.join(self.root, s)) as it:
                for e in it:
                    if e.is_file(follow_symlinks=False):
                        self.files[(s, e.name)] = e.stat(follow_symlinks=False).st_blocks * 512
                    else:  # an executable's -d directory: not made here; counted by du
                        self.files[(s, e.name)] = int(du_bytes(e.path))

    def added(self, shard, name, alloc):
        self.files[(shard, name)] = alloc

    def drain(self):
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return
            off = 0
            while off < len(buf):
                wd, mask, _cookie, n = struct.unpack_from("iIII", buf, off)
                name = buf[off + 16 : off + 16 + n].rstrip(b"\0").decode()
                off += 16 + n
                if mask & self.IN_Q_OVERFLOW:
                    self.overflows += 1
                    old = self.old
                    self.rescan()
                    self.old = old & set(self.files)
                    self.old_bytes = sum(self.files[k] for k in self.old)
                    continue
                key = (self.wd.get(wd), name)
                b = self.files.pop(key, None)
                if b is not None and key in self.old:
                    self.old.discard(key)
                    self.old_bytes -= b

    def du(self):
        self.drain()
        # The root and what it holds itself (shards, README, trim.txt): the shards' files
        # are in the ledger; nothing else here has contents of its own to count.
        n = os.stat(self.root).st_blocks * 512
        with os.scandir(self.root) as it:
            for e in it:
                n += e.stat(follow_symlinks=False).st_blocks * 512
        return n + sum(self.files.values())

    def close(self):
        os.close(self.fd)


class Writer:
    """A user's builds: new entries (output 4-64 KiB, then its action record, both used now)
    into random shards at `rate` bytes per second of data."""

    def __init__(self, root, rate, ledger, seed):
        self.root, self.rate, self.ledger = root, rate, ledger
        self.rnd = random.Random(seed)
        self.blob = self.rnd.randbytes(64 << 10)
        self.data = self.alloc = self.entries = 0

    def step(self, elapsed):
        """Writes what is due by `elapsed` seconds; returns when the next entry is due."""
        while self.data < self.rate * elapsed:
            a, o = os.urandom(32).hex(), os.urandom(32).hex()
            size = self.rnd.randint(4 << 10, 64 << 10)
            b1 = write_file(os.path.join(self.root, o[:2], o + "-d"), self.blob[:size])
            self.ledger.added(o[:2], o + "-d", b1)
            b2 = write_file(os.path.join(self.root, a[:2], a + "-a"), action_record(a, o, size, time.time_ns()))
            self.ledger.added(a[:2], a + "-a", b2)
            self.data += size + 175
            self.alloc += b1 + b2
            self.entries += 1
        return self.data / self.rate


# ---------------------------------------------------------------- the agent


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port):
    """name -> list of (labels dict, value)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def per_cache(metrics, name, **want):
    """cache label -> sum of the samples of `name` whose labels match `want`."""
    out = {}
    for labels, v in metrics.get(name, []):
        if all(labels.get(k) == x for k, x in want.items()):
            out[labels.get("cache")] = out.get(labels.get("cache"), 0.0) + v
    return out


def delta(m1, m0, name, **want):
    a, b = per_cache(m1, name, **want), per_cache(m0, name, **want)
    return {c: a[c] - b.get(c, 0.0) for c in a}


class Agent:
    def __init__(self, binary, policy, work, port):
        self.port = port
        self.log = os.path.join(work, "agent.log")
        env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")}
        env["NO_COLOR"] = "1"
        env["STATE_DIRECTORY"] = os.path.join(work, "state")
        self.errf = open(self.log, "w")
        self.p = subprocess.Popen([binary, "--scope", "system", "--policy", policy, "run"], stdout=subprocess.DEVNULL, stderr=self.errf, env=env)

    def text(self):
        with open(self.log) as f:
            return f.read()

    def alive(self):
        if self.p.poll() is not None:
            raise RuntimeError(f"the agent exited ({self.p.returncode}): {self.text()[-1500:]}")

    def cpu(self):
        return proc_sample(self.p.pid)["ticks"] / TICK

    def scrape(self):
        return scrape(self.port)

    def wait_first_sweep(self, caches, timeout):
        end = time.time() + timeout
        while time.time() < end:
            self.alive()
            try:
                m = self.scrape()
            except OSError:
                time.sleep(0.2)
                continue
            done = per_cache(m, "gocache_warden_last_successful_sweep_timestamp_seconds")
            if all(done.get(c, 0) > 0 for c in caches):
                return m
            time.sleep(0.2)
        raise RuntimeError(f"no first sweep of every cache within {timeout} s: {self.text()[-1500:]}")

    def wait_idle(self, quiet, timeout):
        """Until its CPU time has not moved for `quiet` seconds (or `timeout`)."""
        end = time.time() + timeout
        last, since = self.cpu(), time.time()
        while time.time() < end:
            time.sleep(0.5)
            self.alive()
            c = self.cpu()
            if c != last:
                last, since = c, time.time()
            elif time.time() - since >= quiet:
                return True
        return False

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(60)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.errf.close()


# ---------------------------------------------------------------- one scenario


def policy_text(caches, port):
    lines = ["[cache.build]", "enabled = false", "[cache.modules]", "enabled = false"]
    for i, (path, limit) in enumerate(caches):
        lines += [f"[cache.c{i:02d}]", f'path = "{path}"', 'kind = "build"', f"max_size = {limit}", 'min_age = "1h"']
    lines += ["[agent]", 'interval = "1h"', "watch = true", "[metrics]", f'listen = "127.0.0.1:{port}"']
    return "\n".join(lines) + "\n"


def scenario(a, trees, label, binary, n, rate_mb):
    work = os.path.join(a.workdir, "run")
    rmtree(work)
    os.makedirs(work)
    w = os.path.join(work, "c00")
    log(f"{label} N={n} {rate_mb:g} MB/s: copying the written cache")
    copy_tree(trees.path(0), w, os.path.join(a.workdir, "view"))
    caches = [(w, math.ceil(trees.size(0) / a.fill_written))]
    caches += [(trees.path(i), math.ceil(trees.size(i) / a.fill)) for i in range(1, n)]
    limit = caches[0][1]
    low = int(limit * 0.9)
    port = free_port()
    pol = os.path.join(work, "policy.toml")
    with open(pol, "w") as f:
        f.write(policy_text(caches, port))
    v = subprocess.run([binary, "--scope", "system", "--policy", pol, "policy", "validate"], capture_output=True, text=True)
    if v.returncode != 0:
        raise RuntimeError(f"policy validate: {v.stdout}{v.stderr}")
    ledger = Ledger(w)
    du0 = ledger.du()
    if du0 != du_bytes(w):
        raise RuntimeError(f"the ledger says {du0}, du -sB1 {du_bytes(w)}")
    t_start = time.time()
    agent = Agent(binary, pol, work, port)
    r = {"label": label, "n": n, "rate": rate_mb, "limit": limit, "du0": du0, "load0": os.getloadavg()[0]}
    try:
        m0 = agent.wait_first_sweep([c for c, _ in caches], 600)
        r["first_sweep_s"] = time.time() - t_start
        agent.wait_idle(1.0, 30)
        m0 = agent.scrape()
        log0 = len(agent.text())
        cpu0 = agent.cpu()
        ledger.drain()
        wr = Writer(w, rate_mb * 1e6, ledger, seed=7)
        t0 = time.time()
        peak = (0, 0.0)  # (overshoot, when) while evictable entries could undo it
        peak_any = 0
        over_time = 0.0
        next_sample = 0.0
        samples = 0
        while True:
            el = time.time() - t0
            if el >= a.seconds:
                break
            due = wr.step(el)
            if el >= next_sample:
                du = ledger.du()
                samples += 1
                over = du - limit
                peak_any = max(peak_any, over)
                if over > 0:
                    over_time += 0.25
                if ledger.old_bytes > over and over > peak[0]:
                    peak = (over, el)
                next_sample += 0.25
            wake = t0 + min(due, next_sample, a.seconds)
            time.sleep(max(0.0, wake - time.time()))
        cpu1 = agent.cpu()
        t1 = time.time()
        agent.alive()
        m1 = agent.scrape()
        # Sweeps the writes asked for may still run (growth sweeps are spaced 10 s apart):
        # count their walks and what they leave, not their CPU.
        tail_end = time.time() + 12
        while time.time() < tail_end:
            du = ledger.du()
            over = du - limit
            if ledger.old_bytes > over and over > peak[0]:
                peak = (over, time.time() - t0)
            peak_any = max(peak_any, over)
            time.sleep(0.25)
        agent.wait_idle(2.0, 90)
        cpu2 = agent.cpu()
        m2 = agent.scrape()
        du_end = ledger.du()
        du_real = du_bytes(w)
        text = agent.text()[log0:]
        hwm = proc_sample(agent.p.pid)["hwm_kib"]
    finally:
        agent.stop()
        ledger.close()
    secs = t1 - t0
    sweeps = delta(m2, m0, "gocache_warden_sweeps_total")
    walk_free = text.count("without walking it")
    unwritten = [c for c, _ in caches[1:]]
    if "gocache_warden_cache_inspected_entries_total" in m2:
        ins = delta(m2, m0, "gocache_warden_cache_inspected_entries_total")
        r["unwritten_stats"] = int(sum(ins.get(c, 0) for c in unwritten))
        r["stats_estimated"] = False
        r["written_stats"] = int(ins.get(w, 0))
    else:
        files = per_cache(m2, "gocache_warden_cache_files")
        dirs = per_cache(m2, "gocache_warden_cache_dirs")
        r["unwritten_stats"] = int(sum(sweeps.get(c, 0) * (files.get(c, 0) + dirs.get(c, 0)) for c in unwritten))
        r["stats_estimated"] = True
    r.update(
        seconds=secs,
        cpu=cpu1 - cpu0,
        cpu_min=(cpu1 - cpu0) / secs * 60,
        cpu_tail=cpu2 - cpu1,
        written_mb=wr.data / 1e6,
        alloc_rate=wr.alloc / secs,
        entries=wr.entries,
        overshoot=peak[0],
        overshoot_at=peak[1],
        overshoot_any=peak_any,
        over_time=over_time,
        low=low,
        old_left=ledger.old_bytes,
        du_end=du_end,
        du_real=du_real,
        overflows=ledger.overflows,
        triggers=sum(text.count(g) for g in GREW),
        # Every sweep after the first is growth's doing (the timer's is an hour away): walks
        # ("last sweep:" status lines) and walk-free evictions (counted as sweeps too).
        growth_sweeps=len(re.findall(r"last (?:growth )?sweep:", text)) + walk_free,
        walk_free=walk_free,
        walks=int(sum(sweeps.values())) - walk_free,
        written_walks=int(sweeps.get(w, 0)) - walk_free,
        hwm_mib=hwm / 1024,
        load1=os.getloadavg()[0],
        samples=samples,
    )
    log(
        f"{label} N={n} {rate_mb:g} MB/s: CPU {r['cpu_min']:.2f} s/min, unwritten stats {r['unwritten_stats']}, "
        f"overshoot {r['overshoot'] / MIB:.1f} MiB ({100 * r['overshoot'] / limit:.2f} %), growth sweeps {r['growth_sweeps']} "
        f"({r['walks']} walks), du end {du_end} (du -sB1 {du_real})"
    )
    with open(os.path.join(a.workdir, "agent-logs.txt"), "a") as f:
        f.write(f"===== {label} N={n} {rate_mb:g} MB/s\n{text}\n")
    rmtree(work)
    return r


# ---------------------------------------------------------------- output


def fmt_row(r):
    lim = r["limit"]
    over = r["overshoot"]
    secs_of_writes = over / r["alloc_rate"] if r["alloc_rate"] else float("nan")
    stats = ("~" if r["stats_estimated"] else "") + f"{r['unwritten_stats']:,}"
    return (
        f"| {r['label']} | {r['n']} | {r['rate']:g} | {r['cpu_min']:.2f} | {stats} | "
        f"{over / MIB:.1f} MiB ({100 * over / lim:.2f} %, {secs_of_writes:.1f} s) | "
        f"{r['growth_sweeps']} ({r['walks']}) | {r['first_sweep_s']:.1f} s | {r['du_end'] / lim * 100:.1f} % | "
        f"{r['load0']:.1f}→{r['load1']:.1f} |"
    )


def ratio_line(rs, what, a, b):
    x = [r["cpu_min"] for r in a]
    y = [r["cpu_min"] for r in b]
    if not x or not y or not y[0]:
        return f"- {what}: n/a"
    return f"- {what}: {x[0]:.2f} / {y[0]:.2f} = **{x[0] / y[0]:.2f}×**"


def report(a, results, started, load0, notes):
    rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    out = [
        "# Steady state: the agent over N per-user caches while one user writes (issue #21)",
        "",
        f"Generated by `bash benches/steady.sh {' '.join(a.argv)}`".rstrip() + f" on {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))} "
        f"({(time.time() - started) / 60:.0f} min): {os.cpu_count()} CPUs, {mem:.0f} GiB, Linux {platform.release()}, "
        f"checkout {rev}; binaries: new = {a.new_label}, old = {a.old_label or '—'}. Load average {load0[0]:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end (a shared 2-core machine; others' builds and tests ran meanwhile).",
        "",
        f"Caches: {a.entries} entries each (2 files per entry), Go's layout; cache 0 (written) "
        f"{results[0]['limit'] / GIB if results else 0:.2f} GiB limit, started at {100 * a.fill_written:g} % of it; "
        f"the others small outputs, each at {100 * a.fill:g} % of its own limit; `min_age = \"1h\"`, low water 90 %, "
        f"`interval = \"1h\"`, `watch = true`. Writes for {a.seconds:g} s; CPU counted over that window.",
        "",
        "| binary | N | MB/s | agent CPU s/min | entries walked in unwritten caches | max overshoot of du over max_size while evictable entries remain (% of limit, s of writes) | growth sweeps (cache walks) | first sweep | du at end (% of limit) | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    out += [fmt_row(r) for r in results]
    out += ["", "Ratios of agent CPU (same rate, same run):", ""]
    for rate in a.rates:
        def pick(label, n):
            return [r for r in results if r["label"] == label and r["n"] == n and r["rate"] == rate]

        out.append(f"{rate:g} MB/s:")
        out.append(ratio_line(results, f"new, N=8 / N=1", pick(a.new_label, 8), pick(a.new_label, 1)))
        if a.old_label:
            out.append(ratio_line(results, f"old, N=8 / N=1", pick(a.old_label, 8), pick(a.old_label, 1)))
            out.append(ratio_line(results, f"new N=1 / old N=1", pick(a.new_label, 1), pick(a.old_label, 1)))
        out.append(ratio_line(results, f"new, N=50 / N=1", pick(a.new_label, 50), pick(a.new_label, 1)))
        if a.old_label:
            out.append(ratio_line(results, f"old, N=50 / N=1", pick(a.old_label, 50), pick(a.old_label, 1)))
        out.append("")
    out += ["## Details", "", "| binary | N | MB/s | written (MB) | entries | alloc MB/s | CPU in window / after (s) | walks of cache 0 | growth log lines | time over limit (s) | largest overshoot at all | old entries left (MiB) | ledger = du -sB1 | agent peak RSS |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        same = "yes" if r["du_end"] == r["du_real"] else f"no ({r['du_end']} vs {r['du_real']})"
        out.append(
            f"| {r['label']} | {r['n']} | {r['rate']:g} | {r['written_mb']:.0f} | {r['entries']} | {r['alloc_rate'] / 1e6:.2f} | "
            f"{r['cpu']:.2f} / {r['cpu_tail']:.2f} | {r['written_walks']} | {r['triggers']} | {r['over_time']:.1f} | {r['overshoot_any'] / MIB:.1f} MiB | "
            f"{r['old_left'] / MIB:.0f} | {same} | {r['hwm_mib']:.1f} MiB |"
        )
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    out += ["", "`~`: estimated as (sweeps of that cache after the first) × (its files + dirs gauges): that binary has no inspected-entries counter.", ""]
    out += ["<details><summary>Raw figures (one JSON object per scenario)</summary>", "", "```json"]
    out += [json.dumps(r, sort_keys=True) for r in results]
    out += ["```", "", "</details>", ""]
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-bin", required=True)
    p.add_argument("--new-label", default="new")
    p.add_argument("--old-bin")
    p.add_argument("--old-label")
    p.add_argument("--ns", default="1,8,50", help="cache counts for the new binary")
    p.add_argument("--old-ns", help="cache counts for the old binary (default: --ns)")
    p.add_argument("--rates", default="1,20", help="MB/s (10^6 bytes of data) the writer adds")
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--entries", type=int, default=20_000)
    p.add_argument("--written-gib", type=float, default=3.0, help="approximate size of the written cache")
    p.add_argument("--fill", type=float, default=0.98, help="unwritten caches' size as a share of their limit")
    p.add_argument("--fill-written", type=float, default=0.99, help="the written cache's size as a share of its limit")
    p.add_argument("--workdir", help="where the caches go (default: a fresh dir under /var/tmp, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep --workdir (its caches are reused next time)")
    p.add_argument("--out", default=os.path.join(HERE, "RESULTS-steady.md"))
    a = p.parse_args()
    a.argv = [x for x in sys.argv[1:] if x not in (a.new_bin, a.old_bin, a.new_label, a.old_label) and x not in ("--new-bin", "--old-bin", "--new-label", "--old-label")]
    if os.geteuid() != 0:
        die("run as root: the agent's system scope, mounts for the copies")
    a.ns = [int(x) for x in a.ns.split(",")]
    a.old_ns = [int(x) for x in (a.old_ns or ",".join(map(str, a.ns))).split(",")]
    a.rates = [float(x) for x in a.rates.split(",")]
    created = not a.workdir
    a.workdir = os.path.abspath(a.workdir or tempfile.mkdtemp(prefix="gwsteady-", dir="/var/tmp"))
    os.makedirs(os.path.join(a.workdir, "view"), exist_ok=True)
    # Mean output size such that `entries` entries (plus a 4 KiB block per action record)
    # come to about --written-gib.
    written_mean = int(a.written_gib * GIB / a.entries - 4096 - 2048)
    trees = Trees(a.workdir, a.entries, written_mean)
    nmax = max(a.ns + (a.old_ns if a.old_bin else []))
    need = a.written_gib * 2.6 * GIB + (nmax - 1) * a.entries * 9 * 1024
    free = os.statvfs(a.workdir).f_bavail * os.statvfs(a.workdir).f_frsize
    if free < need:
        die(f"need ~{need / GIB:.0f} GiB free in {a.workdir}, there are {free / GIB:.0f} GiB")
    started, load0 = time.time(), os.getloadavg()
    notes = []
    results = []
    rc = 0
    try:
        trees.ensure(nmax)
        plan = []
        k = 0
        for n in sorted(set(a.ns) | set(a.old_ns if a.old_bin else [])):
            for rate in a.rates:
                pair = []
                if n in a.ns:
                    pair.append((a.new_label, a.new_bin))
                if a.old_bin and n in a.old_ns:
                    pair.append((a.old_label, a.old_bin))
                if k % 2:
                    pair.reverse()
                k += 1
                plan += [(label, b, n, rate) for label, b in pair]
        log("plan: " + ", ".join(f"{l} N={n} {r:g}MB/s" for l, _, n, r in plan))
        for label, b, n, rate in plan:
            results.append(scenario(a, trees, label, b, n, rate))
    except Exception as e:  # keep what was measured
        import traceback

        traceback.print_exc()
        notes.append(f"the run stopped early: {e}")
        rc = 1
    finally:
        results.sort(key=lambda r: (r["rate"], r["n"], r["label"] != a.old_label))
        md = report(a, results, started, load0, notes)
        with open(a.out, "w") as f:
            f.write(md)
        print(md)
        log(f"wrote {a.out}")
        if not a.keep:
            if created:
                rmtree(a.workdir)
            else:
                for n in ("trees", "view", "run"):
                    rmtree(os.path.join(a.workdir, n))
    return rc


if __name__ == "__main__":
    sys.exit(main())
