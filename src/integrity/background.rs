//! The agent's background verification: the checks of `check --verify`, run a slice at a
//! time within a byte budget, resuming where the last slice stopped.
//!
//! A slice hashes at most `rate × SLICE` bytes (give or take the file it is in), paced so
//! that at no point since its start has it read more than `rate` bytes per second plus
//! [`AHEAD`]'s worth and one read (at most [`CHUNK`]): a pass over a
//! big shared cache costs builds a small, fixed share of the disk instead of a burst. Entries
//! are taken in order (shard `00`..`ff`, names sorted within a shard), so the [`Cursor`]
//! — a shard and the last entry handled — is all it takes to resume. One thread, on the
//! caller's (the daemon's blocking pool): the budget, not parallelism, decides the speed.
//! Every read ticks [`crate::progress`] (the watchdog sees a slice move) and checks
//! [`crate::scan::walk::stop_requested`] (SIGTERM ends a slice within one chunk).

use super::{Act, Shared, Verified, open_quarantine, shard};
use crate::cacheprog::store::Trust;
use crate::safefs::Dir;
use std::ffi::{CStr, CString};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How much budget one slice gets: this many seconds at the rate.
pub const SLICE: Duration = Duration::from_secs(5);
/// The largest single read, so pacing and stop checks happen at least this often.
pub const CHUNK: usize = 256 * 1024;
/// How far ahead of the rate reads may run before the pacer sleeps: one sleep per this much
/// time at most, not one per read (a pass over a million small outputs reads two million
/// times).
pub const AHEAD: Duration = Duration::from_millis(20);
/// Go's 256 shards, `00`..`ff`.
const SHARDS: u16 = 256;

/// Where a pass stands in one cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// The shard being verified (0..=255; 256: the pass is complete).
    pub shard: u16,
    /// The last entry handled in that shard (`None`: start of the shard).
    pub after: Option<CString>,
}

impl Cursor {
    pub fn done(&self) -> bool {
        self.shard >= SHARDS
    }
}

/// A byte budget and a rate: reads wait until they are due.
pub struct Pacer {
    rate: u64,
    max: u64,
    start: Instant,
    bytes: AtomicU64,
}

impl Pacer {
    /// `rate` bytes per second, `max` bytes in all (0: no rate limit, for tests of logic).
    pub fn new(rate: u64, max: u64) -> Pacer {
        Pacer {
            rate,
            max,
            start: Instant::now(),
            bytes: AtomicU64::new(0),
        }
    }

    /// The budget is used up (checked between entries: a file is never left half-hashed
    /// for budget) or the agent is stopping.
    pub fn spent(&self) -> bool {
        self.bytes.load(Ordering::Relaxed) >= self.max || self.stopped()
    }

    pub fn stopped(&self) -> bool {
        crate::scan::walk::stop_requested()
    }

    /// Counts `n` bytes read and, once they are more than [`AHEAD`] ahead of the rate,
    /// sleeps until they are due, waking every 100 ms to see whether the agent is stopping.
    fn account(&self, n: u64) {
        crate::progress::tick();
        let total = self.bytes.fetch_add(n, Ordering::Relaxed) + n;
        if self.rate == 0 {
            return;
        }
        let due = Duration::from_secs_f64(total as f64 / self.rate as f64);
        if due.saturating_sub(self.start.elapsed()) < AHEAD {
            return;
        }
        loop {
            let now = self.start.elapsed();
            if now >= due || self.stopped() {
                return;
            }
            std::thread::sleep((due - now).min(Duration::from_millis(100)));
            // Waiting for the budget is progress too: at a low rate one read can be due
            // minutes later, longer than the watchdog's stall limit.
            crate::progress::tick();
        }
    }

    /// A reader that goes at this pace.
    pub fn reader<'a, R: Read>(&'a self, inner: &'a mut R) -> Paced<'a, R> {
        Paced { inner, pacer: self }
    }
}

pub struct Paced<'a, R> {
    inner: &'a mut R,
    pacer: &'a Pacer,
}

impl<R: Read> Read for Paced<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pacer.stopped() {
            // Not `Interrupted`: `io::copy` would retry it.
            return Err(std::io::Error::other("stopping"));
        }
        let len = buf.len().min(CHUNK);
        let n = self.inner.read(&mut buf[..len])?;
        self.pacer.account(n as u64);
        Ok(n)
    }
}

/// What one slice did.
#[derive(Debug, Default, Clone)]
pub struct Slice {
    pub verified: Verified,
    /// The pass reached the last shard in this slice.
    pub pass_done: bool,
}

/// Verifies `root` from `cursor` on, within `pacer`'s budget, acting on problems as `act`
/// says; advances the cursor. A shard that cannot be read is counted as failed and skipped.
pub fn slice(
    root: &Path,
    trust: Option<&Trust>,
    act: Act,
    keep: super::Keep,
    cursor: &mut Cursor,
    pacer: &Pacer,
) -> anyhow::Result<Slice> {
    use anyhow::Context;
    let t0 = Instant::now();
    let dir = Dir::open_root(root).with_context(|| format!("cannot open {root:?}"))?;
    let quarantine = open_quarantine(&dir, root, act, keep)?;
    let s = Shared::new(&dir, quarantine, act, Some(pacer));
    while !cursor.done() {
        let name = CString::new(format!("{:02x}", cursor.shard))?;
        match shard(&s, &name, trust, cursor.after.as_deref()) {
            Ok(Some(at)) => {
                cursor.after = at;
                break;
            }
            Ok(None) => {}
            Err(e) => {
                s.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    gocache_warden_action = crate::logging::action::INTEGRITY_FAILED,
                    error = %e,
                    "cannot verify shard {}: {e}",
                    root.join(name_str(&name)).display()
                );
            }
        }
        cursor.shard += 1;
        cursor.after = None;
    }
    super::incomplete::resolve(&s, trust);
    Ok(Slice {
        pass_done: cursor.done(),
        verified: s.into_verified(t0),
    })
}

fn name_str(n: &CStr) -> String {
    n.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// These passes only report: no quarantine is opened.
    const NO_QUARANTINE: crate::integrity::Keep = crate::integrity::Keep {
        retention: Duration::ZERO,
        max_bytes: 0,
    };
    use crate::cacheprog::store::hash_reader;

    /// A cache of `n` outputs of `size` bytes each, named by their SHA-256 as go names them.
    fn cache(n: usize, size: usize) -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
        let d = tempfile::tempdir().expect("tempdir");
        let mut outs = Vec::new();
        for i in 0..n {
            let body: Vec<u8> = (0..size).map(|j| (i * 31 + j) as u8).collect();
            let (h, _) = hash_reader(&mut body.as_slice()).expect("hash");
            let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
            let shard = d.path().join(&hex[..2]);
            std::fs::create_dir_all(&shard).expect("shard");
            let p = shard.join(format!("{hex}-d"));
            std::fs::write(&p, &body).expect("output");
            outs.push(p);
        }
        (d, outs)
    }

    #[test]
    fn slices_resume_where_they_stopped_and_cover_every_output_once() {
        let (d, outs) = cache(40, 10_000);
        // Same size, other bytes, named by an action record with that size: tampered.
        let mut b = std::fs::read(&outs[7]).expect("read");
        b[5] ^= 0xff;
        std::fs::write(&outs[7], &b).expect("tamper");
        let name = outs[7]
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let action = "ab".repeat(32);
        std::fs::create_dir_all(d.path().join("ab")).expect("shard");
        std::fs::write(
            d.path().join("ab").join(format!("{action}-a")),
            format!("v1 {action} {} {:20} {:20}\n", &name[..64], b.len(), 0),
        )
        .expect("record");
        let mut cur = Cursor::default();
        let (mut outputs, mut tampered, mut slices) = (0, 0, 0);
        while !cur.done() {
            // A budget of about three outputs per slice.
            let p = Pacer::new(0, 25_000);
            let s = slice(d.path(), None, Act::Report, NO_QUARANTINE, &mut cur, &p).expect("slice");
            outputs += s.verified.outputs;
            tampered += s.verified.tampered;
            slices += 1;
            assert!(slices < 100, "the pass ends");
        }
        assert_eq!(outputs, 40, "every output once");
        assert_eq!(tampered, 1);
        assert!(slices >= 10, "the budget split the pass: {slices} slices");
    }

    #[test]
    fn a_slice_reads_no_faster_than_its_rate() {
        let (d, _) = cache(8, 100_000);
        let rate = 1_000_000;
        let p = Pacer::new(rate, u64::MAX);
        let t0 = Instant::now();
        let s = slice(
            d.path(),
            None,
            Act::Report,
            NO_QUARANTINE,
            &mut Cursor::default(),
            &p,
        )
        .expect("slice");
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(s.verified.bytes_hashed, 800_000);
        // At most AHEAD early: 800 kB at 1 MB/s take at least 0.78 s.
        let least = s.verified.bytes_hashed as f64 / rate as f64 - AHEAD.as_secs_f64();
        assert!(
            secs >= least,
            "{} bytes in {secs:.3} s, budget {rate} B/s",
            s.verified.bytes_hashed
        );
        assert!(s.pass_done);
    }
}
