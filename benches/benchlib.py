"""Measuring helpers for benches/compare.py: timing under GNU time, syscall counts from
`strace -c`, copying trees without disturbing atimes, following the daemon's log, sampling
/proc, and inotify through libc. No benchmark logic lives here; see compare.py for that."""
import ctypes
import datetime as dt
import os
import re
import select
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

TIME = "/usr/bin/time"
MIB = 1 << 20
STAT_FAMILY = ("statx", "newfstatat", "fstatat64", "fstat", "lstat", "stat", "stat64", "fstat64", "lstat64")
ACL_READS = ("getxattr", "lgetxattr", "fgetxattr", "getxattrat")
ACL_WRITES = ("setxattr", "lsetxattr", "fsetxattr", "setxattrat")
UNLINKS = ("unlink", "unlinkat", "rmdir")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def die(msg):
    print(f"compare: {msg}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- measuring one command


class Run:
    """One timed command: wall seconds, CPU (user+sys) seconds, peak RSS KiB, stdout."""

    def __init__(self, wall, cpu, rss_kib, vcsw, out):
        self.wall, self.cpu, self.rss_kib, self.vcsw, self.out = wall, cpu, rss_kib, vcsw, out


def timed(cmd, ok=(0,), capture=False, env=None, timeout=1800):
    """Runs cmd under GNU time -v; wall time from here (fork of time included, ~1 ms)."""
    with tempfile.NamedTemporaryFile("r", prefix="gwb-time-", suffix=".txt") as tf:
        full = [TIME, "-v", "-o", tf.name, "--"] + cmd
        t0 = time.perf_counter()
        p = subprocess.run(
            full,
            stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            timeout=timeout,
        )
        wall = time.perf_counter() - t0
        txt = tf.read()
    if p.returncode not in ok:
        tail = p.stderr.decode(errors="replace")[-800:]
        raise RuntimeError(f"{shlex.join(cmd)} exited {p.returncode}: {tail}")

    def field(name):
        m = re.search(re.escape(name) + r":\s*([0-9.]+)", txt)
        return float(m.group(1)) if m else 0.0

    cpu = field("User time (seconds)") + field("System time (seconds)")
    return Run(
        wall,
        cpu,
        int(field("Maximum resident set size (kbytes)")),
        int(field("Voluntary context switches")),
        p.stdout.decode(errors="replace") if capture else "",
    )


# strace 6.1 (Debian 12) names syscalls newer than itself `syscall_0x…` in a trace and leaves
# them out of `-c`'s summary altogether, so counts come from the whole trace instead.
NEWER_SYSCALLS = {"syscall_0x1d0": "getxattrat", "syscall_0x1cf": "setxattrat", "syscall_0x1c4": "fchmodat2"}
TRACE_LINE = re.compile(r"^(?:\[pid\s+)?\d*\]?\s*([a-z0-9_]+)\(")


def strace_counts(cmd, ok=(0,), env=None):
    """Syscall name -> calls, all threads and children (`strace -f`, every call counted from
    the trace; an interrupted call's `<... resumed>` line is not counted again)."""
    with tempfile.NamedTemporaryFile("r", prefix="gwb-strace-", suffix=".txt") as tf:
        p = subprocess.run(
            ["strace", "-f", "-qq", "-o", tf.name, "--"] + cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            timeout=1800,
        )
        counts = {}
        for line in tf:
            m = TRACE_LINE.match(line)
            if m:
                n = NEWER_SYSCALLS.get(m.group(1), m.group(1))
                counts[n] = counts.get(n, 0) + 1
    if p.returncode not in ok:
        raise RuntimeError(f"strace {shlex.join(cmd)} exited {p.returncode}: {p.stderr.decode()[-500:]}")
    return counts


def csum(counts, names):
    return sum(counts.get(n, 0) for n in names)


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def can_drop_caches():
    try:
        drop_caches()
        return True
    except OSError:
        return False


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_s(x):
    if x != x:
        return "n/a"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s"


def fmt_mib(kib):
    return f"{kib / 1024:.1f} MiB"


def ratio(other, ours):
    # 0 is what GNU time reports below its 10 ms resolution: no ratio from that.
    if not ours or not other or ours != ours or other != other:
        return "—"
    return f"{other / ours:.2f}×"


# ---------------------------------------------------------------- trees and policies


def du_bytes(root):
    out = subprocess.run(["du", "-sB1", root], check=True, capture_output=True, text=True).stdout
    return int(out.split()[0])


def count_files(root):
    n = 0
    for _dp, _dn, fn in os.walk(root):
        n += len(fn)
    return n


def count_inodes(root):
    """Files and directories, the root included (what a walk visits)."""
    n = 1
    for _dp, dn, fn in os.walk(root):
        n += len(dn) + len(fn)
    return n


def copy_tree(src, dst, view):
    """`cp -a` that leaves the source's atimes alone. Reading a file whose atime is not newer
    than its mtime moves the atime under relatime, and last use is max(atime, mtime): a plain
    `cp -a` would make every later copy look freshly used. So cp reads through a read-only
    noatime bind mount of the source, in a private mount namespace that dies with it."""
    rmtree(dst)
    script = 'mount --bind "$1" "$2" && mount -o remount,bind,ro,noatime "$2" && exec cp -a "$2" "$3"'
    subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", src, view, dst], check=True)
    # Write back the copy now, so its writeback does not land in a measured run.
    subprocess.run(["sync"], check=True)


def rmtree(p):
    if os.path.lexists(p):
        subprocess.run(["rm", "-rf", "--one-file-system", p], check=True)


def policy_text(path, **kw):
    lines = [
        "[cache.build]",
        "enabled = false",
        "[cache.modules]",
        "enabled = false",
        "[cache.t]",
        f'path = "{path}"',
        'kind = "build"',
    ]
    for k in ("max_size", "low_water", "max_age", "min_age", "group", "group_access", "other"):
        if k in kw:
            v = kw[k]
            lines.append(f"{k} = {v}" if isinstance(v, int) else f'{k} = "{v}"')
    if "size_percent" in kw:
        lines += ["[cache.t.alerts]", f'size_percent = "{kw["size_percent"]}"']
    lines += ["[agent]", 'interval = "1h"']
    return "\n".join(lines) + "\n"


class LogTail:
    """Follows the daemon's stderr file."""

    def __init__(self, path):
        self.path, self.pos, self.buf, self.pending = path, 0, "", []

    def _read(self):
        with open(self.path) as f:
            f.seek(self.pos)
            data = f.read()
            self.pos = f.tell()
        self.buf += data
        *lines, self.buf = self.buf.split("\n")
        self.pending += lines
        return lines

    def text(self):
        with open(self.path) as f:
            return f.read()

    def new_lines(self):
        self._read()
        out, self.pending = self.pending, []
        return out

    def seen(self, s):
        self._read()
        return any(s in l for l in self.pending)

    def consume(self):
        self._read()
        self.pending = []

    def wait_for(self, pred, timeout):
        end = time.time() + timeout
        while time.time() < end:
            self._read()
            for i, l in enumerate(self.pending):
                if pred(l):
                    self.pending = self.pending[i + 1 :]
                    return True
            time.sleep(0.05)
        return False


def log_time(line):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)(Z|[+-]\d\d:\d\d)", line)
    if not m:
        return None
    s = m.group(1)
    if "." in s:  # fromisoformat wants at most 6 fraction digits
        a, b = s.split(".")
        s = a + "." + b[:6].ljust(6, "0")
    tz = "+00:00" if m.group(2) == "Z" else m.group(2)
    return dt.datetime.fromisoformat(s + tz).timestamp()


def write_entry(root, size):
    name = os.urandom(32).hex() + "-d"
    path = os.path.join(root, name[:2], name)
    chunk = b"\xa5" * MIB
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, len(chunk))
            f.write(chunk[:n])
            left -= n


def proc_sample(pid):
    with open(f"/proc/{pid}/stat") as f:
        st = f.read()
    fields = st[st.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status").read().splitlines() if ":" in l)
    vcsw = ivcsw = 0
    tasks = os.listdir(f"/proc/{pid}/task")
    for t in tasks:
        try:
            ts = open(f"/proc/{pid}/task/{t}/status").read()
        except OSError:
            continue
        vcsw += int(re.search(r"^voluntary_ctxt_switches:\s*(\d+)", ts, re.M).group(1))
        ivcsw += int(re.search(r"^nonvoluntary_ctxt_switches:\s*(\d+)", ts, re.M).group(1))
    return {
        "ticks": ticks,
        "rss_kib": int(status["VmRSS"].split()[0]),
        "hwm_kib": int(status["VmHWM"].split()[0]),
        "threads": len(tasks),
        "vcsw": vcsw,
        "ivcsw": ivcsw,
    }


class Inotify:
    """IN_DELETE on a set of directories, through libc (no third-party module)."""

    IN_DELETE = 0x200

    def __init__(self):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def watch(self, path):
        if self.libc.inotify_add_watch(self.fd, path.encode(), self.IN_DELETE) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")

    def drain(self):
        while True:
            try:
                if not os.read(self.fd, 1 << 16):
                    return
            except BlockingIOError:
                return

    def wait(self, timeout):
        r, _, _ = select.select([self.fd], [], [], timeout)
        if r:
            self.drain()
            return True
        return False

    def close(self):
        os.close(self.fd)
