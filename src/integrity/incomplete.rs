//! Go's own leftovers told apart from tampering. An output whose SHA-256 is not its name is
//! dangerous only if `go` would use it: cmd/go compares an output's size with the one its
//! action record gives before using it (`GetFile`), and misses on a zero-length output
//! (what it truncates a failed write to) or one cut short (a killed build). So a wrong hash
//! is [`Problem::Tampered`] only at a size some record naming it gives, and
//! [`Problem::Incomplete`] otherwise; and since cmd/go writes outputs in place (all but the
//! last byte, then the last one), one changed in the last [`SETTLE`] is judged again once
//! it has been still that long. The pass collects its wrong-hash outputs ([`Suspect`]) and
//! tells them apart at its end, reading every action record once, only when there are any.

use super::{Judged, Problem, Shared, decode, judge, note, writers};
use crate::cacheprog::store::{Hash, Trust};
use crate::safefs::{Dir, Kind, Stat, name_os};
use crate::scan::layout;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

/// At most this many wrong-hash outputs are told apart per pass (48 bytes and a name each);
/// a cache with more (a flood of junk) has the rest looked at by the next pass.
pub const MAX_SUSPECTS: usize = 4096;

/// How long after its last change an output may still be being written: cmd/go writes an
/// output in place (all but the last byte, then the last one), so a verifier can meet one
/// mid-write; it is looked at again once it has been still this long.
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// An output whose hash did not match its name (see [`Judged::Mismatch`]).
pub(super) struct Suspect {
    pub(super) shard: CString,
    pub(super) entry: CString,
    pub(super) est: Stat,
    pub(super) size: u64,
    pub(super) changed: i64,
}

impl Shared<'_> {
    pub(super) fn suspect(&self, x: Suspect) {
        let mut v = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() < MAX_SUSPECTS {
            v.push(x);
        }
    }
}

/// Tells the pass's wrong-hash outputs apart. One changed within [`SETTLE`] gets that long
/// to be finished by its writer and is judged again. Then a zero-length one is incomplete
/// (what cmd/go truncates a failed write to); for the others, every action record of the
/// cache is read once (175 bytes each) for the sizes it gives their ids: an output with a
/// size some record gives it is one `go` would use, so it is tampered; any other is one `go`
/// misses on, incomplete.
pub(super) fn resolve(s: &Shared<'_>, trust: Option<&Trust>) {
    let mut suspects = std::mem::take(&mut *s.suspects.lock().unwrap_or_else(|e| e.into_inner()));
    if suspects.is_empty() {
        return;
    }
    let latest = suspects.iter().map(|x| x.changed).max().unwrap_or(0);
    let settle = SETTLE.as_secs() as i64;
    if crate::check::now() - latest < settle {
        let until = std::time::Instant::now() + SETTLE;
        while std::time::Instant::now() < until && !crate::scan::walk::stop_requested() {
            crate::progress::tick();
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let now = crate::check::now();
        suspects.retain_mut(|x| {
            if now - x.changed >= 2 * settle {
                return true;
            }
            // Judged again as it is now: finished (fine), or still a mismatch.
            let Ok(d) = s
                .root
                .stat(&x.shard)
                .and_then(|st| s.root.open_dir(&x.shard, &st))
            else {
                return false;
            };
            let Ok(est) = d.stat(&x.entry) else {
                return false;
            };
            let rel = PathBuf::from(name_os(&x.shard)).join(name_os(&x.entry));
            // A second look at an output already counted as hashed.
            let counted = (
                s.outputs.load(Ordering::Relaxed),
                s.bytes.load(Ordering::Relaxed),
            );
            let judged = judge(s, &d, &x.entry, &est, b'd', trust);
            s.outputs.store(counted.0, Ordering::Relaxed);
            s.bytes.store(counted.1, Ordering::Relaxed);
            match judged {
                Judged::Fine => false,
                Judged::Problem(p) => {
                    note(s, p, rel, &d, &x.entry, &est, &x.shard);
                    false
                }
                Judged::Writable(st) => {
                    let who = writers(&d, &x.entry, &st);
                    let rel = PathBuf::from(format!("{} (writable by {who})", rel.display()));
                    note(s, Problem::Untrusted, rel, &d, &x.entry, &est, &x.shard);
                    false
                }
                // Still moving since the first look: the next pass looks again.
                Judged::Mismatch { size, changed } if size != x.size || changed != x.changed => {
                    false
                }
                Judged::Mismatch { .. } => {
                    x.est = est;
                    true
                }
            }
        });
    }
    let wanted: std::collections::HashSet<Hash> = suspects
        .iter()
        .filter(|x| x.size > 0)
        .filter_map(|x| decode(x.entry.to_bytes()))
        .collect();
    let sizes = recorded_sizes(s.root, &wanted);
    for x in suspects {
        let recorded = decode(x.entry.to_bytes())
            .and_then(|id| sizes.get(&id))
            .is_some_and(|v| v.contains(&x.size));
        let p = if x.size > 0 && recorded {
            Problem::Tampered
        } else {
            Problem::Incomplete
        };
        let Ok(d) = s
            .root
            .stat(&x.shard)
            .and_then(|st| s.root.open_dir(&x.shard, &st))
        else {
            continue;
        };
        let rel = PathBuf::from(name_os(&x.shard)).join(name_os(&x.entry));
        note(s, p, rel, &d, &x.entry, &x.est, &x.shard);
    }
}

/// The sizes the cache's action records give each output id in `wanted`: one bounded read
/// of every record (a regular file with one name, beneath its shard, at most 512 bytes).
fn recorded_sizes(
    root: &Dir,
    wanted: &std::collections::HashSet<Hash>,
) -> std::collections::HashMap<Hash, Vec<u64>> {
    let mut out: std::collections::HashMap<Hash, Vec<u64>> = Default::default();
    if wanted.is_empty() {
        return out;
    }
    for i in 0..=255u8 {
        let Ok(name) = CString::new(format!("{i:02x}")) else {
            continue;
        };
        let Ok(d) = root.stat(&name).and_then(|st| {
            if st.kind() != Kind::Dir || st.mount_root {
                return Err(std::io::Error::other("not a shard"));
            }
            root.open_dir(&name, &st)
        }) else {
            continue;
        };
        let _ = d.for_each_name(|n| {
            crate::progress::tick();
            if layout::entry_suffix(n.to_bytes()) != Some(b'a') {
                return;
            }
            let Ok(st) = d.stat(n) else { return };
            if st.kind() != Kind::File || st.nlink != 1 {
                return;
            }
            let Some((hex, size)) = d
                .open_read(n, &st)
                .ok()
                .and_then(|f| crate::safefs::read_up_to(f, 512, st.size).ok())
                .and_then(|r| layout::action_output_size(&r))
            else {
                return;
            };
            if let Some(id) = decode(&hex)
                && wanted.contains(&id)
            {
                out.entry(id).or_default().push(size);
            }
        });
    }
    out
}
